/*
 * The AVX2 + FMA path of int8_gemm.c (CPUs without AVX-512 VNNI: AMD before Zen 4, Intel
 * before Ice Lake, many cloud VMs). Included by int8_gemm.c only, after store_row; same
 * packed layout formula (u8 = q + 128, four k a column per int32 lane), NR = 16 columns a
 * panel (a k-group is 2 vectors of 32 bytes, gate then up for a gated panel), same per-block
 * fp32 arithmetic as the VNNI tile: the integer dot products are exact in both.
 *
 * There is no vpdpbusd: `vpmaddubsw` (unsigned x signed bytes, adjacent pairs summed into
 * saturating int16) then `vpmaddwd` by ones (int16 pairs into int32) make one column's
 * 4-byte dot product per int32 lane. The stored u8 weights (up to 255) times activations (up
 * to 127) would saturate (a pair reaches 64770), so the weight goes back to signed (xor 0x80:
 * q in [-127, 127], quantize_weight clamps -128 away) and multiplies by the sign trick,
 * |q_w| times q_x with q_w's sign: a pair is at most 2 * 127 * 127 = 32258 (activations are
 * in [-127, 127] too, quantize_row). The products are then signed ones, so no +128 shift
 * comes back: a block's accumulator starts at zero and xn (-128 * sum) goes unused.
 *
 * 16 ymm registers: a tile is MR rows x 16 columns, 2 int32 sums per row kept in registers
 * (KEEP), the weights' signed and absolute values (4), ones and a broadcast; the float
 * accumulators are touched once per block and GCC keeps them on the stack (L1).
 */

/* Four activation bytes broadcast to every lane, straight from memory (vpbroadcastd m32). */
static inline __m256i bcast4(const int8_t *p) {
    int32_t four;
    memcpy(&four, p, 4);
    return _mm256_set1_epi32(four);
}

/* The running sum keeps its register: GCC otherwise spills some rows' sums in the k loop
 * and reloads them around every multiply-add. */
#define KEEP(v) __asm__ volatile("" : "+x"(v))

/* The lanes of the eight values at k that lie before K (all ones: keep). */
static inline __m256i lanes_before8(int64_t k, int64_t K) {
    const int64_t n = K - k < 0 ? 0 : K - k > 8 ? 8 : K - k;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* quantize_row's blocks when `block` is a multiple of 8, eight values a vector (as
 * quantize_row_avx512): the same products, rounded to nearest even, |q| <= 127 so the
 * saturating narrowing never clips; values past K are masked off and come out as zeros. */
static __attribute__((unused)) void quantize_row_avx2(
    const float *x, int64_t K, int64_t block, int64_t blocks, int8_t *q, float *scale,
    int32_t *neg_sum
) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t k0 = b * block;
        __m256 amax8 = _mm256_setzero_ps();
        for (int64_t k = k0; k < k0 + block; k += 8) {
            const __m256 v = _mm256_maskload_ps(x + k, lanes_before8(k, K));
            amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign, v));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float amax = _mm_cvtss_f32(m4);
        const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m256i sum8 = _mm256_setzero_si256();
        for (int64_t k = k0; k < k0 + block; k += 8) {
            const __m256 xv = _mm256_maskload_ps(x + k, lanes_before8(k, K));
            const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(xv, inv));
            const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(v),
                                              _mm256_extracti128_si256(v, 1));
            _mm_storel_epi64((__m128i *)(q + k), _mm_packs_epi16(h, h));
            sum8 = _mm256_add_epi32(sum8, v);
        }
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum8), _mm256_extracti128_si256(sum8, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        scale[b] = amax / 127.0f;
        neg_sum[b] = -128 * _mm_cvtsi128_si32(s4);
    }
}

static inline __attribute__((always_inline)) void tile(
    const int mr, const int gated, const int8_t *restrict xq, int64_t ldq,
    const float *restrict xs, const int32_t *restrict xn, int64_t ldb, const uint8_t *restrict panel,
    int64_t block4, int64_t blocks, const float *restrict ws, const float *restrict bias,
    float *restrict out, int64_t ldo, int cols, const char *next, int64_t next_lines
) {
    (void)xn;
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    __m256 f[MR][2];
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) f[r][0] = f[r][1] = _mm256_setzero_ps();
    int64_t due = 0;
    for (int64_t b = 0; b < blocks; ++b) {
        next = prefetch_step(next, &due, next_lines, blocks);
        __m256i d[MR][2];
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r) d[r][0] = d[r][1] = _mm256_setzero_si256();
        for (int64_t g = b * block4; g < (b + 1) * block4; ++g) {
            const uint8_t *w = panel + g * NR * 4;
            const __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)w), flip);
            const __m256i w1 =
                _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + 32)), flip);
            const __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);
#pragma GCC unroll 4
            for (int r = 0; r < MR; ++r) {
                if (r >= mr) continue;
                const __m256i a = bcast4(xq + r * ldq + 4 * g);
                const __m256i p0 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(u0, _mm256_sign_epi8(a, w0)), ones);
                const __m256i p1 = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(u1, _mm256_sign_epi8(a, w1)), ones);
                d[r][0] = _mm256_add_epi32(d[r][0], p0);
                d[r][1] = _mm256_add_epi32(d[r][1], p1);
                KEEP(d[r][0]);
                KEEP(d[r][1]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r) {
            if (r >= mr) continue;
            const __m256 s = _mm256_set1_ps(xs[r * ldb + b]);
            f[r][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[r][0]), s, f[r][0]);
            f[r][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[r][1]), s, f[r][1]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
        if (r >= mr) continue;
        float y[NR];
        _mm256_storeu_ps(y, _mm256_mul_ps(f[r][0], _mm256_loadu_ps(ws)));
        _mm256_storeu_ps(y + 8, _mm256_mul_ps(f[r][1], _mm256_loadu_ps(ws + 8)));
        store_row(y, gated, bias, out + r * ldo, cols);
    }
}
