"""lm-evaluation-harness's loglikelihood multiple-choice task (the shipped local `leaflm_mc`)
on the default model served in float32 and with `--quantization int8`, one server at a time
on 127.0.0.1. int8 must pick the same answer as float32 on at least 7 of the 8 questions and
score no lower, and each choice's loglikelihood (a sum over its tokens) must stay within 0.6
nats of float32's. Measured: accuracy 0.625 for both, |Δ loglik| max 0.51, mean 0.15.
"""

from __future__ import annotations

import asyncio

import pytest
from test_lm_eval_harness import MODEL_NAME, completions_lm, evaluate, model_dir, offline

from leaflm.kernels.cpu import int8_gemm

__all__ = ["model_dir", "offline"]  # fixtures shared with the float32 harness test
MAX_LOGLIK_DELTA = 0.6


def _run(model_dir, quantization):
    from leaflm.engine import AsyncLLM
    from leaflm.gateway.server import ServerThread
    from leaflm.gateway.settings import GatewaySettings

    llm = AsyncLLM(str(model_dir), device="cpu", dtype="float32", kv_cache_memory="64MiB",
                   max_model_len=512, seed=0, quantization=quantization)  # fmt: skip
    try:
        with ServerThread(llm, GatewaySettings(served_model_name=MODEL_NAME)) as srv:
            return evaluate(completions_lm(srv.url, model_dir, batch_size=4), "leaflm_mc")
    finally:
        asyncio.run(llm.shutdown())


@pytest.mark.skipif(not int8_gemm.kernel_available(), reason="needs the int8 kernel (VNNI or AVX2)")
def test_int8_multiple_choice_accuracy_matches_float32(model_dir):
    (acc_f, samples_f), (acc_q, samples_q) = (_run(model_dir, q) for q in (None, "int8"))
    deltas = [
        abs(rf[0][0] - rq[0][0])
        for sf, sq in zip(samples_f, samples_q, strict=True)
        for rf, rq in zip(sf["resps"], sq["resps"], strict=True)
    ]
    print(f"leaflm_mc acc: float32 {acc_f:.3f}, int8 {acc_q:.3f}; "
          f"|Δ loglik| max {max(deltas):.3f}, mean {sum(deltas) / len(deltas):.3f}")  # fmt: skip
    assert len(samples_q) == len(samples_f) == 8
    picks = [
        [max(range(len(s["resps"])), key=lambda i, s=s: s["resps"][i][0][0]) for s in samples]
        for samples in (samples_f, samples_q)
    ]
    assert sum(a == b for a, b in zip(*picks, strict=True)) >= 7, picks
    assert acc_q >= acc_f
    assert max(deltas) <= MAX_LOGLIK_DELTA
