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
 * float accumulators in registers, x's four bytes broadcast straight from memory. As in
 * gemm.c the threads take (row block, panel) items as they come free and each panel serves
 * every row of the block. A gated panel holds NR/2 gate columns then the NR/2 matching up
 * columns.
 *
 * `leaflm_int8_gemm_panel_width()` is 0 in a build without AVX-512 VNNI; callers then use the
 * PyTorch reference (leaflm.kernels.cpu.int8_gemm).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <omp.h>

#include "vec_math.h"

#define NR 64
#define MR 3
#define MC 192
#define PARALLEL_MIN_MACS 131072

int leaflm_int8_gemm_panel_width(void) {
#ifdef __AVX512VNNI__
    return NR;
#else
    return 0;
#endif
}

/* Row x [K] as int8 blocks of `block` (zeros past K, Kp = blocks * block values): per block
 * q = round(x * 127 / max|x|), its scale max|x| / 127 and -128 * sum(q). */
static void quantize_row(
    const float *x, int64_t K, int64_t block, int64_t blocks, int8_t *q, float *scale,
    int32_t *neg_sum
) {
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
#include <immintrin.h>

static inline __attribute__((always_inline)) void tile(
    const int mr, const int gated, const int8_t *restrict xq, int64_t ldq,
    const float *restrict xs, const int32_t *restrict xn, int64_t ldb, const uint8_t *restrict panel,
    int64_t block4, int64_t blocks, const float *restrict ws, const float *restrict bias,
    float *restrict out, int64_t ldo, int cols
) {
    __m512 acc[MR][4];
#pragma GCC unroll 3
    for (int r = 0; r < MR; ++r)
        acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        __m512i ia[MR][4];
#pragma GCC unroll 3
        for (int r = 0; r < MR; ++r)
            if (r < mr) ia[r][0] = ia[r][1] = ia[r][2] = ia[r][3] = _mm512_set1_epi32(xn[r * ldb + b]);
        for (int64_t g = b * block4; g < (b + 1) * block4; ++g) {
            const uint8_t *w = panel + g * NR * 4;
            const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
            const __m512i w2 = _mm512_loadu_si512(w + 128), w3 = _mm512_loadu_si512(w + 192);
#pragma GCC unroll 3
            for (int r = 0; r < MR; ++r) {
                if (r < mr) {
                    int32_t four;
                    memcpy(&four, xq + r * ldq + 4 * g, 4);
                    const __m512i a = _mm512_set1_epi32(four);
                    ia[r][0] = _mm512_dpbusd_epi32(ia[r][0], w0, a);
                    ia[r][1] = _mm512_dpbusd_epi32(ia[r][1], w1, a);
                    ia[r][2] = _mm512_dpbusd_epi32(ia[r][2], w2, a);
                    ia[r][3] = _mm512_dpbusd_epi32(ia[r][3], w3, a);
                }
            }
        }
#pragma GCC unroll 3
        for (int r = 0; r < MR; ++r) {
            if (r < mr) {
                const __m512 s = _mm512_set1_ps(xs[r * ldb + b]);
                for (int v = 0; v < 4; ++v)
                    acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[r][v]), s, acc[r][v]);
            }
        }
    }
#pragma GCC unroll 3
    for (int r = 0; r < MR; ++r) {
        if (r >= mr) continue;
        float y[NR];
        for (int v = 0; v < 4; ++v)
            _mm512_storeu_ps(y + 16 * v, _mm512_mul_ps(acc[r][v], _mm512_loadu_ps(ws + 16 * v)));
        float *o = out + r * ldo;
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
}

typedef void (*TileFn)(
    int gated, const int8_t *xq, int64_t ldq, const float *xs, const int32_t *xn, int64_t ldb,
    const uint8_t *panel, int64_t block4, int64_t blocks, const float *ws, const float *bias,
    float *out, int64_t ldo, int cols
);

#define TILE_FOR(ROWS)                                                                         \
    static void tile_##ROWS(                                                                   \
        int gated, const int8_t *xq, int64_t ldq, const float *xs, const int32_t *xn,          \
        int64_t ldb, const uint8_t *panel, int64_t block4, int64_t blocks, const float *ws,    \
        const float *bias, float *out, int64_t ldo, int cols                                   \
    ) {                                                                                        \
        if (gated)                                                                             \
            tile(ROWS, 1, xq, ldq, xs, xn, ldb, panel, block4, blocks, ws, NULL, out, ldo,     \
                 cols);                                                                        \
        else                                                                                   \
            tile(ROWS, 0, xq, ldq, xs, xn, ldb, panel, block4, blocks, ws, bias, out, ldo,     \
                 cols);                                                                        \
    }
TILE_FOR(1)
TILE_FOR(2)
TILE_FOR(3)

static const TileFn tiles[MR + 1] = {NULL, tile_1, tile_2, tile_3};
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
#ifdef __AVX512VNNI__
    const int width = gated ? NR / 2 : NR;
    const int64_t blocks = (K + block - 1) / block, Kp = blocks * block;
    const int64_t panels = (N + width - 1) / width;
    const int threads = M * N * K < PARALLEL_MIN_MACS ? 1 : num_threads;
    const int64_t items = (M + MC - 1) / MC * panels;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m)
            quantize_row(x + m * ldx, K, block, blocks, xq + m * Kp, xs + m * blocks,
                         xn + m * blocks);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t m0 = item / panels * MC, p = item % panels;
            const int64_t m1 = m0 + MC < M ? m0 + MC : M;
            const int cols = N - p * width < width ? (int)(N - p * width) : width;
            const uint8_t *panel = packed + p * Kp * NR;
            for (int64_t m = m0; m < m1; m += MR) {
                const int mr = m1 - m < MR ? (int)(m1 - m) : MR;
                tiles[mr](gated, xq + m * Kp, Kp, xs + m * blocks, xn + m * blocks, blocks,
                          panel, block / 4, blocks, ws + p * NR, bias ? bias + p * width : NULL,
                          out + m * ldo + p * width, ldo, cols);
            }
        }
    }
#else
    (void)x, (void)ldx, (void)xq, (void)xs, (void)xn, (void)packed, (void)ws, (void)bias;
    (void)out, (void)ldo, (void)M, (void)N, (void)K, (void)block, (void)gated;
    (void)num_threads, (void)quantize_row;
#endif
}
