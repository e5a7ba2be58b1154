/*
 * Linear layers on GGUF block-quantized weights (Q4_0, Q4_1, Q8_0), out = x W^T, without
 * dequantizing the weight: what batch-1 decode streams is the file's own 4.5-8.5 bits per
 * weight instead of 32.
 *
 * As llama.cpp does, the activations are quantized per call to blocks of 32 int8 values with
 * one fp32 scale (Q8_0-style: d = amax / 127, q = rint(x * 127 / amax)) and the products are
 * integer dot products (AVX-512 VNNI `vpdpbusd`), scaled per block in fp32:
 *   Q4_0: d_w d_x (sum q_w q_x - 8 sum q_x)      (weights are q_w - 8, q_w in 0..15)
 *   Q4_1: d_w d_x sum q_w q_x + m_w d_x sum q_x  (weights are d_w q_w + m_w)
 *   Q8_0: d_w d_x sum q_w q_x                    (q_w signed: x is fed as x + 128, unsigned,
 *                                                 and 128 sum q_w taken off again)
 *
 * Layout (see leaflm.kernels.cpu.gguf_blocks.pack): rows are taken 16 at a time (a panel);
 * for each block of 32 inputs a panel holds its 16 rows' quant bytes interleaved four bytes
 * at a time (a 64-byte vector = 4 bytes of each of the 16 rows, so one int32 lane per output
 * row), then the 16 fp16 scales, then (Q4_1) the 16 fp16 mins. That is the same bytes as the
 * file's blocks, reordered: a panel is one contiguous stream, read once per call whatever
 * the batch, and the accumulators need no horizontal sums.
 *
 * Threads take (row block, panel) items dynamically as gemm.c does; the activations are
 * quantized inside the same parallel region.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define GGUF_VNNI 1
#else
#define GGUF_VNNI 0
#endif

#define QK 32   /* inputs per block */
#define PR 16   /* rows per panel */
#define MR 8    /* activation rows per tile */
#define MC 128  /* activation rows per work item */
#define PARALLEL_MIN_BYTES 65536

enum { Q4_0 = 2, Q4_1 = 3, Q8_0 = 8 }; /* ggml's type numbers */

static int quant_bytes(int type) { return type == Q8_0 ? 32 : 16; }

/* Bytes of one block of a panel: quants of 16 rows, 16 scales, 16 mins for Q4_1. */
int64_t leaflm_gguf_block_stride(int type) {
    if (type != Q4_0 && type != Q4_1 && type != Q8_0) return 0;
    return PR * quant_bytes(type) + PR * 2 * (type == Q4_1 ? 2 : 1);
}

int leaflm_gguf_vnni(void) { return GGUF_VNNI; }

__attribute__((unused)) static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 113;
            while (!(mant & 0x400)) { mant <<= 1; --exp; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* One row of x into int8 blocks: q (K bytes), d (K/32 scales), s (K/32 sums of q). */
static void quantize_row(const float *x, int64_t K, int8_t *q, float *d, int32_t *s) {
    for (int64_t b = 0; b < K / QK; ++b) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int i = 0; i < QK; ++i) amax = fmaxf(amax, fabsf(xb[i]));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        d[b] = amax / 127.0f;
        int32_t sum = 0;
        for (int i = 0; i < QK; ++i) {
            const int v = (int)nearbyintf(xb[i] * id);
            q[b * QK + i] = (int8_t)v;
            sum += v;
        }
        s[b] = sum;
    }
}

#if GGUF_VNNI
/* out[mr x cols] for one panel; `mr` and `type` are constants after inlining. */
static inline __attribute__((always_inline)) void tile(
    const int mr, const int type, const uint8_t *restrict panel, int64_t nb,
    const int8_t *restrict xq, int64_t K, const float *restrict xd, const int32_t *restrict xs,
    float *restrict out, int64_t ldo, int cols
) {
    const int64_t stride = leaflm_gguf_block_stride(type);
    const int qb = quant_bytes(type);
    __m512 acc[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
    const __m512i nibble = _mm512_set1_epi8(0x0f), bias = _mm512_set1_epi8((char)0x80);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *blk = panel + b * stride;
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + PR * qb)));
        __m512i w[8], wsum = _mm512_setzero_si512();
        if (type == Q8_0) {
#pragma GCC unroll 8
            for (int g = 0; g < 8; ++g) {
                w[g] = _mm512_loadu_si512(blk + g * 64);
                wsum = _mm512_dpbusd_epi32(wsum, bias, w[g]); /* 128 sum q_w */
            }
        } else {
#pragma GCC unroll 4
            for (int g = 0; g < 4; ++g) {
                const __m512i v = _mm512_loadu_si512(blk + g * 64);
                w[2 * g] = _mm512_and_si512(v, nibble);
                w[2 * g + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
            }
        }
        __m512 mw = _mm512_setzero_ps();
        if (type == Q4_1)
            mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + PR * qb + 32)));
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            if (r >= mr) continue;
            const int8_t *xb = xq + r * K + b * QK;
            int32_t x4[8];
            memcpy(x4, xb, sizeof x4);
            __m512i dot = _mm512_setzero_si512();
            if (type == Q8_0) {
#pragma GCC unroll 8
                for (int g = 0; g < 8; ++g)
                    dot = _mm512_dpbusd_epi32(
                        dot, _mm512_xor_si512(_mm512_set1_epi32(x4[g]), bias), w[g]
                    );
                dot = _mm512_sub_epi32(dot, wsum);
            } else {
#pragma GCC unroll 4
                for (int g = 0; g < 4; ++g) {
                    dot = _mm512_dpbusd_epi32(dot, w[2 * g], _mm512_set1_epi32(x4[g]));
                    dot = _mm512_dpbusd_epi32(dot, w[2 * g + 1], _mm512_set1_epi32(x4[4 + g]));
                }
                if (type == Q4_0)
                    dot = _mm512_sub_epi32(dot, _mm512_set1_epi32(8 * xs[r * nb + b]));
            }
            const float dx = xd[r * nb + b];
            acc[r] = _mm512_fmadd_ps(
                _mm512_mul_ps(dw, _mm512_set1_ps(dx)), _mm512_cvtepi32_ps(dot), acc[r]
            );
            if (type == Q4_1)
                acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(dx * (float)xs[r * nb + b]), acc[r]);
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

static void run_tile(
    int type, int mr, const uint8_t *panel, int64_t nb, const int8_t *xq, int64_t K,
    const float *xd, const int32_t *xs, float *out, int64_t ldo, int cols
) {
    const TileFn *tiles = type == Q4_0 ? tiles_Q4_0 : type == Q4_1 ? tiles_Q4_1 : tiles_Q8_0;
    tiles[mr](panel, nb, xq, K, xd, xs, out, ldo, cols);
}
#else
/* Portable path: the same arithmetic, one row and one output at a time. */
static void run_tile(
    int type, int mr, const uint8_t *panel, int64_t nb, const int8_t *xq, int64_t K,
    const float *xd, const int32_t *xs, float *out, int64_t ldo, int cols
) {
    const int64_t stride = leaflm_gguf_block_stride(type);
    const int qb = quant_bytes(type);
    for (int r = 0; r < mr; ++r) {
        for (int j = 0; j < cols; ++j) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *blk = panel + b * stride;
                const int8_t *xb = xq + r * K + b * QK;
                int32_t dot = 0;
                for (int g = 0; g < qb / 4; ++g) {
                    const uint8_t *wq = blk + g * 64 + j * 4;
                    for (int t = 0; t < 4; ++t) {
                        if (type == Q8_0) {
                            dot += (int8_t)wq[t] * xb[4 * g + t];
                        } else {
                            dot += (wq[t] & 0x0f) * xb[4 * g + t];
                            dot += (wq[t] >> 4) * xb[16 + 4 * g + t];
                        }
                    }
                }
                uint16_t hd, hm;
                memcpy(&hd, blk + PR * qb + 2 * j, 2);
                const float dx = xd[r * nb + b], sx = (float)xs[r * nb + b];
                if (type == Q4_0) dot -= 8 * xs[r * nb + b];
                acc += half_to_float(hd) * dx * (float)dot;
                if (type == Q4_1) {
                    memcpy(&hm, blk + PR * qb + 32 + 2 * j, 2);
                    acc += half_to_float(hm) * dx * sx;
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
    const int64_t stride = leaflm_gguf_block_stride(type);
    if (!stride || K % QK) return -1;
    if (M <= 0 || N <= 0) return 0;
    const int64_t nb = K / QK, panels = (N + PR - 1) / PR;
    const size_t q_bytes = (size_t)M * K, d_off = (q_bytes + 63) / 64 * 64;
    int8_t *buf = scratch_for(d_off + (size_t)M * nb * (sizeof(float) + sizeof(int32_t)));
    if (!buf) return -2;
    int8_t *xq = buf;
    float *xd = (float *)(buf + d_off);
    int32_t *xs = (int32_t *)(xd + M * nb);
    const int64_t weight_bytes = panels * nb * stride;
    const int threads = weight_bytes + M * K * 4 < PARALLEL_MIN_BYTES ? 1 : num_threads;
    const int64_t items = (M + MC - 1) / MC * panels;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            quantize_row(x + m * ldx, K, xq + m * K, xd + m * nb, xs + m * nb);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t m0 = item / panels * MC, p = item % panels;
            const int64_t m1 = m0 + MC < M ? m0 + MC : M;
            const int cols = N - p * PR < PR ? (int)(N - p * PR) : PR;
            const uint8_t *panel = packed + p * nb * stride;
            for (int64_t m = m0; m < m1; m += MR) {
                const int mr = m1 - m < MR ? (int)(m1 - m) : MR;
                run_tile(type, mr, panel, nb, xq + m * K, K, xd + m * nb, xs + m * nb,
                         out + m * ldo + p * PR, ldo, cols);
            }
        }
    }
    return 0;
}

/* The activation quantization alone (what the kernels multiply by), for the reference. */
void leaflm_gguf_quantize_rows(
    const float *x, int64_t ldx, int64_t M, int64_t K, int8_t *q, float *d, int32_t *s
) {
    for (int64_t m = 0; m < M; ++m)
        quantize_row(x + m * ldx, K, q + m * K, d + m * (K / QK), s + m * (K / QK));
}
