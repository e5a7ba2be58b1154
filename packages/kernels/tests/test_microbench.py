"""The GPU microbenchmark's pure parts, and its whole code path as a CPU dry run."""

from __future__ import annotations

import json
import os

import pytest

from leaflm.kernels.benchmarks import gpu_microbench as mb


def test_decode_bytes_counts_kv_and_q_out():
    # 1 seq, 2 tokens, 1 kv head, d4, bf16: K+V = 2*2*4*2 = 32 B; q+out with 2 heads = 2*2*4*2 = 32 B
    assert mb.decode_bytes(1, 2, 2, 1, 4, 2) == 64
    full = mb.Sizes.full()
    kv = mb.decode_bytes(full.batch, full.context, full.q_heads, full.kv_heads, full.head_dim, 2)
    assert kv == 2 * 64 * 2048 * 8 * 128 * 2 + 2 * 64 * 32 * 128 * 2


def test_causal_flops_counts_visible_pairs():
    # lengths 1 and 3: 1 + 6 visible (q, k) pairs; 4 FLOPs per pair per head-dim element
    assert mb.causal_attention_flops([1, 3], heads=2, head_dim=8) == 4 * 7 * 2 * 8


def test_markdown_has_provenance_and_verdicts():
    rep = mb.Report("H100", "2.11", "3.6", "3.12", "python -m x --out d", False)
    rep.rows = [
        mb.Row("decode / copy bandwidth", 75.0, "%", ">= 70%", True),
        mb.Row("x", 1.0, "ms"),
    ]
    text = mb.render_markdown(rep)
    assert "H100" in text and "`python -m x --out d`" in text and "triton 3.6" in text
    assert "| decode / copy bandwidth | 75 | % | >= 70% | yes |" in text
    assert "DRY RUN" not in text


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="dry run needs the interpreter"
)
def test_dry_run_writes_table_and_json(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert mb.main(["--dry-run", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "kernels.md").read_text()
    data = json.loads((tmp_path / "kernels.json").read_text())
    assert "DRY RUN" in md and data["dry_run"] is True
    metrics = {r["metric"]: r["value"] for r in data["rows"]}
    assert {"paged decode attention", "paged prefill attention", "fused sampler speedup"} <= set(
        metrics
    )
    assert all(v > 0 for v in metrics.values())
