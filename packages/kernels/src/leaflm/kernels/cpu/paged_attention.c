/*
 * Paged attention for float32 queries on CPU: each query row against its context, read in place
 * from the paged KV cache (no gathered copy of the context, which cost the PyTorch reference
 * three passes over the whole KV cache per layer).
 *
 * One routine serves decode and prefill: a row is one query token; `row_table[r]` names its
 * sequence's row of `block_tables` and `row_ctx[r]` how many keys it sees (its position + 1),
 * so a prefill token is a decode query with a shorter context. Semantics are those of
 * leaflm.kernels.reference.attention (ALiBi, sliding window, softcap); rows that see no key
 * get zeros.
 *
 * A work item is one row (or, when rows are too few to share among the threads, one KV head
 * of a row) with all its query heads; each KV head serves its group of query heads (GQA).
 * Scores are kept for the whole context, so K and V are each read once: scores, softmax,
 * weighted sum of V.
 *
 * The cache holds float32 or IEEE half (`kv_cache_dtype="float16"`: half the bytes decode
 * attention streams); every function that reads it takes the element kind `H` as a constant,
 * so each kind gets its own unrolled code, and halves are widened to float as they load.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "attention_vec.h"
#include "vec_math.h"

enum { F32 = 0, F16 = 1 }; /* the cache's element kind */

static inline int64_t elt_size(const int H) { return H == F16 ? 2 : 4; }


/* A cache row of n elements of kind H as floats: the row itself, or widened into buf. */
static inline const float *widen(const void *row, float *restrict buf, int64_t n, const int H) {
    if (H == F32) return (const float *)row;
    const uint16_t *h = (const uint16_t *)row;
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; ++i) buf[i] = half_to_float(h[i]);
    return buf;
}

/* Scores of `count` consecutive keys (rows `stride` elements apart) against a D-float query,
 * into s[0..count). With vectors (attention_vec.h) and D a multiple of their width, ATT_VL
 * keys at a time: ATT_VL accumulators reduced together by a transpose-and-add tree.
 * `readable` rows (>= count) may be read: a block's slots past the context are allocated, so a
 * short last group still runs whole and stores only its first scores (whatever those slots
 * hold is never used). */
static inline __attribute__((always_inline)) void scores_of(
    const float *restrict q, const char *restrict k, int64_t stride, int64_t count,
    int64_t readable, float *restrict s, const int64_t D, const int H
) {
    const int64_t row_bytes = stride * elt_size(H);
    int64_t t = 0;
#if defined(ATT_VL)
    if (D % ATT_VL == 0)
        for (; t < count && t + ATT_VL <= readable; t += ATT_VL) {
            vfloat acc[ATT_VL];
            for (int i = 0; i < ATT_VL; ++i) acc[i] = v_zero();
            for (int64_t d = 0; d < D; d += ATT_VL) {
                const vfloat qv = v_load(q + d);
                for (int i = 0; i < ATT_VL; ++i)
                    acc[i] = v_fma(qv, v_load_kind(k + (t + i) * row_bytes, d, H), acc[i]);
            }
            v_store_first(s + t, v_sum_lanes(acc), count - t);
        }
#endif
    float buf[H == F16 ? D : 1];
    for (; t < count; ++t) s[t] = dot(q, widen(k + t * row_bytes, buf, D, H), D);
}

typedef struct {
    const char *k_cache, *v_cache;
    int64_t num_heads, num_kv, head_dim, block_size;
    const float *alibi;
    int64_t window;
    float softcap;
    int prefetch; /* decode rows: each reads a context no other row has brought in */
} Layout;

/* The first key position a query with `ctx` keys sees (a sliding window hides older ones). */
static inline int64_t window_start(int64_t ctx, int64_t window) {
    return (window > 0 && ctx > window) ? ctx - window : 0;
}

/* The cache row (all KV heads, `row_bytes` long) of context position `pos`. */
static inline const char *token_row(
    const char *cache, const int32_t *table, int64_t pos, int64_t bs, int64_t row_bytes
) {
    return cache + ((int64_t)table[pos / bs] * bs + pos % bs) * row_bytes;
}

/* Positions [*start, *stop) of block `b` that fall inside [lo, ctx). */
static inline void block_span(int64_t b, int64_t bs, int64_t lo, int64_t ctx, int64_t *start,
                              int64_t *stop) {
    *start = b * bs > lo ? b * bs : lo;
    *stop = (b + 1) * bs < ctx ? (b + 1) * bs : ctx;
}

/* `width` bytes at byte `offset` of a block's rows, to be prefetched into L2 ahead of use: blocks
 * sit at random places, so the hardware prefetcher cannot see the next one coming. Asked for a
 * few lines at a time between pieces of work: a burst of hundreds of prefetches fills the
 * core's miss buffers and stalls it until memory answers, while paced ones keep memory busy
 * under the arithmetic. */
typedef struct {
    const char *base;
    int64_t stride_bytes, per_row, rows; /* rows of `per_row` lines, `stride_bytes` apart */
    int64_t row, line;                   /* the next line to ask for */
} Prefetcher;

static inline Prefetcher prefetcher_for(
    const char *cache, int32_t block, int64_t bs, int64_t row_bytes, int64_t offset,
    int64_t width, int64_t rows
) {
    Prefetcher p = {cache + (int64_t)block * bs * row_bytes + offset, row_bytes,
                    (width + 63) / 64, rows, 0, 0};
    return p;
}

static inline int64_t prefetch_size(const Prefetcher *p) { return p->per_row * p->rows; }

static inline void prefetch_lines(Prefetcher *p, int64_t lines) {
    for (; lines > 0 && p->row < p->rows; --lines) {
        __builtin_prefetch(p->base + p->row * p->stride_bytes + p->line * 64, 0, 2);
        if (++p->line == p->per_row) {
            p->line = 0;
            ++p->row;
        }
    }
}

/* out[h] = sum_j p[h][j] * v_j for the `hb` query heads (scores `n` apart) that share KV
 * head `g`, all their accumulators in registers: each value row is loaded once for hb heads
 * (HB and D are constants once inlined, so the loops unroll into fixed registers). */
static inline __attribute__((always_inline)) void weigh_values_block(
    const Layout *L, const int32_t *restrict table, int64_t lo, int64_t ctx, int64_t g,
    const float *restrict p, int64_t n, float *restrict out, const int64_t HB, const int64_t D,
    const int H
) {
    const int64_t bs = L->block_size, row_bytes = L->num_kv * D * elt_size(H);
    const int64_t head_bytes = g * D * elt_size(H);
#if defined(ATT_VL)
    if (D % ATT_VL == 0 && HB * (D / ATT_VL) <= ATT_MAX_ACC) {
        const int64_t nv = D / ATT_VL;
        vfloat acc[ATT_MAX_ACC];
        for (int64_t i = 0; i < HB * nv; ++i) acc[i] = v_zero();
        for (int64_t b = lo / bs; b * bs < ctx; ++b) {
            int64_t start, stop;
            block_span(b, bs, lo, ctx, &start, &stop);
            const char *v = token_row(L->v_cache, table, start, bs, row_bytes) + head_bytes;
            for (int64_t j = start - lo; j < stop - lo; ++j, v += row_bytes)
                for (int64_t h = 0; h < HB; ++h) {
                    const vfloat pj = v_set1(p[h * n + j]);
                    for (int64_t c = 0; c < nv; ++c)
                        acc[h * nv + c] = v_fma(pj, v_load_kind(v, ATT_VL * c, H), acc[h * nv + c]);
                }
        }
        for (int64_t h = 0; h < HB; ++h)
            for (int64_t c = 0; c < nv; ++c) v_store(out + h * D + ATT_VL * c, acc[h * nv + c]);
        return;
    }
#endif
    memset(out, 0, sizeof(float) * HB * D);
    for (int64_t b = lo / bs; b * bs < ctx; ++b) {
        int64_t start, stop;
        block_span(b, bs, lo, ctx, &start, &stop);
        const char *v = token_row(L->v_cache, table, start, bs, row_bytes) + head_bytes;
        float buf[H == F16 ? D : 1];
        for (int64_t j = start - lo; j < stop - lo; ++j, v += row_bytes) {
            const float *vf = widen(v, buf, D, H);
            for (int64_t h = 0; h < HB; ++h) {
                const float pj = p[h * n + j];
                float *o = out + h * D;
#pragma omp simd
                for (int64_t d = 0; d < D; ++d) o[d] += pj * vf[d];
            }
        }
    }
}

/* The G query heads of KV head `g`, in register-sized groups of heads. */
static inline __attribute__((always_inline)) void weigh_values(
    const Layout *L, const int32_t *restrict table, int64_t lo, int64_t ctx, int64_t g,
    const float *restrict p, int64_t n, int64_t G, float *restrict out, const int64_t D,
    const int H
) {
#if defined(ATT_VL)
    const int64_t fit = D % ATT_VL == 0 ? ATT_MAX_ACC / (D / ATT_VL) : (D <= 64 ? 4 : D <= 128 ? 2 : 1);
    const int64_t per_group = fit < 1 ? 1 : fit > 4 ? 4 : fit; /* heads whose sums fit registers */
#else
    const int64_t per_group = D <= 64 ? 4 : D <= 128 ? 2 : 1;
#endif
    for (int64_t h = 0; h < G; h += per_group) {
        const int64_t hb = G - h < per_group ? G - h : per_group;
        const float *ph = p + h * n;
        float *oh = out + h * D;
        switch (hb) {
        case 4: weigh_values_block(L, table, lo, ctx, g, ph, n, oh, 4, D, H); break;
        case 3: weigh_values_block(L, table, lo, ctx, g, ph, n, oh, 3, D, H); break;
        case 2: weigh_values_block(L, table, lo, ctx, g, ph, n, oh, 2, D, H); break;
        default: weigh_values_block(L, table, lo, ctx, g, ph, n, oh, 1, D, H); break;
        }
    }
}

/* KV heads [k0, k1) of one row, each with its G query heads (heads k0*G .. k1*G-1). Keys,
 * then values, are read block by block for all those heads at once (one contiguous run per
 * token); for decode rows, the next key block and this block's values are prefetched into L2
 * a few lines per head while the scores are computed, so the values pass finds them there.
 * Always inlined into per-head_dim wrappers, so the common sizes get fixed-length loops. */
static inline __attribute__((always_inline)) void attend_heads(
    const Layout *L, const float *restrict q /* [(k1-k0)*G, D], pre-scaled */,
    const int32_t *restrict table, int64_t ctx, int64_t k0, int64_t k1,
    float *restrict scores /* [(k1-k0)*G, ctx] */, float *restrict out /* like q */,
    const int64_t D, const int H
) {
    const int64_t bs = L->block_size, token_stride = L->num_kv * D, E = elt_size(H);
    const int64_t row_bytes = token_stride * E;
    const int64_t G = L->num_heads / L->num_kv;
    const int64_t heads = (k1 - k0) * G, h0 = k0 * G;
    const int64_t lo = window_start(ctx, L->window), n = ctx - lo;
    if (n <= 0) {
        memset(out, 0, sizeof(float) * heads * D);
        return;
    }
    for (int64_t b = lo / bs; b * bs < ctx; ++b) {
        int64_t start, stop;
        block_span(b, bs, lo, ctx, &start, &stop);
        const char *k = token_row(L->k_cache, table, start, bs, row_bytes);
        Prefetcher next_k = {0}, this_v = {0};
        if (L->prefetch && (b + 1) * bs < ctx) {
            const int64_t rows = ctx - (b + 1) * bs < bs ? ctx - (b + 1) * bs : bs;
            next_k = prefetcher_for(L->k_cache, table[b + 1], bs, row_bytes, k0 * D * E,
                                    (k1 - k0) * D * E, rows);
        }
        if (L->prefetch)
            this_v = prefetcher_for(L->v_cache, table[b], bs, row_bytes, k0 * D * E,
                                    (k1 - k0) * D * E, stop - b * bs);
        const int64_t k_step = (prefetch_size(&next_k) + heads - 1) / heads;
        const int64_t v_step = (prefetch_size(&this_v) + heads - 1) / heads;
        for (int64_t h = 0; h < heads; ++h) {
            prefetch_lines(&next_k, k_step);
            prefetch_lines(&this_v, v_step);
            scores_of(
                q + h * D, k + (k0 + h / G) * D * E, token_stride, stop - start,
                (b + 1) * bs - start, scores + h * n + (start - lo), D, H
            );
        }
    }
    for (int64_t h = 0; h < heads; ++h) {
        float *s = scores + h * n;
        if (L->softcap > 0.0f || L->alibi) {
            const float slope = L->alibi ? L->alibi[h0 + h] : 0.0f;
            for (int64_t i = 0; i < n; ++i) {
                float x = s[i];
                if (L->softcap > 0.0f) x = L->softcap * tanhf(x / L->softcap);
                s[i] = x + slope * (float)(lo + i - (ctx - 1));
            }
        }
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (int64_t i = 0; i < n; ++i) m = s[i] > m ? s[i] : m;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; ++i) {
            s[i] = exp_clamped(s[i] - m);
            sum += s[i];
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) s[i] *= inv;
    }
    for (int64_t g = k0; g < k1; ++g)
        weigh_values(L, table, lo, ctx, g, scores + (g - k0) * G * n, n, G,
                     out + (g - k0) * G * D, D, H);
}

typedef void (*AttendFn)(const Layout *, const float *, const int32_t *, int64_t, int64_t,
                         int64_t, float *, float *);

/* One wrapper per (head_dim, element kind); DIM 0 is any head_dim, read from the layout. */
#define ATTEND_FOR(DIM, KIND)                                                                  \
    static void attend_##DIM##_##KIND(                                                         \
        const Layout *L, const float *q, const int32_t *table, int64_t ctx, int64_t k0,          \
        int64_t k1, float *scores, float *out                                                  \
    ) {                                                                                        \
        attend_heads(L, q, table, ctx, k0, k1, scores, out, DIM ? DIM : L->head_dim, KIND);    \
    }
ATTEND_FOR(64, F32)
ATTEND_FOR(128, F32)
ATTEND_FOR(0, F32)
ATTEND_FOR(64, F16)
ATTEND_FOR(128, F16)
ATTEND_FOR(0, F16)

static AttendFn attend_for(int64_t head_dim, int half) {
    if (half) return head_dim == 64 ? attend_64_F16 : head_dim == 128 ? attend_128_F16 : attend_0_F16;
    return head_dim == 64 ? attend_64_F32 : head_dim == 128 ? attend_128_F32 : attend_0_F32;
}

/*
 * q: [rows, num_heads, head_dim] with rows q_stride elements apart; out: the same, contiguous;
 * k_cache, v_cache: [blocks, block_size, num_kv, head_dim], float32 or (cache_half) IEEE
 * half; block_tables: [*, table_stride];
 * row_table (NULL: row r uses table row r), row_ctx: [rows]; alibi: [num_heads] or NULL;
 * window <= 0 and softcap <= 0 disable those. The rest float32/int32, contiguous.
 */
void leaflm_paged_attention(
    const float *q, int64_t q_stride, const void *k_cache, const void *v_cache, int cache_half,
    const int32_t *block_tables, int64_t table_stride,
    const int32_t *row_table, const int32_t *row_ctx, float *out,
    int64_t rows, int64_t num_heads, int64_t num_kv, int64_t head_dim, int64_t block_size,
    float scale, const float *alibi, int64_t window, float softcap, int num_threads
) {
    const Layout L = {k_cache, v_cache, num_heads, num_kv,  head_dim,
                      block_size, alibi, window, softcap, row_table == NULL};
    const int64_t group = num_heads / num_kv, E = elt_size(cache_half ? F16 : F32);
    const AttendFn attend = attend_for(head_dim, cache_half);
    int64_t max_ctx = 1, work = 0;
    for (int64_t r = 0; r < rows; ++r) {
        max_ctx = row_ctx[r] > max_ctx ? row_ctx[r] : max_ctx;
        work += row_ctx[r];
    }
    /* A thread's wake-up costs about what 64k multiply-adds do: small calls stay on one. A
     * single row (batch-1 decode) splits its few heads only from 1M (~1.8k tokens for 9 heads
     * of 64): at 136 tokens a call took 31 us on two threads and 17 on one (Zen 5 VM); where
     * two threads start to pay off was not measured. */
    const int64_t min_work = rows == 1 ? (1 << 20) : 65536;
    const int threads = work * num_heads * head_dim >= min_work ? num_threads : 1;
    /* Whole rows per work item, unless there are too few rows to share among the threads. */
    const int64_t kv_per_item = rows >= 2 * (int64_t)threads ? num_kv : 1;
    const int64_t per_row = num_kv / kv_per_item, items = rows * per_row;
#pragma omp parallel num_threads(threads)
    {
        float *scores = malloc(sizeof(float) * kv_per_item * group * max_ctx);
        float *qs = malloc(sizeof(float) * kv_per_item * group * head_dim);
        const int64_t team = omp_get_num_threads();
        /* Static round-robin, so a thread knows its next item and can ask for that item's
         * first key block while it works on this one. */
#pragma omp for schedule(static, 1)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t r = item / per_row, k0 = (item % per_row) * kv_per_item;
            const int64_t next = item + team, rn = next / per_row;
            if (L.prefetch && next < items && row_ctx[rn] > 0) {
                const int32_t *tn = block_tables + (row_table ? row_table[rn] : rn) * table_stride;
                const int64_t first_block = window_start(row_ctx[rn], window) / block_size;
                Prefetcher first = prefetcher_for(
                    L.k_cache, tn[first_block], block_size, num_kv * head_dim * E,
                    (next % per_row) * kv_per_item * head_dim * E, kv_per_item * head_dim * E,
                    block_size
                );
                prefetch_lines(&first, prefetch_size(&first)); /* all at once: nothing to pace */
            }
            const float *qg = q + r * q_stride + k0 * group * head_dim;
            for (int64_t i = 0; i < kv_per_item * group * head_dim; ++i) qs[i] = qg[i] * scale;
            attend(
                &L, qs, block_tables + (row_table ? row_table[r] : r) * table_stride, row_ctx[r],
                k0, k0 + kv_per_item, scores, out + (r * num_heads + k0 * group) * head_dim
            );
        }
        free(scores);
        free(qs);
    }
}

/* float32 row -> half row, rounded to nearest even. */
static void to_half(uint16_t *restrict dst, const float *restrict src, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}

/* Scatter float32 key/value [tokens, num_kv * head_dim] (rows *_stride apart) into the
 * caches' slots (float32, or IEEE half with cache_half); slot -1 skips a token (padding). */
void leaflm_write_kv(
    const float *key, int64_t key_stride, const float *value, int64_t value_stride,
    void *k_cache, void *v_cache, int cache_half, const int64_t *slots, int64_t tokens,
    int64_t width
) {
    for (int64_t t = 0; t < tokens; ++t) {
        if (slots[t] < 0) continue;
        if (cache_half) {
            to_half((uint16_t *)k_cache + slots[t] * width, key + t * key_stride, width);
            to_half((uint16_t *)v_cache + slots[t] * width, value + t * value_stride, width);
        } else {
            memcpy((float *)k_cache + slots[t] * width, key + t * key_stride, 4 * width);
            memcpy((float *)v_cache + slots[t] * width, value + t * value_stride, 4 * width);
        }
    }
}
