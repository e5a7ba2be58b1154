"""How far a quantized model's next-token distributions are from the float model's.

Both models read the same fixed text (`eval_text.txt`, shipped with the package: a few
thousand tokens of prose, dialogue, lists and code written for this purpose), in windows of
`window` tokens, each window one prefill through leaflm's own model runner, so every
position's full distribution is compared: mean KL(reference || candidate) in nats, the
share of positions where the two agree on the most likely token, and each model's
perplexity of the text. Reused by every quantization (`quantization="int8"`, GGUF blocks, a
float16 KV cache): `compare_runners` takes any two runners, `compare_quantization` builds them
by name.

`python -m leaflm.engine.quant_eval --quantization int8 [--kv-cache-dtype float16]` prints
the figures.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from leaflm.engine.config import EngineArgs
from leaflm.engine.forward_context import AttentionMetadata, ForwardContext
from leaflm.engine.model_runner import ModelRunner

TEXT_PATH = Path(__file__).with_name("eval_text.txt")
BLOCK = 16


@dataclass(frozen=True)
class Agreement:
    """Reference vs candidate over `positions` next-token predictions."""

    positions: int
    mean_kl: float  # nats, KL(reference || candidate) averaged over positions
    max_kl: float
    top1_agreement: float  # share of positions with the same argmax
    reference_ppl: float  # perplexity of the text's actual next tokens
    candidate_ppl: float


def eval_text() -> str:
    return TEXT_PATH.read_text(encoding="utf-8")


def load_runner(
    model: str | Path | None = None,
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
) -> tuple[ModelRunner, Any]:
    """A CPU float32 model runner (and its tokenizer) with the weight method `quantization`
    and a KV cache of `kv_cache_dtype`."""
    from leaflm.engine.engine_setup import load_model_config

    args = EngineArgs(
        model=model, device="cpu", dtype="float32", quantization=quantization,
        kv_cache_dtype=kv_cache_dtype,
    )  # fmt: skip
    config, tokenizer, _ = load_model_config(args)
    return ModelRunner(config), tokenizer


@torch.inference_mode()
def prompt_logits(runner: ModelRunner, token_ids: list[int]) -> torch.Tensor:
    """`[len(token_ids), V]` float32 logits of one sequence, run as a single prefill."""
    n = len(token_ids)
    num_blocks = -(-n // BLOCK)
    runner.init_kv_cache(num_blocks, BLOCK, 0)
    assert runner.kv is not None
    i32 = torch.int32
    meta = AttentionMetadata(
        slot_mapping=torch.arange(n),
        num_decode_tokens=0,
        decode_block_tables=torch.zeros(0, 1, dtype=i32),
        decode_seq_lens=torch.zeros(0, dtype=i32),
        num_prefill_tokens=n,
        prefill_block_tables=torch.arange(num_blocks, dtype=i32)[None],
        prefill_query_start_loc=torch.tensor([0, n], dtype=i32),
        prefill_seq_lens=torch.tensor([n], dtype=i32),
        max_prefill_query_len=n,
    )
    try:
        ids = torch.tensor(token_ids, dtype=torch.long)
        hidden = runner.model(ids, torch.arange(n), ForwardContext(meta, runner.kv.layers))
        return runner.model.compute_logits(hidden).float()
    finally:
        runner.kv = None


def windows(token_ids: list[int], window: int) -> list[list[int]]:
    """Consecutive, non-overlapping windows (the last one may be shorter, if > 1 token)."""
    chunks = [token_ids[i : i + window] for i in range(0, len(token_ids), window)]
    return [c for c in chunks if len(c) > 1]


@torch.inference_mode()
def compare_runners(
    reference: ModelRunner,
    candidate: ModelRunner,
    token_ids: list[int],
    window: int = 512,
    score_from: int = 0,
) -> Agreement:
    """Compare the two runners' next-token distributions at every position of `token_ids`.

    `score_from` > 0 scores only the predictions made at positions >= `score_from` of each
    window (llama.cpp's `llama-perplexity` scores the second half of each chunk: pass
    `window // 2` to compare at the same positions).
    """
    if not 0 <= score_from < window - 1:
        raise ValueError(f"score_from must be in [0, window - 1), got {score_from}")
    kl_sum, kl_max, agree, positions = 0.0, 0.0, 0, 0
    nll_ref, nll_cand = 0.0, 0.0
    for chunk in windows(token_ids, window):
        if len(chunk) - 1 <= score_from:
            continue
        ref = torch.log_softmax(prompt_logits(reference, chunk), dim=-1)[score_from:-1]
        cand = torch.log_softmax(prompt_logits(candidate, chunk), dim=-1)[score_from:-1]
        kl = (ref.exp() * (ref - cand)).sum(dim=-1)
        kl_sum += float(kl.sum())
        kl_max = max(kl_max, float(kl.max()))
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        nxt = torch.tensor(chunk[score_from + 1 :])[:, None]
        nll_ref -= float(ref.gather(1, nxt).sum())
        nll_cand -= float(cand.gather(1, nxt).sum())
        positions += len(chunk) - 1 - score_from
    if positions == 0:
        raise ValueError(f"no position to score: {len(token_ids)} tokens, window {window}")
    return Agreement(
        positions=positions,
        mean_kl=kl_sum / positions,
        max_kl=kl_max,
        top1_agreement=agree / positions,
        reference_ppl=float(torch.tensor(nll_ref / positions).exp()),
        candidate_ppl=float(torch.tensor(nll_cand / positions).exp()),
    )


def compare_quantization(
    quantization: str | None,
    model: str | Path | None = None,
    reference: str | None = None,
    max_tokens: int | None = None,
    window: int = 512,
    kv_cache_dtype: str = "auto",
) -> Agreement:
    """`quantization` with a `kv_cache_dtype` cache against `reference` (None: float32) with a
    float32 one, on the same model and the eval text."""
    ref_runner, tokenizer = load_runner(model, reference)
    cand_runner, _ = load_runner(model, quantization, kv_cache_dtype)
    ids = tokenizer(eval_text(), add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return compare_runners(ref_runner, cand_runner, ids, window)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quantization", default=None, help="the candidate's weight method")
    p.add_argument(
        "--kv-cache-dtype", default="auto", help="the candidate's KV cache (e.g. float16)"
    )
    p.add_argument("--reference", default=None, help="the reference's (default: float32)")
    p.add_argument("--model", default=None, help="model dir or .gguf (default: embedded)")
    p.add_argument("--max-tokens", type=int, default=None, help="only the text's first N")
    p.add_argument("--window", type=int, default=512, help="tokens per prefill window")
    a = p.parse_args(argv)
    result = compare_quantization(
        a.quantization, a.model, a.reference, a.max_tokens, a.window, a.kv_cache_dtype
    )
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
