"""The CI perf gate: leaflm must stay faster than HF by committed ratios, measured in-process.

A tiny random model (from `leaflm.engine.testing`, a little larger than the test default so
compute outweighs Python overhead) runs through leaflm, HF one-at-a-time and HF static
batches in the same process on the same prompts. Only ratios are compared, so the gate holds
on any machine; the thresholds in `gate_thresholds.toml` sit well below what was measured.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

THRESHOLDS_FILE = Path(__file__).with_name("gate_thresholds.toml")


def load_thresholds(path: str | Path | None = None) -> dict[str, Any]:
    """Read the gate config: `[model]`, `[workload]`, `[thresholds]` and optional `[engine]`."""
    path = Path(path) if path else THRESHOLDS_FILE
    if not path.is_file():
        raise ValueError(f"gate thresholds file {path} does not exist")
    with open(path, "rb") as f:
        config = tomllib.load(f)
    for table in ("model", "workload", "thresholds"):
        if not isinstance(config.get(table), dict):
            raise ValueError(f"gate thresholds file {path} has no [{table}] table")
    return config


def evaluate(ratios: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """Messages for every threshold not met (a missing ratio counts as not met)."""
    failures = []
    for name, need in thresholds.items():
        got = ratios.get(name)
        if got is None:
            failures.append(f"no measurement for {name} (threshold {need}×)")
        elif got < need:
            failures.append(f"leaflm / {name} = {got:.2f}× is below the threshold {need}×")
    return failures


def measure(config: dict[str, Any], workdir: str | Path | None = None) -> dict[str, float]:
    """Build the tiny model, run the three backends, return leaflm's speed-up over each."""
    from transformers import AutoTokenizer

    from leaflm.bench.offline import run_throughput, speedups
    from leaflm.bench.workload import random_workload
    from leaflm.engine.testing import build_tiny_model

    wl = config["workload"]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", **config["model"])
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        requests = random_workload(
            tokenizer, wl["num_requests"], wl["input_len"], wl["output_len"], seed=wl.get("seed", 0)
        )
        results = run_throughput(
            requests, model_dir, ["leaflm", "hf-single", "hf-static"], device="cpu",
            subsets={"hf-single": wl["hf_single_requests"]}, batch_size=wl["batch_size"],
            engine_kwargs=config.get("engine"), log=lambda _msg: None,
        )  # fmt: skip
    return speedups(results)
