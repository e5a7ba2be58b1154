"""Small decode steps replayed from CPU graphs give exactly the eager forward's results.

Replay makes the same kernel calls on the same inputs, so token ids and logprobs must be
bit-identical to `LEAFLM_CPU_GRAPHS=0`, while the batch shrinks step by step (each padded
size has its own graph; padding rows must not disturb the real ones or the cache) and
contexts cross block boundaries (the block tables grow between replays).
"""

from __future__ import annotations

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.cpu_graphs import GRAPHS_VAR, MAX_GRAPH_BATCH
from leaflm.engine.testing import random_token_prompts
from leaflm.kernels.cpu import library

if library() is None:
    pytest.skip("CPU graphs record C kernel calls: no C kernels here", allow_module_level=True)


def _generate(model_dir, prompts, lengths, kv_cache_dtype="auto"):
    llm = LLM(str(model_dir), kv_cache_memory="8MiB", block_size=16, kv_cache_dtype=kv_cache_dtype)
    params = [
        SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=2) for n in lengths
    ]
    outs = llm.generate(prompts, params, use_tqdm=False)
    result = [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs]
    return result, llm.llm_engine.runner.graphs, llm


@pytest.mark.parametrize(
    ("arch", "kv_cache_dtype"),
    [("llama", "auto"), ("mistral", "auto"), ("qwen2", "auto"), ("llama", "float16")],
)
def test_graph_replay_equals_eager(tiny_models, monkeypatch, assert_no_leaks, arch, kv_cache_dtype):
    model_dir = tiny_models(arch)
    prompts = random_token_prompts(4, vocab=380, lo=3, hi=30, seed=3)
    # The batch shrinks 4 -> 3 -> 2 -> 1 as requests finish; 3 runs padded in the 4-graph.
    lengths = [40, 25, 10, 33]
    monkeypatch.setenv(GRAPHS_VAR, "0")
    eager, off, _ = _generate(model_dir, prompts, lengths, kv_cache_dtype)
    assert off.disabled == f"{GRAPHS_VAR}=0" and not off.steps
    monkeypatch.setenv(GRAPHS_VAR, "1")
    replayed, graphs, llm = _generate(model_dir, prompts, lengths, kv_cache_dtype)
    assert graphs.disabled is None, graphs.disabled
    assert sorted(graphs.steps) == [1, 2, 4]  # one graph per padded decode batch size
    assert all(s.graph is not None and s.graph.calls for s in graphs.steps.values())
    assert replayed == eager  # ids and every logprob, exactly
    assert_no_leaks(llm)


def test_a_forward_with_torch_ops_runs_eagerly(tiny_models, monkeypatch):
    """GPT-2 adds learned positions with a torch op: recording refuses it, and the model
    runs eagerly with the same results."""
    model_dir = tiny_models("gpt2")
    prompts = random_token_prompts(2, vocab=380, lo=3, hi=12, seed=4)
    monkeypatch.setenv(GRAPHS_VAR, "0")
    eager, _, _ = _generate(model_dir, prompts, [8, 8])
    monkeypatch.setenv(GRAPHS_VAR, "1")
    got, graphs, _ = _generate(model_dir, prompts, [8, 8])
    assert graphs.disabled is not None and "cannot be recorded" in graphs.disabled
    assert not graphs.steps
    assert got == eager


def test_large_batches_are_not_captured(tiny_models):
    n = MAX_GRAPH_BATCH + 2
    prompts = random_token_prompts(n, vocab=380, lo=3, hi=8, seed=5)
    _, graphs, _ = _generate(tiny_models("llama"), prompts, [4] * n)
    assert graphs.disabled is None and graphs.steps == {}


@pytest.fixture(scope="module")
def tied_q4_1_gguf(tmp_path_factory):
    """A tiny tied llama as a GGUF file: Q4_1 layers, a Q8_0 table (its LM head too)."""
    import gguf

    from leaflm.engine.testing import build_tiny_model, write_tiny_gguf

    q = gguf.GGMLQuantizationType
    root = tmp_path_factory.mktemp("graph-gguf")
    hf = build_tiny_model(root / "hf", "llama", tie_word_embeddings=True, seed=1)
    parts = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    qtypes = {f"blk.{i}.{p}.weight": q.Q4_1 for i in range(2) for p in parts}
    return write_tiny_gguf(hf, root / "tied.gguf", qtypes={**qtypes, "token_embd.weight": q.Q8_0})


@pytest.mark.parametrize("quantization", ["int8", "gguf"])
def test_quantized_weight_methods_replay_too(
    tiny_models, tied_q4_1_gguf, tmp_path, monkeypatch, quantization
):
    """The int8 and GGUF kernels are kernel calls too, and the GGUF table's row lookup rides
    in the graph as a python step: both capture, and replay equals eager exactly."""
    from leaflm.kernels.cpu import gguf_gemm, int8_gemm

    if not (gguf_gemm.available() if quantization == "gguf" else int8_gemm.kernel_available()):
        pytest.skip(f"no {quantization} kernel here")
    monkeypatch.setenv("LEAFLM_CACHE_DIR", str(tmp_path))  # the GGUF's converted float copy
    model = tied_q4_1_gguf if quantization == "gguf" else tiny_models("llama")
    prompts = random_token_prompts(3, vocab=380, lo=3, hi=20, seed=6)
    lengths = [20, 12, 5]

    def run(graphs: str):
        monkeypatch.setenv(GRAPHS_VAR, graphs)
        llm = LLM(str(model), kv_cache_memory="8MiB", quantization=quantization)
        params = [
            SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, logprobs=2)
            for n in lengths
        ]
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs], llm

    eager, _ = run("0")
    replayed, llm = run("1")
    graphs = llm.llm_engine.runner.graphs
    assert graphs.disabled is None, graphs.disabled
    assert sorted(graphs.steps) == [1, 2, 4]
    assert replayed == eager
