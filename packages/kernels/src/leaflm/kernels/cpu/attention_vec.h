/*
 * The vector primitives of paged_attention.c at the widest width the build has: AVX-512
 * (16 floats) or AVX2 + FMA + F16C (8 floats); ATT_VL is undefined without either, and the
 * kernel's `omp simd` loops run. Cache rows are float32 or IEEE half (H == 1), widened to
 * float as they load.
 */
#ifndef LEAFLM_ATTENTION_VEC_H
#define LEAFLM_ATTENTION_VEC_H

#include <stdint.h>

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define ATT_VL 16
#define ATT_MAX_ACC 16 /* value accumulators kept in registers (32 zmm) */
typedef __m512 vfloat;

static inline vfloat v_zero(void) { return _mm512_setzero_ps(); }
static inline vfloat v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline vfloat v_set1(float x) { return _mm512_set1_ps(x); }
static inline vfloat v_fma(vfloat a, vfloat b, vfloat c) { return _mm512_fmadd_ps(a, b, c); }
static inline void v_store(float *p, vfloat v) { _mm512_storeu_ps(p, v); }

/* Elements i..i+15 of a cache row of kind H. */
static inline vfloat v_load_kind(const void *row, int64_t i, const int H) {
    return H ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)))
             : _mm512_loadu_ps((const float *)row + i);
}

/* The first n (1..16) lanes of v into p. */
static inline void v_store_first(float *p, vfloat v, int64_t n) {
    _mm512_mask_storeu_ps(p, n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1), v);
}

/* Lane i: the sum of a[i]'s lanes, by a transpose-and-add tree (45 shuffles and adds for 16
 * sums, where one horizontal sum each costs about 9). */
static inline vfloat v_sum_lanes(vfloat a[16]) {
    __m512 b[8], c[4];
    for (int i = 0; i < 8; ++i)
        b[i] = _mm512_add_ps(
            _mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1])
        );
    for (int i = 0; i < 4; ++i) {
        const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y))
        );
    } /* c[i]: in each 128-bit lane, that lane's partial sums of a[4i..4i+3] */
    const __m512 e0 = _mm512_add_ps(
        _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
        _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1))
    );
    const __m512 e1 = _mm512_add_ps(
        _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
        _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1))
    );
    return _mm512_add_ps(
        _mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(2, 0, 2, 0)),
        _mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(3, 1, 3, 1))
    );
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define ATT_VL 8
#define ATT_MAX_ACC 12 /* of 16 ymm: the rest hold the weight, the row and the loop's temps */
typedef __m256 vfloat;

static inline vfloat v_zero(void) { return _mm256_setzero_ps(); }
static inline vfloat v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline vfloat v_set1(float x) { return _mm256_set1_ps(x); }
static inline vfloat v_fma(vfloat a, vfloat b, vfloat c) { return _mm256_fmadd_ps(a, b, c); }
static inline void v_store(float *p, vfloat v) { _mm256_storeu_ps(p, v); }

static inline vfloat v_load_kind(const void *row, int64_t i, const int H) {
    return H ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)))
             : _mm256_loadu_ps((const float *)row + i);
}

static inline void v_store_first(float *p, vfloat v, int64_t n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lanes), v);
}

/* Lane i: the sum of a[i]'s lanes (two rounds of pairwise adds, then the halves). */
static inline vfloat v_sum_lanes(vfloat a[8]) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    /* u0: per 128-bit half, the partial sums of a[0..3]; u1: of a[4..7] */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

#endif
