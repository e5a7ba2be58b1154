"""`quantization="int8"` in the engine: the C kernel path (AVX-512 VNNI or AVX2) equals the
PyTorch reference op's path on tiny random models of several architectures (merged QKV with
biases, gated MLPs, GPT-2's Conv1D, tied embeddings, ALiBi), TP=2 over the mp executor equals
TP=1, and bad names or devices are a ValueError naming the known methods."""

from __future__ import annotations

import contextlib

import pytest
import torch

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.executor.mp import WorkerPool
from leaflm.engine.layers.embedding import LMHead
from leaflm.engine.layers.int8_method import RESCORE_MARGIN, RescoredInt8Head
from leaflm.engine.layers.weight_method import known_quantizations
from leaflm.engine.testing import random_token_prompts
from leaflm.kernels.cpu import int8_gemm
from leaflm.kernels.cpu.int8_gemm import Int8Weight

MAX_NEW = 8
ARCHS = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),  # q/k/v biases
    "gemma3": ("gemma3", {}),
    "gpt2": ("gpt2", {}),  # Conv1D, tied head
    "gpt_neox": ("gpt_neox", {}),
    "bloom": ("bloom", {}),  # ALiBi, tied head
    "llama_tied_mlp_bias": ("llama", {"tie_word_embeddings": True, "mlp_bias": True}),
}
needs_kernel = pytest.mark.skipif(
    not int8_gemm.kernel_available(), reason="the int8 GEMM needs C kernels (VNNI or AVX2)"
)


@contextlib.contextmanager
def engine(model_dir, **kwargs):
    llm = LLM(str(model_dir), kv_cache_memory="4MiB", max_num_batched_tokens=24, **kwargs)
    try:
        yield llm
    finally:
        llm.shutdown()


def chosen(llm, prompts) -> list[tuple[list[int], list[float]]]:
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=1)
    result = []
    for out in llm.generate(prompts, params, use_tqdm=False):
        c = out.outputs[0]
        lps = [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids, strict=True)]
        result.append((list(c.token_ids), lps))
    return result


def assert_same(a, b, tol: float, flip_tol: float = 0.05, max_flipped: float = 0.0) -> None:
    """Same greedy ids; logprobs within `tol`, but for at most a `max_flipped` share within
    `flip_tol`: an input one float ulp off can round an activation to the next int8 step."""
    diffs = []
    for (ids1, lps1), (ids2, lps2) in zip(a, b, strict=True):
        assert ids2 == ids1
        diffs += [abs(x - y) for x, y in zip(lps1, lps2, strict=True)]
    print(f"logprob diffs: max {max(diffs):.2e}, over {tol}: {sum(d > tol for d in diffs)}")
    assert max(diffs) <= flip_tol
    assert sum(d > tol for d in diffs) <= max_flipped * len(diffs)


def _int8_layers(model) -> list:
    return [m for m in model.modules() if isinstance(getattr(m, "packed", None), Int8Weight)]


@needs_kernel
@pytest.mark.parametrize("case", list(ARCHS))
def test_int8_kernel_path_matches_reference_op_path(tiny_models, monkeypatch, case):
    arch, overrides = ARCHS[case]
    model_dir = tiny_models(arch, **overrides)
    prompts = random_token_prompts(4, vocab=380, lo=3, hi=40, seed=3)
    with engine(model_dir, quantization="int8_lm_head") as llm:
        model = llm.llm_engine.runner.model
        heads = [m for m in model.modules() if isinstance(m, LMHead)]
        assert heads and isinstance(heads[0].packed, Int8Weight)
        assert heads[0].packed.panel_width == int8_gemm.panel_width()
        gated = [m for m in model.modules() if getattr(m, "gated", False)]
        for m in gated:  # the SiLU gate runs in the kernel's epilogue unless the MLP has biases
            assert m.packed.gated == (m.bias is None)
        fast = chosen(llm, prompts)
    monkeypatch.setattr(int8_gemm, "panel_width", lambda: 0)  # plain int8 + reference op
    with engine(model_dir, quantization="int8_lm_head") as llm:
        layers = _int8_layers(llm.llm_engine.runner.model)
        assert layers and all(m.packed.panel_width == 0 for m in layers)
        reference = chosen(llm, prompts)
    assert_same(fast, reference, tol=1e-4)


@needs_kernel
@pytest.mark.parametrize("tied", [True, False])
def test_plain_int8_head_is_int8_and_exact_near_the_top(tiny_models, tied):
    """`"int8"`'s head multiplies in int8, then recomputes from the float weight, which it
    keeps (a tied one is the embedding's own table), every logit near its row's maximum."""
    with engine(tiny_models("llama", tie_word_embeddings=tied), quantization="int8") as llm:
        model = llm.llm_engine.runner.model
        head = model.lm_head
        assert isinstance(head.weight_method, RescoredInt8Head)
        assert isinstance(head.packed, Int8Weight)
        assert len(_int8_layers(model)) == 2 * 4 + 1  # qkv, o, gate_up, down of both layers
        weight = head.plain_weight()
        assert (weight is model.model.embed_tokens.weight) == tied
        x = torch.randn(6, weight.shape[1], generator=torch.Generator().manual_seed(0))
        got = head(x)
        exact = x @ weight.T
        approx = int8_gemm.int8_linear(x, head.packed)
        near = approx >= approx.max(dim=1, keepdim=True).values - RESCORE_MARGIN
        torch.testing.assert_close(got[near], exact[near], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got[~near], approx[~near])
        assert torch.equal(got.argmax(dim=1), exact.argmax(dim=1))
        assert not torch.allclose(got, exact, atol=1e-4)  # the tail stays int8


@needs_kernel
def test_int8_stays_close_to_float(tiny_models):
    """Not a copy of the float path, nor far from it (the accuracy harness on a tiny model)."""
    from leaflm.engine.quant_eval import compare_quantization

    model = tiny_models("llama")
    result = compare_quantization("int8_lm_head", model=model, max_tokens=600, window=256)
    assert result.positions == 600 - 3  # windows of 256, 256, 88: the last token has no next
    assert 0 < result.mean_kl < 0.01 and result.top1_agreement > 0.8


def test_the_load_log_names_the_int8_path(tiny_models, caplog):
    """Which tile runs (AVX-512 VNNI, AVX2 or the PyTorch reference) is in the load log."""
    import logging

    with caplog.at_level(logging.INFO, logger="leaflm.engine"):
        LLM(str(tiny_models("llama")), quantization="int8", kv_cache_memory="1MiB")
    line = next(r.getMessage() for r in caplog.records if "linear weights (" in r.getMessage())
    assert f"(int8, {int8_gemm.simd()})" in line, line


@pytest.fixture(scope="module")
def worker_pool():
    with WorkerPool(2) as pool:
        yield pool


@needs_kernel
@pytest.mark.parametrize(
    "case, quantization",
    [("llama", "int8_lm_head"), ("qwen2", "int8_lm_head"), ("gpt2", "int8_lm_head"),
     ("llama", "int8")],
)  # fmt: skip
def test_int8_tp2_matches_tp1(tiny_models, worker_pool, case, quantization):
    """Row-parallel shards scale by the whole row's max (all-reduced), so both ranks hold the
    unsharded weight's int8 values and TP=2 differs from TP=1 by summation order only; with
    `"int8"`'s rescored head, also by the rank without a row's maximum rescoring near its own
    (lower) maximum, so more of its tail is exact than at TP=1 (logprobs within ~2e-3)."""
    arch, overrides = ARCHS[case]
    model_dir = tiny_models(arch, **overrides)
    prompts = random_token_prompts(4, vocab=380, lo=3, hi=40, seed=11)
    with engine(model_dir, quantization=quantization) as llm:
        tp1 = chosen(llm, prompts)
    with engine(
        model_dir,
        quantization=quantization,
        tensor_parallel_size=2,
        distributed_executor_backend="mp",
    ) as llm:
        assert llm.llm_engine.runner is None  # the model ran in the workers
        tp2 = chosen(llm, prompts)
    tol = 5e-3 if quantization == "int8" else 1e-4
    assert_same(tp1, tp2, tol=tol, max_flipped=0.25)


def test_unknown_quantization_names_the_known_ones(tiny_models):
    assert {"int8", "int8_lm_head"} <= set(known_quantizations())
    with pytest.raises(ValueError, match=r"quantization must be None or one of \[.*'int8'"):
        LLM(str(tiny_models("llama")), quantization="bogus")


def test_int8_refuses_non_float32(tiny_models):
    with pytest.raises(ValueError, match="CPU in float32 only"):
        LLM(str(tiny_models("llama")), quantization="int8", dtype="bfloat16")
