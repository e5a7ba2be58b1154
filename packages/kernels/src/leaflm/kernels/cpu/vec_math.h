/* Math helpers shared by the C kernels. */
#ifndef LEAFLM_VEC_MATH_H
#define LEAFLM_VEC_MATH_H

#include <math.h>
#include <stdint.h>

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

/* The maximum of v[0..n), or NaN if it holds one (torch.max's answer). */
static inline float row_max(const float *v, int64_t n) {
    float m = -INFINITY;
    int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
    for (int64_t i = 0; i < n; ++i) {
        m = v[i] > m ? v[i] : m;
        nan |= v[i] != v[i];
    }
    return nan ? NAN : m;
}

/* exp(x) to ~2 ulp for x in [-87, 88] (clamped outside), written so that an `omp simd` loop
 * vectorizes it: libm's expf stays scalar without -ffast-math. */
static inline float exp_clamped(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const float k = (x * 1.44269504088896341f + shifter) - shifter;
    const float r = x - k * 0.693145751953125f - k * 1.428606765330187045e-06f;
    const float p =
        1.0f +
        r * (1.0f +
             r * (0.5f +
                  r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    union {
        int32_t i;
        float f;
    } two_k = {.i = ((int32_t)k + 127) << 23};
    return p * two_k.f;
}

#endif
