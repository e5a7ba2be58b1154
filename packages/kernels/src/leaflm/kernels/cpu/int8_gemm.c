/*
 * W8A8 linear layers: out = (x quantized per row) (W quantized per output row)^T, in int32,
 * scaled back to float32 (+ bias, or silu(gate) * up for a gated MLP's merged weight).
 *
 * Why: a batch-1 decode step streams every weight once, so its speed is bytes of weight per
 * token; int8 weights are a quarter of float32's. AVX-512 VNNI's `vpdpbusd` multiplies 64
 * unsigned by 64 signed bytes and adds each group of four into an int32 lane, so activations
 * are stored shifted by +128 (u8) and the shift is taken back with 128 * (column sum of the
 * int8 weight), precomputed at pack time (`corr`).
 *
 * Layout (see leaflm.kernels.cpu.int8_gemm.pack_weight): panel p holds NR output columns, k in
 * groups of four: packed[((p*K4 + g)*NR + j)*4 + t] = W[p*NR + j, 4g + t], zero past N and K.
 * One k-group of a panel is 4 vectors of 64 bytes read in order, so the weight streams from
 * memory front to back. A tile is MR rows x NR columns: MR*4 = 24 int32 accumulators in
 * registers, x's four bytes broadcast straight from memory. As in gemm.c the threads take
 * (row block, panel) items as they come free and each panel serves every row of the block.
 * A gated panel holds NR/2 gate columns then the NR/2 matching up columns.
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
#define MR 6
#define MC 192
#define PARALLEL_MIN_MACS 131072

int leaflm_int8_gemm_panel_width(void) {
#ifdef __AVX512VNNI__
    return NR;
#else
    return 0;
#endif
}

/* Row m of x as u8 (q + 128, q = round(x * 127 / max|x|)), K4*4 bytes (zeros past K), and
 * its scale max|x| / 127. */
static void quantize_row(const float *x, int64_t K, int64_t K4, uint8_t *q, float *scale) {
    float amax = 0.0f;
#pragma omp simd reduction(max : amax)
    for (int64_t k = 0; k < K; ++k) amax = fmaxf(amax, fabsf(x[k]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
#pragma omp simd
    for (int64_t k = 0; k < K; ++k) {
        float v = nearbyintf(x[k] * inv);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[k] = (uint8_t)((int)v + 128);
    }
    for (int64_t k = K; k < K4 * 4; ++k) q[k] = 128; /* 128 - 128 = 0 against zero weights */
    *scale = amax / 127.0f;
}

#ifdef __AVX512VNNI__
#include <immintrin.h>

static inline __attribute__((always_inline)) void tile(
    const int mr, const int gated, const uint8_t *restrict xq, int64_t ldq,
    const float *restrict xs, const int8_t *restrict panel, int64_t K4,
    const float *restrict ws, const int32_t *restrict corr, const float *restrict bias,
    float *restrict out, int64_t ldo, int cols
) {
    __m512i acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r)
        acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_si512();
    for (int64_t g = 0; g < K4; ++g) {
        const int8_t *w = panel + g * NR * 4;
        const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
        const __m512i w2 = _mm512_loadu_si512(w + 128), w3 = _mm512_loadu_si512(w + 192);
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) {
            if (r < mr) {
                int32_t four;
                memcpy(&four, xq + r * ldq + 4 * g, 4);
                const __m512i a = _mm512_set1_epi32(four);
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, w0);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, w1);
                acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], a, w2);
                acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], a, w3);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
        if (r >= mr) continue;
        float y[NR];
        const __m512 sx = _mm512_set1_ps(xs[r]);
        for (int v = 0; v < 4; ++v) {
            const __m512i c = _mm512_loadu_si512(corr + 16 * v);
            const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], c));
            const __m512 s = _mm512_mul_ps(sx, _mm512_loadu_ps(ws + 16 * v));
            _mm512_storeu_ps(y + 16 * v, _mm512_mul_ps(f, s));
        }
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
    int gated, const uint8_t *xq, int64_t ldq, const float *xs, const int8_t *panel, int64_t K4,
    const float *ws, const int32_t *corr, const float *bias, float *out, int64_t ldo, int cols
);

#define TILE_FOR(ROWS)                                                                         \
    static void tile_##ROWS(                                                                   \
        int gated, const uint8_t *xq, int64_t ldq, const float *xs, const int8_t *panel,       \
        int64_t K4, const float *ws, const int32_t *corr, const float *bias, float *out,       \
        int64_t ldo, int cols                                                                  \
    ) {                                                                                        \
        if (gated)                                                                             \
            tile(ROWS, 1, xq, ldq, xs, panel, K4, ws, corr, NULL, out, ldo, cols);             \
        else                                                                                   \
            tile(ROWS, 0, xq, ldq, xs, panel, K4, ws, corr, bias, out, ldo, cols);             \
    }
TILE_FOR(1)
TILE_FOR(2)
TILE_FOR(3)
TILE_FOR(4)
TILE_FOR(5)
TILE_FOR(6)

static const TileFn tiles[MR + 1] = {NULL, tile_1, tile_2, tile_3, tile_4, tile_5, tile_6};
#endif

/* out [M, N] (rows ldo apart) = dequant(quant(x) W^T) + bias (NULL: none), x [M, K] rows ldx
 * apart. `xq` (M x K4*4 bytes) and `xs` (M floats) are scratch the caller allocates; `ws` and
 * `corr` hold NR scales and 128 * column sums per panel; gated: silu(gate) * up, N = gate
 * columns. */
void leaflm_int8_gemm(
    const float *x, int64_t ldx, uint8_t *xq, float *xs, const int8_t *packed, const float *ws,
    const int32_t *corr, const float *bias, float *out, int64_t ldo, int64_t M, int64_t N,
    int64_t K, int gated, int num_threads
) {
#ifdef __AVX512VNNI__
    const int width = gated ? NR / 2 : NR;
    const int64_t K4 = (K + 3) / 4, panels = (N + width - 1) / width;
    const int threads = M * N * K < PARALLEL_MIN_MACS ? 1 : num_threads;
    const int64_t items = (M + MC - 1) / MC * panels;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; ++m) quantize_row(x + m * ldx, K, K4, xq + m * K4 * 4, xs + m);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t m0 = item / panels * MC, p = item % panels;
            const int64_t m1 = m0 + MC < M ? m0 + MC : M;
            const int cols = N - p * width < width ? (int)(N - p * width) : width;
            const int8_t *panel = packed + p * K4 * NR * 4;
            for (int64_t m = m0; m < m1; m += MR) {
                const int mr = m1 - m < MR ? (int)(m1 - m) : MR;
                tiles[mr](gated, xq + m * K4 * 4, K4 * 4, xs + m, panel, K4, ws + p * NR,
                          corr + p * NR, bias ? bias + p * width : NULL, out + m * ldo + p * width,
                          ldo, cols);
            }
        }
    }
#else
    (void)x, (void)ldx, (void)xq, (void)xs, (void)packed, (void)ws, (void)corr, (void)bias;
    (void)out, (void)ldo, (void)M, (void)N, (void)K, (void)gated, (void)num_threads;
    (void)quantize_row;
#endif
}
