"""llama.cpp's own KL of the shipped Q4_1 file against its F32 copy, beside leaflm's.

The F32 GGUF is made from the Q4_1 file by `llama-quantize --allow-requantize`, so both
hold the same weights: llama.cpp's Q4_1 run differs from its F32 run only by quantizing the
activations of its block dot products (Q8_1 blocks against Q4_1 weights, Q8_0 against the
Q8_0 head), the same difference as leaflm's GGUF-on-blocks path against its dequantized
float32 path on that file. `llama-perplexity` first saves the F32 run's log-probabilities
(`--kl-divergence-base`), then reads them back in the Q4_1 run (`--kl-divergence`).

How `llama-perplexity` scores: the text is tokenized by llama.cpp's tokenizer, cut into
`ctx`-token non-overlapping chunks (a tail shorter than `ctx` is dropped, and the text must
hold at least two chunks), and only the predictions at positions `ctx/2 .. ctx-2` of each
chunk count, so every scored token has at least `ctx/2` tokens of context. The base's
log-probabilities are stored as 16-bit fixed point and tokens with log p < -16 are left out
of the KL sum (both change the figure far below its size here). leaflm's quant_eval scores
every position of its 512-token windows instead, so the report gives leaflm twice: its own
figure (`python -m leaflm.engine.quant_eval --quantization gguf`) and the figure on exactly
llama.cpp's tokens, chunks and scored positions (read back from the base file).

`leaflm bench kl` runs it and prints the figures side by side.
"""

from __future__ import annotations

import re
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from leaflm.bench.peers import llama_cpp, run_measured

DEFAULT_CTX = 512  # quant_eval's window: with it llama.cpp's chunks are quant_eval's windows


@dataclass(frozen=True)
class LlamaKL:
    """`llama-perplexity --kl-divergence` of the Q4_1 file against the F32 base."""

    chunks: int
    ctx: int
    positions: int  # scored predictions: chunks * (ctx - 1 - ctx // 2)
    mean_kl: float  # nats
    mean_kl_err: float  # its standard error, as llama.cpp prints it
    max_kl: float
    top1_agreement: float  # "Same top p": share of positions with the same argmax
    candidate_ppl: float  # PPL(Q)
    reference_ppl: float  # PPL(base)


def perplexity_command(
    model: Path, text_file: Path, ctx: int, base: Path, kl: bool, threads: int = 2
) -> list[str]:
    """`llama-perplexity` writing (`kl=False`) or comparing against (`kl=True`) `base`."""
    cmd = [
        str(llama_cpp.binary("llama-perplexity")),
        "-m", str(model),
        "-f", str(text_file),
        "-c", str(ctx),
        "-b", str(ctx),  # one chunk per batch: memory stays at one context
        "-t", str(threads),
        "--kl-divergence-base", str(base),
    ]  # fmt: skip
    return cmd + (["--kl-divergence"] if kl else [])


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"


def _find(pattern: str, text: str, what: str) -> re.Match[str]:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {what} in llama-perplexity output:\n{text[-2000:]}")
    return match


def parse_kl_output(text: str) -> LlamaKL:
    """The figures of a `llama-perplexity --kl-divergence` run; ValueError if one is missing."""
    run = _find(r"computing over (\d+) chunks, n_ctx=(\d+)", text, "chunk count")
    chunks, ctx = int(run.group(1)), int(run.group(2))
    kl = _find(rf"^Mean\s+KLD:\s+{_NUMBER}\s+±\s+{_NUMBER}", text, "mean KLD")
    max_kl = _find(rf"^Maximum KLD:\s+{_NUMBER}", text, "maximum KLD")
    top = _find(rf"^Same top p:\s+{_NUMBER}\s+±\s+{_NUMBER}\s*%", text, "'Same top p'")
    ppl_q = _find(rf"^Mean PPL\(Q\)\s+:\s+{_NUMBER}", text, "PPL(Q)")
    ppl_base = _find(rf"^Mean PPL\(base\)\s+:\s+{_NUMBER}", text, "PPL(base)")
    return LlamaKL(
        chunks=chunks,
        ctx=ctx,
        positions=chunks * (ctx - 1 - ctx // 2),
        mean_kl=float(kl.group(1)),
        mean_kl_err=float(kl.group(2)),
        max_kl=float(max_kl.group(1)),
        top1_agreement=float(top.group(1)) / 100.0,
        candidate_ppl=float(ppl_q.group(1)),
        reference_ppl=float(ppl_base.group(1)),
    )


def read_base_tokens(base: Path) -> tuple[int, list[list[int]]]:
    """(ctx, the chunks of token ids) that the base run scored, from its `.kld` file.

    The file starts with `_logits_`, then uint32 n_ctx, int32 n_vocab, int32 n_chunk and
    n_ctx * n_chunk int32 token ids (llama-perplexity's own layout).
    """
    with open(base, "rb") as f:
        if f.read(8) != b"_logits_":
            raise ValueError(f"{base} is not a llama-perplexity log-probability file")
        ctx, _vocab, chunks = struct.unpack("<Iii", f.read(12))
        raw = f.read(4 * ctx * chunks)
    if len(raw) != 4 * ctx * chunks:
        raise ValueError(f"{base} is truncated: {chunks} chunks of {ctx} tokens announced")
    ids = list(struct.unpack(f"<{ctx * chunks}i", raw))
    return ctx, [ids[i : i + ctx] for i in range(0, len(ids), ctx)]


def add_bos(model: Path) -> bool:
    """Whether llama.cpp puts BOS in place of each chunk's first token for this file."""
    from leaflm.engine.gguf.file import GGUFFile

    return bool(GGUFFile(model).get("tokenizer.ggml.add_bos_token", False))


def run_llama_kl(
    text_file: Path,
    workdir: Path,
    ctx: int = DEFAULT_CTX,
    threads: int = 2,
    timeout: float = 3600.0,
) -> tuple[LlamaKL, Path]:
    """Both `llama-perplexity` runs; returns the Q4_1 run's figures and the base file."""
    base = workdir / "f32-base.kld"
    f32 = llama_cpp.target_gguf("llama-cpp")
    q4 = llama_cpp.target_gguf("llama-cpp-q4")
    run_measured(
        perplexity_command(f32, text_file, ctx, base, kl=False, threads=threads),
        timeout=timeout,
        log_path=workdir / "perplexity-f32-base.log",
    )
    out, _rss = run_measured(
        perplexity_command(q4, text_file, ctx, base, kl=True, threads=threads),
        timeout=timeout,
        log_path=workdir / "perplexity-q4_1-kl.log",
    )
    return parse_kl_output(out), base


def leaflm_figures(base: Path | None, max_tokens: int | None = None) -> dict[str, Any]:
    """leaflm's GGUF-on-blocks against its dequantized float32 path on the shipped file.

    `quant_eval`: quant_eval's own windows and positions over the text (its first
    `max_tokens`); `llama_positions`: on llama.cpp's tokens, chunks and scored positions.
    """
    from leaflm.engine import quant_eval

    reference, tokenizer = quant_eval.load_runner(None, None)
    candidate, _ = quant_eval.load_runner(None, "gguf")
    ids = tokenizer(quant_eval.eval_text(), add_special_tokens=False)["input_ids"]
    ids = ids[:max_tokens] if max_tokens is not None else ids
    figures = {"quant_eval": asdict(quant_eval.compare_runners(reference, candidate, ids))}
    if base is not None:
        ctx, chunks = read_base_tokens(base)
        if add_bos(llama_cpp.target_gguf("llama-cpp-q4")):
            bos = tokenizer.bos_token_id
            chunks = [[bos, *c[1:]] for c in chunks]
        flat = [t for c in chunks for t in c]
        same = quant_eval.compare_runners(reference, candidate, flat, ctx, score_from=ctx // 2)
        figures["llama_positions"] = asdict(same)
    return figures


def text_slice(max_tokens: int | None) -> str:
    """The shipped evaluation text, or the decoded first `max_tokens` of it."""
    from leaflm.engine import quant_eval

    text = quant_eval.eval_text()
    if max_tokens is None:
        return text
    from transformers import AutoTokenizer

    from leaflm.bench.model_dir import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(None))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return str(tokenizer.decode(ids))


def compare(
    ctx: int = DEFAULT_CTX,
    threads: int = 2,
    max_tokens: int | None = None,
    with_leaflm: bool = True,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """llama.cpp's and (unless `with_leaflm` is False) leaflm's figures on the same text."""
    with tempfile.TemporaryDirectory(prefix="leaflm-llama-kl-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        text_file = work / "eval_text.txt"
        text_file.write_text(text_slice(max_tokens), encoding="utf-8")
        llama, base = run_llama_kl(text_file, work, ctx, threads)
        result: dict[str, Any] = {"llama_cpp": asdict(llama)}
        if with_leaflm:
            result["leaflm"] = leaflm_figures(base, max_tokens)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A markdown table of the figures `compare` returned."""
    rows = [("llama.cpp Q4_1 vs its F32 (`llama-perplexity --kl-divergence`)", result["llama_cpp"])]
    leaflm = result.get("leaflm", {})
    if "llama_positions" in leaflm:
        rows.append(("leaflm GGUF vs its fp32, llama.cpp's positions", leaflm["llama_positions"]))
    if "quant_eval" in leaflm:
        rows.append(("leaflm GGUF vs its fp32, quant_eval (every position)", leaflm["quant_eval"]))
    lines = [
        "| run | positions | mean KL (nats) | max KL | top-1 agreement | PPL ref / cand |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['positions']} | {r['mean_kl']:.5f} | {r['max_kl']:.4f} | "
            f"{100 * r['top1_agreement']:.2f}% | {r['reference_ppl']:.3f} / "
            f"{r['candidate_ppl']:.3f} |"
        )
    return "\n".join(lines)
