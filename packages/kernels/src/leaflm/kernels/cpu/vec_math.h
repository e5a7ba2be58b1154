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

/* IEEE half <-> float by bit manipulation, for the paths without F16C (the vector paths use
 * vcvtph2ps/vcvtps2ph). Rounds to nearest even; overflow goes to infinity, as a cast does. */
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    union {
        uint32_t i;
        float f;
    } u;
    if (exp == 0x1F) {
        u.i = sign | 0x7F800000u | (man << 13); /* inf, nan */
    } else if (exp != 0) {
        u.i = sign | ((exp + 112) << 23) | (man << 13);
    } else { /* zero or subnormal: man * 2^-24 */
        u.f = (float)man * 5.9604644775390625e-08f;
        u.i |= sign;
    }
    return u.f;
}

static inline uint16_t float_to_half(float f) {
    union {
        float f;
        uint32_t i;
    } u = {.f = f};
    const uint32_t sign = (u.i >> 16) & 0x8000, mag = u.i & 0x7FFFFFFFu;
    if (mag >= 0x7F800000u) return (uint16_t)(sign | 0x7C00 | (mag > 0x7F800000u ? 0x200 : 0));
    if (mag >= 0x477FF000u) return (uint16_t)(sign | 0x7C00); /* rounds past 65504 */
    if (mag < 0x38800000u) { /* below 2^-14: a subnormal half, rounded by the float adder */
        union {
            uint32_t i;
            float f;
        } m = {.i = mag};
        m.f += 0.5f; /* 2^-1 has ulp 2^-24, the subnormal half's step */
        return (uint16_t)(sign | (m.i - 0x3F000000u));
    }
    const uint32_t odd = (mag >> 13) & 1;
    return (uint16_t)(sign | ((mag + 0xC8000FFFu + odd) >> 13)); /* rebias 127 -> 15, round */
}

#endif
