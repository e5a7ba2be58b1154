"""Accuracy of int8 on the embedded default model (SmolLM2-135M-Instruct), measured against
float32 over the shipped evaluation text (3275 tokens, every position's full next-token
distribution; `leaflm.engine.quant_eval`).

Targets: mean KL <= 0.02 nats and top-1 agreement >= 95%. `"int8"` (the LM head int8 too,
its near-top logits recomputed in float32) measured 0.0060 nats / 95.6% and is held to both
(with the head left float32 it was 0.0049 / 95.6%). `"int8_lm_head"` measured 0.0070 nats /
94.2%: it misses the top-1 target, so its floor here is 93.5%. (Weight-only int8, with the
activations left float32, measured 95.7%: the flips are at positions where the float
model's top two tokens nearly tie.)

A float16 KV cache alone measured 3.5e-7 nats / 99.97% (one position of 3268 flipped), and
with `"int8"` 0.0061 nats / 95.56%: held to 1e-5 nats / 99.5% and to int8's targets.
"""

from __future__ import annotations

import pytest

from leaflm.engine.quant_eval import compare_quantization
from leaflm.kernels.cpu import int8_gemm

MAX_MEAN_KL = 0.02
MIN_TOP1 = {"int8": 0.95, "int8_lm_head": 0.935}


@pytest.mark.skipif(not int8_gemm.kernel_available(), reason="needs the int8 kernel (VNNI or AVX2)")
@pytest.mark.parametrize(
    ("quantization", "kv_cache_dtype"),
    [*((q, "auto") for q in MIN_TOP1), ("int8", "float16")],
)
def test_int8_next_token_distributions_stay_close_to_float32(quantization, kv_cache_dtype):
    result = compare_quantization(quantization, kv_cache_dtype=kv_cache_dtype)
    print(result)
    assert result.positions > 3000
    assert result.mean_kl <= MAX_MEAN_KL
    assert result.top1_agreement >= MIN_TOP1[quantization]
    assert result.candidate_ppl < 1.05 * result.reference_ppl


def test_a_float16_kv_cache_barely_moves_the_float32_model():
    result = compare_quantization(None, kv_cache_dtype="float16")
    print(result)
    assert result.positions > 3000
    assert result.mean_kl <= 1e-5
    assert result.top1_agreement >= 0.995
