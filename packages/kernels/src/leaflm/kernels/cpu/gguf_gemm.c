/*
 * Linear layers on GGUF block-quantized weights (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K), out = x W^T,
 * without dequantizing the weight: what batch-1 decode streams is the file's own 4.5-8.5
 * bits per weight instead of 32.
 *
 * As llama.cpp does, the activations are quantized per call to blocks of 32 int8 values with
 * one fp32 scale (d = amax / 127, q = rint(x * 127 / amax)) and the products are integer
 * dot products (AVX-512 VNNI `vpdpbusd`: unsigned weight bytes times signed activations;
 * without VNNI, AVX2 byte multiply-adds in gguf_gemm_avx2.h, else a portable loop), scaled
 * per block in fp32. With S = sum q_x over a block (S16 over 16 inputs):
 *   Q4_0: d_w d_x (dot - 8 S)                  Q4_1: d_w d_x dot + m_w d_x S
 *   Q8_0: d_w d_x dot                          (q_w signed: x goes in as x + 128, unsigned,
 *                                               and 128 sum q_w is taken off again)
 *   Q4_K: (d sc_j) d_x dot - (dmin m_j) d_x S  (sub-block j of 32: Q4_1 with integer scales)
 *   Q6_K: (d sc_j) d_x (dot_j - 32 S16_j)      (two sub-blocks of 16 per block of 32)
 * The K-quants use the same 32-input activation blocks as the others (llama.cpp quantizes
 * them per 256 inputs; smaller blocks are only more accurate).
 *
 * Layout (see leaflm.kernels.cpu.gguf_blocks.pack): rows are taken 16 at a time (a panel);
 * for each block of 32 inputs a panel holds its 16 rows' quant bytes interleaved four bytes
 * at a time (a 64-byte vector = 4 bytes of each of the 16 rows, so one int32 lane per output
 * row), then the rows' scales. The K-quants' super-blocks of 256 lead with their 16 fp16
 * scales (and mins), then eight such blocks with one-byte integer sub-block scales. A panel
 * is one contiguous stream, read once per call whatever the batch, and the accumulators
 * need no horizontal sums.
 *
 * Threads take (row block, panel) items dynamically as gemm.c does; the activations are
 * quantized inside the same parallel region.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "vec_math.h" /* half_to_float */

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define GGUF_VNNI 1
#else
#define GGUF_VNNI 0
#endif
/* Without VNNI: AVX2 byte multiply-adds (gguf_gemm_avx2.h), else the portable loop. */
#if !GGUF_VNNI && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define GGUF_AVX2 1
#else
#define GGUF_AVX2 0
#endif

#define QK 32   /* inputs per block */
#define PR 16   /* rows per panel */
#define MR 8    /* activation rows per tile */
#define MC 128  /* activation rows per work item */
/* Below this many multiply-adds a call runs on the calling thread: a decode step's GEMVs
 * (SmolLM's biggest per-layer one, gate/up, is 1.8M) run between single-threaded layer ops,
 * so the other OpenMP thread has gone to sleep and waking it cost more than it saved
 * (576x576 Q4_1 at batch 1 in a decode step: ~93 us a call on two threads, ~20 us on one, on
 * the shared 2-core dev machine). The LM head (28M) and batches of 4+ rows still split. */
#define PARALLEL_MIN_MACS (4 << 20)

enum { Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q4_K = 12, Q6_K = 14 }; /* ggml's type numbers */

/* Panel bytes of one block of 32 inputs (simple types), or of one super-block of 256. */
static int64_t unit_bytes(int type) {
    switch (type) {
    case Q4_0: return PR * 18;
    case Q4_1: return PR * 20;
    case Q8_0: return PR * 34;
    case Q4_K: return 64 + 8 * (256 + 32);
    case Q6_K: return 32 + 8 * (256 + 128 + 32);
    default: return 0;
    }
}

static int is_k(int type) { return type == Q4_K || type == Q6_K; }

/* Panel bytes per 32 inputs' worth of a row panel (a super-block's bytes / 8 for K-quants). */
int64_t leaflm_gguf_block_stride(int type) { return is_k(type) ? 0 : unit_bytes(type); }

int64_t leaflm_gguf_unit_bytes(int type) { return unit_bytes(type); }

int leaflm_gguf_vnni(void) { return GGUF_VNNI; }

/* The instruction set the tiles were built for. */
const char *leaflm_gguf_simd(void) {
    return GGUF_VNNI ? "AVX-512 VNNI" : GGUF_AVX2 ? "AVX2" : "portable C";
}

/* Where block b's quants start, and its super-block's fp16 scales (simple types: after the
 * quants). */
static inline const uint8_t *block_at(int type, const uint8_t *panel, int64_t b,
                                      const uint8_t **heads) {
    if (type == Q4_K || type == Q6_K) {
        const uint8_t *sb = panel + (b / 8) * unit_bytes(type);
        *heads = sb;
        return sb + (type == Q4_K ? 64 + (b % 8) * 288 : 32 + (b % 8) * 416);
    }
    const uint8_t *blk = panel + b * unit_bytes(type);
    *heads = blk + PR * (type == Q8_0 ? 32 : 16);
    return blk;
}

/* Quant i (0..31) of block `blk` for output row `lane` of its panel, as stored (unsigned for
 * the 4- and 6-bit types). */
static int32_t weight_value(int type, const uint8_t *blk, int lane, int i) {
    const int g = (i % 16) / 4, t = i % 4, hi = i >= 16;
    if (type == Q8_0) return (int8_t)blk[(i / 4) * 64 + lane * 4 + t];
    const uint8_t byte = blk[g * 64 + lane * 4 + t];
    int32_t q = hi ? byte >> 4 : byte & 0x0f;
    if (type == Q6_K) {
        const uint8_t h = blk[256 + (g / 2) * 64 + lane * 4 + t];
        q |= ((h >> (2 * (hi + 2 * (g % 2)))) & 3) << 4;
    }
    return q;
}

static float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return half_to_float(h);
}

/* One row of x into int8 blocks: q (K bytes), d (K/32 scales), s (K/16 sums of q). The
 * vector path computes exactly what the scalar loop does (the same products, rounded to
 * nearest even by the default MXCSR mode as nearbyintf does). */
static void quantize_row(const float *x, int64_t K, int8_t *q, float *d, int32_t *s) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < K / QK; ++b) {
        const __m512 lo = _mm512_loadu_ps(x + b * QK), hi = _mm512_loadu_ps(x + b * QK + 16);
        const float amax = _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_andnot_ps(sign, lo), _mm512_andnot_ps(sign, hi)));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        const __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, _mm512_set1_ps(id)));
        const __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, _mm512_set1_ps(id)));
        _mm_storeu_si128((__m128i *)(q + b * QK), _mm512_cvtsepi32_epi8(qlo));
        _mm_storeu_si128((__m128i *)(q + b * QK + 16), _mm512_cvtsepi32_epi8(qhi));
        s[2 * b] = _mm512_reduce_add_epi32(qlo);
        s[2 * b + 1] = _mm512_reduce_add_epi32(qhi);
    }
    return;
#elif defined(__AVX2__)
    const __m256 sign = _mm256_set1_ps(-0.0f);
    /* packs_epi32 / packs_epi16 interleave their inputs per 128-bit half: dwords back */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < K / QK; ++b) {
        __m256 v[4];
        for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + b * QK + 8 * i);
        const __m256 m8 = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        __m256i qi[4];
        for (int i = 0; i < 4; ++i)
            qi[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]),
                                                 _mm256_packs_epi32(qi[2], qi[3]));
        _mm256_storeu_si256((__m256i *)(q + b * QK), _mm256_permutevar8x32_epi32(bytes, order));
        for (int half = 0; half < 2; ++half) {
            const __m256i t = _mm256_add_epi32(qi[2 * half], qi[2 * half + 1]);
            __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            u = _mm_add_epi32(u, _mm_shuffle_epi32(u, _MM_SHUFFLE(1, 0, 3, 2)));
            u = _mm_add_epi32(u, _mm_shuffle_epi32(u, _MM_SHUFFLE(2, 3, 0, 1)));
            s[2 * b + half] = _mm_cvtsi128_si32(u);
        }
    }
    return;
#endif
    for (int64_t b = 0; b < K / QK; ++b) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int i = 0; i < QK; ++i) amax = fmaxf(amax, fabsf(xb[i]));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        int32_t sum[2] = {0, 0};
        for (int i = 0; i < QK; ++i) {
            const int v = (int)nearbyintf(xb[i] * id);
            q[b * QK + i] = (int8_t)v;
            sum[i / 16] += v;
        }
        s[2 * b] = sum[0];
        s[2 * b + 1] = sum[1];
    }
}

#if GGUF_VNNI
static inline __m512 half16(const uint8_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 u8x16(const uint8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static inline __m512 i8x16(const uint8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* Four activation bytes broadcast to every lane, straight from memory (vpbroadcastd m32;
 * through a general register it costs a shuffle-port uop per dot product). */
static inline __m512i bcast4(const int8_t *p) {
    return _mm512_broadcastd_epi32(_mm_loadu_si32(p));
}

/* out[mr x cols] for one panel; `mr` and `type` are constants after inlining. */
static inline __attribute__((always_inline)) void tile(
    const int mr, const int type, const uint8_t *restrict panel, int64_t nb,
    const int8_t *restrict xq, int64_t K, const float *restrict xd, const int32_t *restrict xs,
    float *restrict out, int64_t ldo, int cols
) {
    __m512 acc[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
    const __m512i nibble = _mm512_set1_epi8(0x0f), bias = _mm512_set1_epi8((char)0x80);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *heads;
        const uint8_t *blk = block_at(type, panel, b, &heads);
        __m512 dwa, dwb = _mm512_setzero_ps(), mw = _mm512_setzero_ps();
        __m512i w[8], wsum = _mm512_setzero_si512();
        if (type == Q8_0) {
            dwa = half16(heads);
#pragma GCC unroll 8
            for (int g = 0; g < 8; ++g) {
                w[g] = _mm512_loadu_si512(blk + g * 64);
                wsum = _mm512_dpbusd_epi32(wsum, bias, w[g]); /* 128 sum q_w */
            }
        } else {
#pragma GCC unroll 4
            for (int g = 0; g < 4; ++g) {
                const __m512i v = _mm512_loadu_si512(blk + g * 64);
                w[g] = _mm512_and_si512(v, nibble);                         /* inputs 4g.. */
                w[4 + g] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble); /* 16 + 4g.. */
            }
            if (type == Q6_K) { /* the 2-bit planes: bits 4-5 of each 6-bit value */
#pragma GCC unroll 2
                for (int j = 0; j < 2; ++j) {
                    const __m512i h = _mm512_loadu_si512(blk + 256 + j * 64);
                    const __m512i m03 = _mm512_set1_epi8(0x03), m0c = _mm512_set1_epi8(0x0c);
                    const __m512i m30 = _mm512_set1_epi8(0x30), mc0 = _mm512_set1_epi8((char)0xc0);
                    w[2 * j] = _mm512_or_si512(
                        w[2 * j], _mm512_slli_epi16(_mm512_and_si512(h, m03), 4));
                    w[4 + 2 * j] = _mm512_or_si512(
                        w[4 + 2 * j], _mm512_slli_epi16(_mm512_and_si512(h, m0c), 2));
                    w[2 * j + 1] = _mm512_or_si512(w[2 * j + 1], _mm512_and_si512(h, m30));
                    w[4 + 2 * j + 1] = _mm512_or_si512(
                        w[4 + 2 * j + 1], _mm512_srli_epi16(_mm512_and_si512(h, mc0), 2));
                }
                const __m512 d = half16(heads);
                dwa = _mm512_mul_ps(d, i8x16(blk + 384));
                dwb = _mm512_mul_ps(d, i8x16(blk + 400));
            } else if (type == Q4_K) {
                dwa = _mm512_mul_ps(half16(heads), u8x16(blk + 256));
                mw = _mm512_sub_ps(mw, _mm512_mul_ps(half16(heads + 32), u8x16(blk + 272)));
            } else {
                dwa = half16(heads);
                if (type == Q4_1) mw = half16(heads + 32);
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            if (r >= mr) continue;
            const int8_t *xb = xq + r * K + b * QK;
            const int32_t *s = xs + (r * nb + b) * 2;
            const float dx = xd[r * nb + b];
            __m512i dot = _mm512_setzero_si512(), dot_b = _mm512_setzero_si512();
            if (type == Q8_0) {
#pragma GCC unroll 8
                for (int g = 0; g < 8; ++g)
                    dot = _mm512_dpbusd_epi32(
                        dot, _mm512_xor_si512(bcast4(xb + 4 * g), bias), w[g]
                    );
                dot = _mm512_sub_epi32(dot, wsum);
            } else {
#pragma GCC unroll 4
                for (int g = 0; g < 4; ++g) {
                    dot = _mm512_dpbusd_epi32(dot, w[g], bcast4(xb + 4 * g));
                    dot_b = _mm512_dpbusd_epi32(dot_b, w[4 + g], bcast4(xb + 16 + 4 * g));
                }
                if (type == Q6_K) {
                    dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(32 * s[0]));
                    dot_b = _mm512_sub_epi32(dot_b, _mm512_set1_epi32(32 * s[1]));
                    acc[r] = _mm512_fmadd_ps(
                        _mm512_mul_ps(dwb, _mm512_set1_ps(dx)), _mm512_cvtepi32_ps(dot_b), acc[r]
                    );
                } else {
                    dot = _mm512_add_epi32(dot, dot_b);
                    if (type == Q4_0)
                        dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(8 * (s[0] + s[1])));
                }
            }
            acc[r] = _mm512_fmadd_ps(
                _mm512_mul_ps(dwa, _mm512_set1_ps(dx)), _mm512_cvtepi32_ps(dot), acc[r]
            );
            if (type == Q4_1 || type == Q4_K)
                acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(dx * (float)(s[0] + s[1])), acc[r]);
        }
    }
    const __mmask16 keep = (__mmask16)((1u << cols) - 1u);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
        if (r < mr) _mm512_mask_storeu_ps(out + r * ldo, keep, acc[r]);
}

typedef void (*TileFn)(
    const uint8_t *, int64_t, const int8_t *, int64_t, const float *, const int32_t *, float *,
    int64_t, int
);

#define TILE_FOR(ROWS, TYPE)                                                                   \
    static void tile_##TYPE##_##ROWS(                                                          \
        const uint8_t *panel, int64_t nb, const int8_t *xq, int64_t K, const float *xd,        \
        const int32_t *xs, float *out, int64_t ldo, int cols                                   \
    ) {                                                                                        \
        tile(ROWS, TYPE, panel, nb, xq, K, xd, xs, out, ldo, cols);                            \
    }
#define TILES_FOR(TYPE)                                                                        \
    TILE_FOR(1, TYPE) TILE_FOR(2, TYPE) TILE_FOR(3, TYPE) TILE_FOR(4, TYPE)                    \
    TILE_FOR(5, TYPE) TILE_FOR(6, TYPE) TILE_FOR(7, TYPE) TILE_FOR(8, TYPE)                    \
    static const TileFn tiles_##TYPE[MR + 1] = {                                               \
        NULL, tile_##TYPE##_1, tile_##TYPE##_2, tile_##TYPE##_3, tile_##TYPE##_4,              \
        tile_##TYPE##_5, tile_##TYPE##_6, tile_##TYPE##_7, tile_##TYPE##_8,                    \
    };
TILES_FOR(Q4_0)
TILES_FOR(Q4_1)
TILES_FOR(Q8_0)
TILES_FOR(Q4_K)
TILES_FOR(Q6_K)

static void run_tile(
    int type, int mr, const uint8_t *panel, int64_t nb, const int8_t *xq, int64_t K,
    const float *xd, const int32_t *xs, float *out, int64_t ldo, int cols
) {
    const TileFn *tiles = type == Q4_0   ? tiles_Q4_0
                          : type == Q4_1 ? tiles_Q4_1
                          : type == Q8_0 ? tiles_Q8_0
                          : type == Q4_K ? tiles_Q4_K
                                         : tiles_Q6_K;
    tiles[mr](panel, nb, xq, K, xd, xs, out, ldo, cols);
}
#elif GGUF_AVX2
#include "gguf_gemm_avx2.h"
#else
/* Portable path: the same arithmetic, one row and one output at a time. */
static void run_tile(
    int type, int mr, const uint8_t *panel, int64_t nb, const int8_t *xq, int64_t K,
    const float *xd, const int32_t *xs, float *out, int64_t ldo, int cols
) {
    for (int r = 0; r < mr; ++r) {
        for (int j = 0; j < cols; ++j) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *heads;
                const uint8_t *blk = block_at(type, panel, b, &heads);
                const int8_t *xb = xq + r * K + b * QK;
                const int32_t *s = xs + (r * nb + b) * 2;
                int32_t dot[2] = {0, 0};
                for (int i = 0; i < QK; ++i) dot[i / 16] += weight_value(type, blk, j, i) * xb[i];
                const float dx = xd[r * nb + b];
                const float d = half_at(heads + 2 * j);
                if (type == Q6_K) {
                    acc += d * (int8_t)blk[384 + j] * dx * (float)(dot[0] - 32 * s[0]);
                    acc += d * (int8_t)blk[400 + j] * dx * (float)(dot[1] - 32 * s[1]);
                    continue;
                }
                int32_t total = dot[0] + dot[1];
                if (type == Q4_0) total -= 8 * (s[0] + s[1]);
                const float sx = (float)(s[0] + s[1]);
                if (type == Q4_K) {
                    acc += d * blk[256 + j] * dx * (float)total;
                    acc -= half_at(heads + 32 + 2 * j) * blk[272 + j] * dx * sx;
                } else {
                    acc += d * dx * (float)total;
                    if (type == Q4_1) acc += half_at(heads + 32 + 2 * j) * dx * sx;
                }
            }
            out[r * ldo + j] = acc;
        }
    }
}
#endif

/* Per-thread scratch for the quantized activations, grown as needed (the engine calls the
 * kernels from one thread at a time; each caller thread gets its own). */
static __thread int8_t *scratch = NULL;
static __thread size_t scratch_size = 0;

static int8_t *scratch_for(size_t bytes) {
    if (bytes > scratch_size) {
        free(scratch);
        scratch = aligned_alloc(64, (bytes + 63) / 64 * 64);
        scratch_size = scratch ? bytes : 0;
    }
    return scratch;
}

/* out [M, N] (rows ldo apart) = x [M, K] (rows ldx apart) W^T for W packed as `type`.
 * Returns 0, or -1 for a bad type / K, -2 when scratch memory could not be had. */
int leaflm_gguf_gemm(
    int type, const float *x, int64_t ldx, const uint8_t *packed, float *out, int64_t ldo,
    int64_t M, int64_t N, int64_t K, int num_threads
) {
    const int64_t unit = unit_bytes(type), elems = is_k(type) ? 256 : QK;
    if (!unit || K % elems) return -1;
    if (M <= 0 || N <= 0) return 0;
    const int64_t nb = K / QK, panels = (N + PR - 1) / PR, panel_bytes = K / elems * unit;
    const size_t q_bytes = (size_t)M * K, d_off = (q_bytes + 63) / 64 * 64;
    int8_t *buf = scratch_for(d_off + (size_t)M * nb * (sizeof(float) + 2 * sizeof(int32_t)));
    if (!buf) return -2;
    int8_t *xq = buf;
    float *xd = (float *)(buf + d_off);
    int32_t *xs = (int32_t *)(xd + M * nb);
    const int threads = M * N * K < PARALLEL_MIN_MACS ? 1 : num_threads;
    const int64_t items = (M + MC - 1) / MC * panels;
    /* Several panels per grab: one at a time, the threads' contended counter cost more than
     * the LM head's 3072 panels took to read (49152x576 Q4_1 at batch 1: 0.66 ms on two
     * threads, 0.52 on one, 0.34 with chunks). */
    const int64_t chunk = items / (threads * 8) > 1 ? items / (threads * 8) : 1;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            quantize_row(x + m * ldx, K, xq + m * K, xd + m * nb, xs + m * nb * 2);
#pragma omp for schedule(dynamic, chunk)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t m0 = item / panels * MC, p = item % panels;
            const int64_t m1 = m0 + MC < M ? m0 + MC : M;
            const int cols = N - p * PR < PR ? (int)(N - p * PR) : PR;
            const uint8_t *panel = packed + p * panel_bytes;
            for (int64_t m = m0; m < m1; m += MR) {
                const int mr = m1 - m < MR ? (int)(m1 - m) : MR;
                run_tile(type, mr, panel, nb, xq + m * K, K, xd + m * nb, xs + m * nb * 2,
                         out + m * ldo + p * PR, ldo, cols);
            }
        }
    }
    return 0;
}

/* The activation quantization alone (what the kernels multiply by), for the reference:
 * q [M, K], d [M, K/32], s [M, K/16] (sums of q over 16 inputs). */
void leaflm_gguf_quantize_rows(
    const float *x, int64_t ldx, int64_t M, int64_t K, int8_t *q, float *d, int32_t *s
) {
    for (int64_t m = 0; m < M; ++m)
        quantize_row(x + m * ldx, K, q + m * K, d + m * (K / QK), s + m * (K / 16));
}

/* out [n, K] = float32 rows ids[0..n) of a packed [N, K] weight (an embedding lookup in a
 * quantized table): each value is d q (+ m) with the scales of its block as the reference
 * dequantization forms them (K-quants: fp16 super-block scale times the integer sub-block
 * scale, in float32). Returns 0, -1 for a bad type / K, -3 for an id outside [0, N). */
int leaflm_gguf_rows(
    int type, const uint8_t *packed, int64_t N, int64_t K, const int64_t *ids, int64_t n,
    float *out
) {
    const int64_t unit = unit_bytes(type), elems = is_k(type) ? 256 : QK;
    if (!unit || K % elems) return -1;
    const int64_t nb = K / QK, panel_bytes = K / elems * unit;
    for (int64_t r = 0; r < n; ++r) {
        if (ids[r] < 0 || ids[r] >= N) return -3;
        const uint8_t *panel = packed + ids[r] / PR * panel_bytes;
        const int lane = (int)(ids[r] % PR);
        float *row = out + r * K;
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t *heads;
            const uint8_t *blk = block_at(type, panel, b, &heads);
            const float d = half_at(heads + 2 * lane);
            for (int i = 0; i < QK; ++i) {
                const int32_t q = weight_value(type, blk, lane, i);
                float v;
                switch (type) {
                case Q4_0: v = (float)(q - 8) * d; break;
                case Q4_1: v = (float)q * d + half_at(heads + 32 + 2 * lane); break;
                case Q4_K:
                    v = (float)q * (d * (float)blk[256 + lane])
                        + -(half_at(heads + 32 + 2 * lane) * (float)blk[272 + lane]);
                    break;
                case Q6_K: /* a signed scale per 16 inputs */
                    v = (float)(q - 32) * (d * (float)(int8_t)blk[384 + 16 * (i / 16) + lane]);
                    break;
                default: v = (float)q * d; /* Q8_0: signed as stored */
                }
                row[b * QK + i] = v;
            }
        }
    }
    return 0;
}
