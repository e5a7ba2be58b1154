/*
 * The AVX2 + FMA + F16C tile of gguf_gemm.c (CPUs without AVX-512: AMD before Zen 4, Intel
 * client cores, many cloud VMs). Included by gguf_gemm.c only, after its block layout
 * helpers; same packed panels, same per-block fp32 arithmetic as the VNNI tile (so the same
 * results to the bit: the integer dot products are exact in both).
 *
 * There is no vpdpbusd: `vpmaddubsw` (unsigned x signed bytes, adjacent pairs summed into
 * saturating int16) then `vpmaddwd` by ones (int16 pairs into int32) make one row's 4-byte
 * dot product per int32 lane. Activations are in [-127, 127] (quantize_row), so one
 * vpmaddubsw pair is at most
 *   4-bit quants (0..15):   2 * 15 * 127 =  3810, eight summed in int16: 30480;
 *   Q6_K (0..63):           2 * 63 * 127 = 16002, two summed: 32004;
 *   Q8_0 (-128..127):       2 * 128 * 127 = 32512 with the sign trick (|q_w| times q_x with
 *                           q_w's sign; |-128| is 128 unsigned), so none summed in int16.
 * 16 ymm registers (the VNNI tile keeps a block's 8 weight vectors and 8 rows' sums in 32
 * zmm): a tile is one 8-row half of a panel times up to AR activation rows, an int32 or int16
 * sum and an fp32 accumulator per activation row, the weights unpacked a group at a time.
 */

#define AR 4 /* activation rows per AVX2 tile */

static inline __m256 half8(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 u8x8(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static inline __m256 i8x8(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Four activation bytes broadcast to every lane, straight from memory (vpbroadcastd m32). */
static inline __m256i bcast4(const int8_t *p) {
    return _mm256_broadcastd_epi32(_mm_loadu_si32(p));
}

/* The `nib` nibbles (0: low, inputs 4g..; 1: high, inputs 16 + 4g..) of group g of one
 * 8-row half `q` of a block; Q6_K ors in their 2-bit planes (see the VNNI tile). */
static inline __m256i nibbles(const int type, const uint8_t *q, int g, int nib) {
    const __m256i mask = _mm256_set1_epi8(0x0f);
    const __m256i v = _mm256_loadu_si256((const __m256i *)(q + g * 64));
    __m256i w = _mm256_and_si256(nib ? _mm256_srli_epi16(v, 4) : v, mask);
    if (type == Q6_K) {
        const __m256i h = _mm256_loadu_si256((const __m256i *)(q + 256 + (g / 2) * 64));
        const int shift = 2 * (nib + 2 * (g % 2)); /* where this group's two bits sit */
        const __m256i bits = _mm256_and_si256(h, _mm256_set1_epi8((char)(3 << shift)));
        w = _mm256_or_si256(
            w, shift < 4 ? _mm256_slli_epi16(bits, 4 - shift) : _mm256_srli_epi16(bits, shift - 4)
        );
    }
    return w;
}

/* The running sum keeps its register: GCC otherwise spills some rows' sums in the unrolled
 * block loop and reloads them around every multiply-add. */
#define KEEP(v) __asm__ volatile("" : "+x"(v))

/* out[mr x 8] = half h (output rows 8h..8h+7) of one panel; mr, type constants. */
static inline __attribute__((always_inline)) void tile(
    const int mr, const int type, const uint8_t *restrict panel, int64_t nb,
    const int8_t *restrict xq, int64_t K, const float *restrict xd, const int32_t *restrict xs,
    float *restrict out, int64_t ldo, int h, int cols
) {
    __m256 acc[AR];
#pragma GCC unroll 4
    for (int r = 0; r < AR; ++r) acc[r] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *heads;
        const uint8_t *blk = block_at(type, panel, b, &heads);
        const uint8_t *q = blk + 32 * h; /* group g's 8 rows x 4 bytes at q + 64 g */
        __m256i dot[AR];
        if (type == Q8_0) {
#pragma GCC unroll 8
            for (int g = 0; g < 8; ++g) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(q + g * 64));
                const __m256i aw = _mm256_abs_epi8(w);
#pragma GCC unroll 4
                for (int r = 0; r < AR; ++r) {
                    if (r >= mr) continue;
                    const __m256i x = _mm256_sign_epi8(bcast4(xq + r * K + b * QK + 4 * g), w);
                    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, x), ones);
                    dot[r] = g ? _mm256_add_epi32(dot[r], p) : p;
                    KEEP(dot[r]);
                }
            }
        } else if (type == Q6_K) {
            /* two sub-blocks of 16 inputs: the high nibbles' (16..31) first, as the VNNI
             * tile adds them */
#pragma GCC unroll 2
            for (int nib = 1; nib >= 0; --nib) {
#pragma GCC unroll 2
                for (int pair = 0; pair < 2; ++pair) {
                    const __m256i w0 = nibbles(type, q, 2 * pair, nib);
                    const __m256i w1 = nibbles(type, q, 2 * pair + 1, nib);
#pragma GCC unroll 4
                    for (int r = 0; r < AR; ++r) {
                        if (r >= mr) continue;
                        const int8_t *xb = xq + r * K + b * QK + 16 * nib + 8 * pair;
                        const __m256i p = _mm256_madd_epi16(
                            _mm256_add_epi16(_mm256_maddubs_epi16(w0, bcast4(xb)),
                                             _mm256_maddubs_epi16(w1, bcast4(xb + 4))),
                            ones);
                        dot[r] = pair ? _mm256_add_epi32(dot[r], p) : p;
                        KEEP(dot[r]);
                    }
                }
                const __m256 dw = _mm256_mul_ps(half8(heads + 16 * h),
                                                i8x8(blk + 384 + 16 * nib + 8 * h));
#pragma GCC unroll 4
                for (int r = 0; r < AR; ++r) {
                    if (r >= mr) continue;
                    const int32_t s = xs[(r * nb + b) * 2 + nib];
                    const __m256i d32 = _mm256_sub_epi32(dot[r], _mm256_set1_epi32(32 * s));
                    acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(xd[r * nb + b])),
                                             _mm256_cvtepi32_ps(d32), acc[r]);
                }
            }
            continue;
        } else { /* 4-bit: all 32 inputs' products summed in int16 */
#pragma GCC unroll 4
            for (int g = 0; g < 4; ++g) {
                const __m256i lo = nibbles(type, q, g, 0), hi = nibbles(type, q, g, 1);
#pragma GCC unroll 4
                for (int r = 0; r < AR; ++r) {
                    if (r >= mr) continue;
                    const int8_t *xb = xq + r * K + b * QK + 4 * g;
                    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(xb)),
                                                       _mm256_maddubs_epi16(hi, bcast4(xb + 16)));
                    dot[r] = g ? _mm256_add_epi16(dot[r], p) : p;
                    KEEP(dot[r]);
                }
            }
#pragma GCC unroll 4
            for (int r = 0; r < AR; ++r)
                if (r < mr) dot[r] = _mm256_madd_epi16(dot[r], ones);
        }
        __m256 dw, mw = _mm256_setzero_ps();
        if (type == Q4_K) {
            dw = _mm256_mul_ps(half8(heads + 16 * h), u8x8(blk + 256 + 8 * h));
            mw = _mm256_sub_ps(mw, _mm256_mul_ps(half8(heads + 32 + 16 * h),
                                                 u8x8(blk + 272 + 8 * h)));
        } else {
            dw = half8(heads + 16 * h);
            if (type == Q4_1) mw = half8(heads + 32 + 16 * h);
        }
#pragma GCC unroll 4
        for (int r = 0; r < AR; ++r) {
            if (r >= mr) continue;
            const int32_t *s = xs + (r * nb + b) * 2;
            const float dx = xd[r * nb + b];
            __m256i d32 = dot[r];
            if (type == Q4_0) d32 = _mm256_sub_epi32(d32, _mm256_set1_epi32(8 * (s[0] + s[1])));
            acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(dx)),
                                     _mm256_cvtepi32_ps(d32), acc[r]);
            if (type == Q4_1 || type == Q4_K)
                acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(dx * (float)(s[0] + s[1])), acc[r]);
        }
    }
    const int n = cols - 8 * h < 8 ? cols - 8 * h : 8;
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 4
    for (int r = 0; r < AR; ++r) {
        if (r >= mr) continue;
        if (n == 8)
            _mm256_storeu_ps(out + r * ldo + 8 * h, acc[r]);
        else
            _mm256_maskstore_ps(out + r * ldo + 8 * h, keep, acc[r]);
    }
}

typedef void (*TileFn)(
    const uint8_t *, int64_t, const int8_t *, int64_t, const float *, const int32_t *, float *,
    int64_t, int, int
);

#define TILE_FOR(ROWS, TYPE)                                                                   \
    static void tile_##TYPE##_##ROWS(                                                          \
        const uint8_t *panel, int64_t nb, const int8_t *xq, int64_t K, const float *xd,        \
        const int32_t *xs, float *out, int64_t ldo, int h, int cols                            \
    ) {                                                                                        \
        tile(ROWS, TYPE, panel, nb, xq, K, xd, xs, out, ldo, h, cols);                         \
    }
#define TILES_FOR(TYPE)                                                                        \
    TILE_FOR(1, TYPE) TILE_FOR(2, TYPE) TILE_FOR(3, TYPE) TILE_FOR(4, TYPE)                    \
    static const TileFn tiles_##TYPE[AR + 1] = {                                               \
        NULL, tile_##TYPE##_1, tile_##TYPE##_2, tile_##TYPE##_3, tile_##TYPE##_4,              \
    };
TILES_FOR(Q4_0)
TILES_FOR(Q4_1)
TILES_FOR(Q8_0)
TILES_FOR(Q4_K)
TILES_FOR(Q6_K)

/* mr (<= MR) activation rows in tiles of AR, each panel half (the second only where it has
 * output rows). */
static void run_tile(
    int type, int mr, const uint8_t *panel, int64_t nb, const int8_t *xq, int64_t K,
    const float *xd, const int32_t *xs, float *out, int64_t ldo, int cols
) {
    const TileFn *tiles = type == Q4_0   ? tiles_Q4_0
                          : type == Q4_1 ? tiles_Q4_1
                          : type == Q8_0 ? tiles_Q8_0
                          : type == Q4_K ? tiles_Q4_K
                                         : tiles_Q6_K;
    for (int r = 0; r < mr; r += AR) {
        const int rows = mr - r < AR ? mr - r : AR;
        for (int h = 0; h < (cols > 8 ? 2 : 1); ++h)
            tiles[rows](panel, nb, xq + r * K, K, xd + r * nb, xs + r * nb * 2, out + r * ldo,
                        ldo, h, cols);
    }
}
