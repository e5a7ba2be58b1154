/*
 * Exact logits near the top of an approximate LM head's rows.
 *
 * An int8 head (W8A8) moves each logit by up to ~1 on SmolLM2-135M, enough to swap the two
 * most likely tokens at ~3% of positions. Every entry within `margin` of its row's maximum
 * is recomputed here in float32 from the float weight: a handful a row (2.3 on average at a
 * margin of 1.0 on that model), so the greedy choice, the head of a top-k/top-p draw and the
 * logprobs that matter are those of the float head, for the int8 head's cost plus one pass
 * over the logits. If every logit is off by at most e, the float maximum lies within 2e of
 * the int8 one, so a margin >= 2e never misses it.
 */
#include <stdint.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "vec_math.h"

#define PARALLEL_MIN 262144

/* logits[r][j] = x[r] . w[j] (+ bias[j]) for every j with logits[r][j] >= max_j - margin.
 * x: [rows, dim] (x_stride apart); w: [vocab, dim] contiguous; logits: [rows, vocab]
 * (ld apart); bias: [vocab] or NULL. A row holding NaN is left as it is. */
void leaflm_rescore_near_max(
    const float *x, int64_t x_stride, const float *w, const float *bias, float *logits,
    int64_t ld, int64_t rows, int64_t vocab, int64_t dim, float margin, int num_threads
) {
#pragma omp parallel for num_threads(num_threads) if (rows * vocab >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; ++r) {
        float *v = logits + r * ld;
        const float *xr = x + r * x_stride;
        const float floor = row_max(v, vocab) - margin;
        if (floor != floor) continue; /* NaN: nothing to refine */
        int64_t j = 0;
#if defined(__AVX512F__)
        const __m512 f = _mm512_set1_ps(floor);
        for (; j + 16 <= vocab; j += 16) {
            __mmask16 near = _mm512_cmp_ps_mask(_mm512_loadu_ps(v + j), f, _CMP_GE_OQ);
            while (near) {
                const int64_t c = j + __builtin_ctz(near);
                near &= near - 1;
                v[c] = dot(xr, w + c * dim, dim) + (bias ? bias[c] : 0.0f);
            }
        }
#endif
        for (; j < vocab; ++j)
            if (v[j] >= floor) v[j] = dot(xr, w + j * dim, dim) + (bias ? bias[j] : 0.0f);
    }
}
