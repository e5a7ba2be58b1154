/*
 * Paged attention for float32 CPU tensors: each query row against its context, read in place
 * from the paged KV cache (no gathered copy of the context, which cost the PyTorch reference
 * three passes over the whole KV cache per layer).
 *
 * One routine serves decode and prefill: a row is one query token; `row_table[r]` names its
 * sequence's row of `block_tables` and `row_ctx[r]` how many keys it sees (its position + 1),
 * so a prefill token is a decode query with a shorter context. Semantics are those of
 * leaflm.kernels.reference.attention (ALiBi, sliding window, softcap); rows that see no key
 * get zeros.
 *
 * A work item is one row and a range of KV heads: all KV heads when there are enough rows to
 * keep every thread busy (then each token's keys, [num_kv, head_dim], are read as one
 * contiguous run), one KV head otherwise (single-sequence decode). Scores are kept for the
 * whole context, so K and V are each read exactly once: scores, softmax, weighted sum of V.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec_math.h"

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
}

typedef struct {
    const float *k_cache, *v_cache;
    int64_t num_heads, num_kv, head_dim, block_size;
    const float *alibi;
    int64_t window;
    float softcap;
} Layout;

/* Query heads [h0, h1) (KV heads h0/group .. (h1-1)/group) of one row. Always inlined into
 * per-head_dim wrappers below, so the common sizes get fixed-length, fully unrolled loops. */
static inline __attribute__((always_inline)) void attend_row(
    const Layout *L, const float *restrict q /* [heads, D], pre-scaled */,
    const int32_t *restrict table, int64_t ctx, int64_t h0, int64_t h1,
    float *restrict scores /* [heads, ctx] */, float *restrict out /* [heads, D] */,
    const int64_t D
) {
    const int64_t bs = L->block_size, group = L->num_heads / L->num_kv;
    const int64_t token_stride = L->num_kv * D, heads = h1 - h0;
    const int64_t lo = (L->window > 0 && ctx > L->window) ? ctx - L->window : 0;
    const int64_t n = ctx - lo;
    if (n <= 0) {
        memset(out, 0, sizeof(float) * heads * D);
        return;
    }
    for (int64_t b = lo / bs; b * bs < ctx; ++b) {
        const int64_t start = b * bs > lo ? b * bs : lo;
        const int64_t stop = (b + 1) * bs < ctx ? (b + 1) * bs : ctx;
        const float *base = L->k_cache + (int64_t)table[b] * bs * token_stride;
        for (int64_t j = start; j < stop; ++j) {
            const float *k = base + (j - b * bs) * token_stride;
            for (int64_t h = 0; h < heads; ++h)
                scores[h * n + (j - lo)] = dot(q + h * D, k + ((h0 + h) / group) * D, D);
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
    memset(out, 0, sizeof(float) * heads * D);
    for (int64_t b = lo / bs; b * bs < ctx; ++b) {
        const int64_t start = b * bs > lo ? b * bs : lo;
        const int64_t stop = (b + 1) * bs < ctx ? (b + 1) * bs : ctx;
        const float *base = L->v_cache + (int64_t)table[b] * bs * token_stride;
        for (int64_t j = start; j < stop; ++j) {
            const float *v = base + (j - b * bs) * token_stride;
            for (int64_t h = 0; h < heads; ++h) {
                const float p = scores[h * n + (j - lo)];
                const float *vh = v + ((h0 + h) / group) * D;
                float *o = out + h * D;
#pragma omp simd
                for (int64_t d = 0; d < D; ++d) o[d] += p * vh[d];
            }
        }
    }
}

#define ATTEND_ROW_FOR(DIM)                                                                    \
    static void attend_row_##DIM(                                                              \
        const Layout *L, const float *q, const int32_t *table, int64_t ctx, int64_t h0,          \
        int64_t h1, float *scores, float *out                                                  \
    ) {                                                                                        \
        attend_row(L, q, table, ctx, h0, h1, scores, out, DIM);                                \
    }
ATTEND_ROW_FOR(64)
ATTEND_ROW_FOR(128)

static void attend_row_any(
    const Layout *L, const float *q, const int32_t *table, int64_t ctx, int64_t h0, int64_t h1,
    float *scores, float *out
) {
    attend_row(L, q, table, ctx, h0, h1, scores, out, L->head_dim);
}

/*
 * q: [rows, num_heads, head_dim] with rows q_stride elements apart; out: the same, contiguous;
 * k_cache, v_cache: [blocks, block_size, num_kv, head_dim]; block_tables: [*, table_stride];
 * row_table (NULL: row r uses table row r), row_ctx: [rows]; alibi: [num_heads] or NULL; window <= 0 and softcap <= 0
 * disable those. All float32/int32, contiguous.
 */
void leaflm_paged_attention(
    const float *q, int64_t q_stride, const float *k_cache, const float *v_cache,
    const int32_t *block_tables, int64_t table_stride,
    const int32_t *row_table, const int32_t *row_ctx, float *out,
    int64_t rows, int64_t num_heads, int64_t num_kv, int64_t head_dim, int64_t block_size,
    float scale, const float *alibi, int64_t window, float softcap, int num_threads
) {
    const Layout L = {k_cache, v_cache, num_heads, num_kv, head_dim, block_size,
                      alibi,   window,  softcap};
    const int64_t group = num_heads / num_kv;
    /* Split rows by KV head only when rows alone cannot keep the threads busy. */
    const int64_t splits = rows >= 4 * (int64_t)num_threads ? 1 : num_kv;
    const int64_t heads_per_item = num_heads / splits;
    int64_t max_ctx = 1;
    for (int64_t r = 0; r < rows; ++r) max_ctx = row_ctx[r] > max_ctx ? row_ctx[r] : max_ctx;
    (void)group;
    void (*attend)(const Layout *, const float *, const int32_t *, int64_t, int64_t, int64_t,
                   float *, float *) =
        head_dim == 64 ? attend_row_64 : head_dim == 128 ? attend_row_128 : attend_row_any;
#pragma omp parallel num_threads(num_threads)
    {
        float *scores = malloc(sizeof(float) * heads_per_item * max_ctx);
        float *qs = malloc(sizeof(float) * heads_per_item * head_dim);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < rows * splits; ++item) {
            const int64_t r = item / splits, h0 = (item % splits) * heads_per_item;
            const float *qrow = q + r * q_stride + h0 * head_dim;
            for (int64_t i = 0; i < heads_per_item * head_dim; ++i) qs[i] = qrow[i] * scale;
            attend(
                &L, qs, block_tables + (row_table ? row_table[r] : r) * table_stride, row_ctx[r], h0,
                h0 + heads_per_item, scores, out + (r * num_heads + h0) * head_dim
            );
        }
        free(scores);
        free(qs);
    }
}

/* Scatter key/value [tokens, num_kv * head_dim] (rows *_stride apart) into the caches'
 * slots; slot -1 skips a token (padding). */
void leaflm_write_kv(
    const float *key, int64_t key_stride, const float *value, int64_t value_stride,
    float *k_cache, float *v_cache, const int64_t *slots, int64_t tokens, int64_t width
) {
    for (int64_t t = 0; t < tokens; ++t) {
        if (slots[t] < 0) continue;
        memcpy(k_cache + slots[t] * width, key + t * key_stride, sizeof(float) * width);
        memcpy(v_cache + slots[t] * width, value + t * value_stride, sizeof(float) * width);
    }
}
