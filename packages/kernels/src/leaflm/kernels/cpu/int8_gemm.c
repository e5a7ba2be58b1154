/*
 * W8A8 linear layers: out = (x quantized per row and block) (W quantized per output row)^T,
 * in int32 per block, scaled back to float32 (+ bias, or silu(gate) * up for a gated MLP's
 * merged weight).
 *
 * Why: a batch-1 decode step streams every weight once, so its speed is bytes of weight per
 * token; int8 weights are a quarter of float32's. AVX-512 VNNI's `vpdpbusd` multiplies 64
 * unsigned by 64 signed bytes and adds each group of four into an int32 lane, so weights are
 * stored shifted by +128 (u8, at pack time) and activations signed; the shift comes back as
 * 128 * (the sum of the row's quantized block), which starts each block's accumulator.
 *
 * Activations get one scale per `block` consecutive values of a row (32: the same as
 * llama.cpp's Q8_0 activations); a whole-row scale quantizes the norms' outlier channels
 * too coarsely (see leaflm.kernels.cpu.int8_gemm). Each block's int32 sums are converted and
 * multiply-added into float accumulators with that block's scale; the weight's row scale
 * is applied once at the end.
 *
 * Layout (see leaflm.kernels.cpu.int8_gemm.pack_weight): panel p holds NR output columns, k in
 * groups of four: packed[((p*K4 + g)*NR + j)*4 + t] = W[p*NR + j, 4g + t] + 128, 128 (zero)
 * past N and K. One k-group of a panel is 4 vectors of 64 bytes read in order, so the weight
 * streams from memory front to back. A tile is MR rows x NR columns: MR*4 int32 and MR*4
 * float accumulators in registers, x's four bytes broadcast straight from memory (the AVX2
 * build: NR = 16, MR = 4, a k-group 2 vectors of 32 bytes). As in
 * gemm.c the threads take (row block, panel) items as they come free and each panel serves
 * every row of the block (blocks of fewer rows where there are few panels). A gated panel
 * holds NR/2 gate columns then the NR/2 matching up columns.
 *
 * Without VNNI, an AVX2 + FMA build runs the tile in int8_gemm_avx2.h: vpmaddubsw + vpmaddwd
 * with the weight turned back to signed and the sign trick (the u8 form would saturate
 * int16), so no +128 correction; the same integers and float arithmetic, the same bits as
 * the VNNI build. `leaflm_int8_gemm_panel_width()` is the build's NR, or 0 in a build with
 * neither (callers then use the PyTorch reference, leaflm.kernels.cpu.int8_gemm);
 * `leaflm_int8_gemm_simd()` names the path.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <omp.h>

#include "panel_items.h"
#include "vec_math.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
/* Without VNNI: AVX2 byte multiply-adds (int8_gemm_avx2.h), else the PyTorch reference. */
#if !defined(__AVX512VNNI__) && defined(__AVX2__) && defined(__FMA__)
#define INT8_AVX2 1
#else
#define INT8_AVX2 0
#endif

#if INT8_AVX2
#define NR 16
#define MR 4
#else
#define NR 64
#define MR 3
#endif
#define MC 192
#define PARALLEL_MIN_MACS 131072

int leaflm_int8_gemm_panel_width(void) {
#if defined(__AVX512VNNI__) || INT8_AVX2
    return NR;
#else
    return 0;
#endif
}

/* The instruction set the tiles were built for ("none": callers use the PyTorch reference). */
const char *leaflm_int8_gemm_simd(void) {
#if defined(__AVX512VNNI__)
    return "AVX-512 VNNI";
#elif INT8_AVX2
    return "AVX2";
#else
    return "none";
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* The lanes of the sixteen values at k that lie before K. */
static inline __mmask16 lanes_before(int64_t k, int64_t K) {
    return k + 16 <= K ? 0xFFFF : k < K ? (__mmask16)((1u << (K - k)) - 1) : 0;
}

/* quantize_row's blocks when `block` is a multiple of 16, sixteen values a vector: the scalar
 * loop cost ~0.85 ns a value, which at prefill sizes was a third of a 576-wide GEMM's time.
 * Same results: the same products, rounded to nearest even (the default MXCSR mode, as
 * nearbyintf), and |x * 127 / max|x|| rounds to at most 127, so the saturating narrowing
 * never clips. Values past K are masked off and come out as zeros. */
static void quantize_row_avx512(
    const float *x, int64_t K, int64_t block, int64_t blocks, int8_t *q, float *scale,
    int32_t *neg_sum
) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t k0 = b * block;
        __m512 amax16 = _mm512_setzero_ps();
        for (int64_t k = k0; k < k0 + block; k += 16) {
            const __m512 v = _mm512_maskz_loadu_ps(lanes_before(k, K), x + k);
            amax16 = _mm512_max_ps(amax16, _mm512_andnot_ps(sign, v));
        }
        const float amax = _mm512_reduce_max_ps(amax16);
        const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m512i sum16 = _mm512_setzero_si512();
        for (int64_t k = k0; k < k0 + block; k += 16) {
            const __m512 xv = _mm512_maskz_loadu_ps(lanes_before(k, K), x + k);
            const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(xv, inv));
            _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtsepi32_epi8(v));
            sum16 = _mm512_add_epi32(sum16, v);
        }
        scale[b] = amax / 127.0f;
        neg_sum[b] = -128 * _mm512_reduce_add_epi32(sum16);
    }
}
#endif

#if defined(__AVX512VNNI__) || INT8_AVX2
/* One tile row's NR products y (the weight row scales applied) into o: silu(gate) * up for a
 * gated panel (NR/2 gate columns, then the matching up columns), else + bias (NULL: none). */
static inline __attribute__((always_inline)) void store_row(
    const float *restrict y, const int gated, const float *restrict bias, float *restrict o,
    int cols
) {
    if (gated) {
#pragma omp simd
        for (int c = 0; c < cols; ++c) {
            const float gv = y[c];
            o[c] = gv / (1.0f + exp_clamped(-gv)) * y[NR / 2 + c];
        }
    } else if (bias) {
#pragma omp simd
        for (int c = 0; c < cols; ++c) o[c] = y[c] + bias[c];
    } else {
        memcpy(o, y, (size_t)cols * sizeof(float));
    }
}
#endif

#if INT8_AVX2
#include "int8_gemm_avx2.h"
#endif

/* Row x [K] as int8 blocks of `block` (zeros past K, Kp = blocks * block values): per block
 * q = round(x * 127 / max|x|), its scale max|x| / 127 and -128 * sum(q). */
static void quantize_row(
    const float *x, int64_t K, int64_t block, int64_t blocks, int8_t *q, float *scale,
    int32_t *neg_sum
) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    if (block % 16 == 0) {
        quantize_row_avx512(x, K, block, blocks, q, scale, neg_sum);
        return;
    }
#elif INT8_AVX2
    if (block % 8 == 0) {
        quantize_row_avx2(x, K, block, blocks, q, scale, neg_sum);
        return;
    }
#endif
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t k0 = b * block, n = K - k0 < block ? K - k0 : block;
        float amax = 0.0f;
#pragma omp simd reduction(max : amax)
        for (int64_t k = 0; k < n; ++k) amax = fmaxf(amax, fabsf(x[k0 + k]));
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = 0; k < n; ++k) {
            float v = nearbyintf(x[k0 + k] * inv);
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            q[k0 + k] = (int8_t)v;
            sum += (int32_t)v;
        }
        for (int64_t k = n; k < block; ++k) q[k0 + k] = 0;
        scale[b] = amax / 127.0f;
        neg_sum[b] = -128 * sum;
    }
}

#ifdef __AVX512VNNI__
#define ZERO4(P, R) P##R##0 = P##R##1 = P##R##2 = P##R##3
/* acc += u8 w . s8 a, in place ("+v"): the intrinsic let GCC 12 copy the accumulator
 * through a spare register around every vpdpbusd. */
#define DP(ACC, W, A) __asm__("vpdpbusd %2, %1, %0" : "+v"(ACC) : "v"(W), "v"(A))
#define DP4(R, A) DP(i##R##0, w0, A); DP(i##R##1, w1, A); DP(i##R##2, w2, A); DP(i##R##3, w3, A)
#define FMA1(R, V, S) f##R##V = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i##R##V), S, f##R##V)
#define FMA4(R, S) FMA1(R, 0, S), FMA1(R, 1, S), FMA1(R, 2, S), FMA1(R, 3, S)

static inline __m512i broadcast4(const int8_t *p) {
    int32_t four;
    memcpy(&four, p, 4);
    return _mm512_set1_epi32(four);
}

static inline __attribute__((always_inline)) void tile(
    const int mr, const int gated, const int8_t *restrict xq, int64_t ldq,
    const float *restrict xs, const int32_t *restrict xn, int64_t ldb, const uint8_t *restrict panel,
    int64_t block4, int64_t blocks, const float *restrict ws, const float *restrict bias,
    float *restrict out, int64_t ldo, int cols, const char *next, int64_t next_lines
) {
    __m512 f00, f01, f02, f03, f10, f11, f12, f13, f20, f21, f22, f23;
    ZERO4(f, 0) = ZERO4(f, 1) = ZERO4(f, 2) = _mm512_setzero_ps();
    int64_t due = 0;
    for (int64_t b = 0; b < blocks; ++b) {
        next = prefetch_step(next, &due, next_lines, blocks);
        __m512i i00, i01, i02, i03, i10, i11, i12, i13, i20, i21, i22, i23;
        ZERO4(i, 0) = _mm512_set1_epi32(xn[b]);
        ZERO4(i, 1) = mr > 1 ? _mm512_set1_epi32(xn[ldb + b]) : _mm512_setzero_si512();
        ZERO4(i, 2) = mr > 2 ? _mm512_set1_epi32(xn[2 * ldb + b]) : _mm512_setzero_si512();
        for (int64_t g = b * block4; g < (b + 1) * block4; ++g) {
            const uint8_t *w = panel + g * NR * 4;
            const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
            const __m512i w2 = _mm512_loadu_si512(w + 128), w3 = _mm512_loadu_si512(w + 192);
            const __m512i a0 = broadcast4(xq + 4 * g);
            DP4(0, a0);
            if (mr > 1) {
                const __m512i a1 = broadcast4(xq + ldq + 4 * g);
                DP4(1, a1);
            }
            if (mr > 2) {
                const __m512i a2 = broadcast4(xq + 2 * ldq + 4 * g);
                DP4(2, a2);
            }
        }
        const __m512 s0 = _mm512_set1_ps(xs[b]);
        FMA4(0, s0);
        if (mr > 1) {
            const __m512 s1 = _mm512_set1_ps(xs[ldb + b]);
            FMA4(1, s1);
        }
        if (mr > 2) {
            const __m512 s2 = _mm512_set1_ps(xs[2 * ldb + b]);
            FMA4(2, s2);
        }
    }
    const __m512 acc[MR][4] = {{f00, f01, f02, f03}, {f10, f11, f12, f13}, {f20, f21, f22, f23}};
#pragma GCC unroll 3
    for (int r = 0; r < MR; ++r) {
        if (r >= mr) continue;
        float y[NR];
        for (int v = 0; v < 4; ++v)
            _mm512_storeu_ps(y + 16 * v, _mm512_mul_ps(acc[r][v], _mm512_loadu_ps(ws + 16 * v)));
        store_row(y, gated, bias, out + r * ldo, cols);
    }
}
#endif

#if defined(__AVX512VNNI__) || INT8_AVX2

typedef void (*TileFn)(
    int gated, const int8_t *xq, int64_t ldq, const float *xs, const int32_t *xn, int64_t ldb,
    const uint8_t *panel, int64_t block4, int64_t blocks, const float *ws, const float *bias,
    float *out, int64_t ldo, int cols, const char *next, int64_t next_lines
);

#define TILE_FOR(ROWS)                                                                         \
    static void tile_##ROWS(                                                                   \
        int gated, const int8_t *xq, int64_t ldq, const float *xs, const int32_t *xn,          \
        int64_t ldb, const uint8_t *panel, int64_t block4, int64_t blocks, const float *ws,    \
        const float *bias, float *out, int64_t ldo, int cols, const char *next,                \
        int64_t next_lines                                                                     \
    ) {                                                                                        \
        if (gated)                                                                             \
            tile(ROWS, 1, xq, ldq, xs, xn, ldb, panel, block4, blocks, ws, NULL, out, ldo,     \
                 cols, next, next_lines);                                                      \
        else                                                                                   \
            tile(ROWS, 0, xq, ldq, xs, xn, ldb, panel, block4, blocks, ws, bias, out, ldo,     \
                 cols, next, next_lines);                                                      \
    }
TILE_FOR(1)
TILE_FOR(2)
TILE_FOR(3)
#if MR == 4
TILE_FOR(4)
static const TileFn tiles[MR + 1] = {NULL, tile_1, tile_2, tile_3, tile_4};
#else
static const TileFn tiles[MR + 1] = {NULL, tile_1, tile_2, tile_3};
#endif
#endif

#if defined(__AVX512VNNI__) || INT8_AVX2
/* One GEMM's quantized operands, for its tiles (panel_items.h hands them out). */
typedef struct {
    const int8_t *xq;
    const float *xs;
    const int32_t *xn;
    const float *ws, *bias;
    float *out;
    int64_t Kp, blocks, block, ldo;
    int gated, width;
} Int8Gemm;

static void run_tile(const void *gemm, const PanelTile *t) {
    const Int8Gemm *g = gemm;
    tiles[t->mr](g->gated, g->xq + t->m * g->Kp, g->Kp, g->xs + t->m * g->blocks,
                 g->xn + t->m * g->blocks, g->blocks, (const uint8_t *)t->panel,
                 g->block / 4, g->blocks, g->ws + t->p * NR,
                 g->bias ? g->bias + t->p * g->width : NULL,
                 g->out + t->m * g->ldo + t->p * g->width, g->ldo, t->cols, t->ahead, t->lines);
}
#endif

/* out [M, N] (rows ldo apart) = dequant(quant(x) W^T) + bias (NULL: none), x [M, K] rows ldx
 * apart, activation blocks of `block` values (a multiple of 4; the packed weight's K is
 * padded to a multiple of it). `xq` (M x Kp bytes), `xs` and `xn` (M x blocks) are scratch
 * the caller allocates; `ws` holds NR weight-row scales per panel; gated: silu(gate) * up,
 * N = gate columns. */
void leaflm_int8_gemm(
    const float *x, int64_t ldx, int8_t *xq, float *xs, int32_t *xn, const uint8_t *packed,
    const float *ws, const float *bias, float *out, int64_t ldo, int64_t M, int64_t N,
    int64_t K, int64_t block, int gated, int num_threads
) {
#if defined(__AVX512VNNI__) || INT8_AVX2
    const int width = gated ? NR / 2 : NR;
    const int64_t blocks = (K + block - 1) / block, Kp = blocks * block;
    const int64_t panels = (N + width - 1) / width;
    const int threads = M * N * K < PARALLEL_MIN_MACS ? 1 : num_threads;
    /* Few panels (a 576-wide output has 9): split the rows too, so that the threads' shares
     * even out; a panel (K x NR bytes) read again by the next row block comes from L2. */
    int64_t mc = MC;
    while (mc > 8 * MR && (M + mc - 1) / mc * panels < 8 * threads) mc /= 2;
    const Int8Gemm g = {xq, xs, xn, ws, bias, out, Kp, blocks, block, ldo, gated, width};
    int64_t claimed = 0;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            quantize_row(x + m * ldx, K, block, blocks, xq + m * Kp, xs + m * blocks,
                         xn + m * blocks);
        run_panel_items(&claimed, M, N, mc, MR, panels, width, packed, Kp * NR, run_tile, &g);
    }
#else
    (void)x, (void)ldx, (void)xq, (void)xs, (void)xn, (void)packed, (void)ws, (void)bias;
    (void)out, (void)ldo, (void)M, (void)N, (void)K, (void)block, (void)gated;
    (void)num_threads, (void)quantize_row;
#endif
}
