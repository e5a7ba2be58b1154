/*
 * Fused float32 CPU layer ops: RMSNorm(+residual), rotary embedding, SiLU-and-mul.
 *
 * Each is one pass where the PyTorch reference takes four to eight, and each wakes the OpenMP
 * threads only when the tensor is large enough to repay it (`PARALLEL_MIN` elements): a decode
 * step's activations (tens of thousands of elements) are cheaper on one core than the wake-up
 * of a sleeping thread, which a step would otherwise pay hundreds of times.
 * Semantics are those of leaflm.kernels.reference.layers.
 */
#include <math.h>
#include <stdint.h>

#include "vec_math.h"

#define PARALLEL_MIN 262144

/* out = norm(h) * weight, h = x + residual (then stored in new_residual) or h = x. */
void leaflm_rms_norm(
    const float *x, int64_t x_stride, const float *residual, int64_t residual_stride,
    float *new_residual, const float *weight, float *out, int64_t rows, int64_t cols, float eps,
    int num_threads
) {
#pragma omp parallel for num_threads(num_threads) if (rows * cols >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = x + r * x_stride;
        float *o = out + r * cols;
        const float *h = xr;
        if (residual) {
            const float *res = residual + r * residual_stride;
            float *sum = new_residual + r * cols;
#pragma omp simd
            for (int64_t c = 0; c < cols; ++c) sum[c] = xr[c] + res[c];
            h = sum;
        }
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t c = 0; c < cols; ++c) ss += h[c] * h[c];
        const float inv = 1.0f / sqrtf(ss / (float)cols + eps);
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) o[c] = h[c] * inv * weight[c];
    }
}

/* In place on x [tokens, heads, head_dim] (token rows x_stride apart); cos_sin [pos, rot_dim]. */
void leaflm_rotary(
    const int64_t *positions, float *x, int64_t x_stride, int64_t tokens, int64_t heads,
    int64_t head_dim, const float *cos_sin, int64_t rot_dim, int is_neox, int num_threads
) {
    const int64_t half = rot_dim / 2;
#pragma omp parallel for num_threads(num_threads) if (tokens * heads * rot_dim >= PARALLEL_MIN)
    for (int64_t t = 0; t < tokens; ++t) {
        const float *cos = cos_sin + positions[t] * rot_dim, *sin = cos + half;
        for (int64_t h = 0; h < heads; ++h) {
            float *v = x + t * x_stride + h * head_dim;
            if (is_neox) {
                float *x1 = v, *x2 = v + half;
#pragma omp simd
                for (int64_t i = 0; i < half; ++i) {
                    const float a = x1[i], b = x2[i];
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i] + a * sin[i];
                }
            } else {
                for (int64_t i = 0; i < half; ++i) {
                    const float a = v[2 * i], b = v[2 * i + 1];
                    v[2 * i] = a * cos[i] - b * sin[i];
                    v[2 * i + 1] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}

/* out [rows, d] = silu(x[:, :d]) * x[:, d:] for x [rows, 2d] (rows x_stride apart). */
void leaflm_silu_and_mul(
    const float *x, int64_t x_stride, float *out, int64_t rows, int64_t d, int num_threads
) {
#pragma omp parallel for num_threads(num_threads) if (rows * d >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; ++r) {
        const float *g = x + r * x_stride, *u = g + d;
        float *o = out + r * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) o[c] = g[c] / (1.0f + exp_clamped(-g[c])) * u[c];
    }
}

/* Embedding lookup: out[i] = row ids[i] of a [rows, dim] table, stored plain (`width` 0, rows
 * `row_stride` apart) or as leaflm's packed GEMM panels ([panels, dim, width]: a tied LM
 * head's copy). A C call rather than a torch op so that a recorded decode step
 * (leaflm.kernels.cpu.graph) covers the whole forward. Ids outside [0, rows) get a zero row;
 * returns how many there were. */
int64_t leaflm_gather_rows(
    const float *table, int64_t row_stride, int64_t width, int64_t rows, const int64_t *ids,
    int64_t n, int64_t dim, float *out
) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t id = ids[i];
        float *o = out + i * dim;
        if (id < 0 || id >= rows) {
            for (int64_t k = 0; k < dim; ++k) o[k] = 0.0f;
            ++bad;
        } else if (width == 0) {
            const float *src = table + id * row_stride;
            for (int64_t k = 0; k < dim; ++k) o[k] = src[k];
        } else {
            const float *src = table + (id / width) * dim * width + id % width;
            for (int64_t k = 0; k < dim; ++k) o[k] = src[k * width];
        }
    }
    return bad;
}
