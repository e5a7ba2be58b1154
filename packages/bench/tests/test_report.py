"""The report builder on a small synthetic result set: files, tables, target verdicts."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from leaflm.bench.metrics import OfflineResult, RequestRecord, summarize
from leaflm.bench.report import check_targets, offline_table, serving_table, write_report


def _records(
    ttft: float, gap: float, n: int, spacing: float, tokens: int = 8
) -> list[RequestRecord]:
    out = []
    for i in range(n):
        start = i * spacing
        itl = [gap] * (tokens - 1)
        out.append(RequestRecord(start, start + ttft + sum(itl), True, 16, tokens, ttft, itl))
    return out


def _results() -> dict:
    offline = [
        OfflineResult("leaflm", 64, 8192, 8192, 40.0, 900.0),  # 204.8 tok/s
        OfflineResult("hf-single", 8, 1024, 1024, 100.0, 700.0, "first 8 of 64 requests"),
        OfflineResult("hf-static", 64, 8192, 8192, 80.0, 1500.0, "batch 32"),  # 102.4 -> 2.0x
        OfflineResult("hf-cb", 64, 8192, 8192, 100.0, 1200.0),  # 81.92 -> 2.5x: missed
    ]
    serving, raw = [], {}
    for target, ttft, gap, spacing in (("leaflm", 0.05, 0.01, 0.1), ("hf-serve", 0.5, 0.04, 1.0)):
        raw[target] = {}
        for users in (1, 16):
            recs = _records(ttft * users**0.5, gap, users * 2, spacing)
            row = {"target": target, "concurrency": users, "planned": users * 2, "unfinished": 0,
                   "timed_out": False, **summarize(recs, slo={"ttft": 1.0})}  # fmt: skip
            serving.append(row)
            raw[target][str(users)] = [r.to_dict() for r in recs]
    return {
        "title": "synthetic",
        "command": "leaflm bench report --name synthetic",
        "machine": {"cpu": "Test CPU", "logical_cores": 2, "torch": "2.x"},
        "config": {"num_prompts": 64},
        "offline": [r.to_dict() for r in offline],
        "serving": serving,
        "serving_raw": raw,
        "problems": ["naive: could not start"],
    }


def test_offline_table_has_speedups_in_order():
    results = [OfflineResult.from_dict(d) for d in _results()["offline"]]
    table = offline_table(results)
    assert list(table["backend"]) == ["leaflm", "hf-single", "hf-static", "hf-cb"]
    assert table["output tok/s"].tolist() == pytest.approx([204.8, 10.24, 102.4, 81.92])
    assert table["leaflm speed-up"].tolist() == pytest.approx([1.0, 20.0, 2.0, 2.5])
    assert table["note"][1] == "first 8 of 64 requests"


def test_target_verdicts_name_what_was_missed():
    res = _results()
    checks = {c.name: c for c in check_targets(
        [OfflineResult.from_dict(d) for d in res["offline"]], res["serving"])}  # fmt: skip
    assert checks["offline vs hf-single"].status == "met"
    assert checks["offline vs hf-static"].status == "met"  # exactly 2.0x
    assert checks["offline vs hf-cb"].status == "MISSED"
    assert checks["serving throughput @16 users"].status == "met"
    assert checks["serving p50 TTFT @16 users"].status == "met"
    assert check_targets([], [])[0].status == "not measured"


def test_write_report_produces_tables_csvs_and_readable_pngs(tmp_path):
    path = write_report(_results(), tmp_path / "synthetic")
    out = path.parent
    for name in ("report.md", "results.json", "offline.csv", "serving.csv",
                 "offline_throughput.png", "throughput_vs_concurrency.png",
                 "latency_vs_concurrency.png", "ttft_cdf.png"):  # fmt: skip
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        width, height = Image.open(png).size
        assert width >= 800 and height >= 400
    text = path.read_text()
    assert "leaflm bench report --name synthetic" in text and "Test CPU" in text
    assert "| offline vs hf-cb | leaflm offline output tok/s ≥ 3× hf-cb | 2.50×" in text
    assert "**Missed:** offline vs hf-cb" in text
    assert "problem: naive: could not start" in text
    assert "![TTFT CDF](ttft_cdf.png)" in text
    rows = list(csv.DictReader((out / "serving.csv").open()))
    assert {(r["target"], r["concurrency"]) for r in rows} == {
        ("leaflm", "1"), ("leaflm", "16"), ("hf-serve", "1"), ("hf-serve", "16")}  # fmt: skip
    table = serving_table(_results()["serving"])
    at16 = table[table["users"] == 16].set_index("target")
    expected = at16.loc["leaflm", "out tok/s"] / at16.loc["hf-serve", "out tok/s"]
    assert at16.loc["hf-serve", "leaflm out-tok ratio"] == pytest.approx(expected)
    assert json.loads((out / "results.json").read_text())["title"] == "synthetic"


def test_every_cpu_race_backend_has_a_colour_of_its_own():
    from matplotlib.colors import to_hex

    from leaflm.bench.plots import _color

    names = ["leaflm", "leaflm-int8", "leaflm-gguf", "vllm-cpu", "llama-cpp", "llama-cpp-q4"]
    colours = [to_hex(_color(n, i)) for i, n in enumerate(names)]
    assert len(set(colours)) == len(names)
    leaflm_green = to_hex("C2")  # matplotlib's green reads as leaflm's: unknown names skip it
    assert all(to_hex(_color(f"other-{i}", i)) != leaflm_green for i in range(20))
