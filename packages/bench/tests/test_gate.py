"""The CI perf gate: a real tiny same-process run must clear the committed thresholds, and
the gate must fail when a ratio falls below one."""

from __future__ import annotations

import pytest

from leaflm.bench.cli import add_bench_command  # noqa: F401  (the entry point must import)
from leaflm.bench.gate import THRESHOLDS_FILE, evaluate, load_thresholds, measure


@pytest.fixture(scope="module")
def measured():
    config = load_thresholds()
    return config, measure(config)


def test_leaflm_clears_the_committed_thresholds(measured):
    config, ratios = measured
    assert set(ratios) == set(config["thresholds"]) == {"hf-single", "hf-static"}
    assert evaluate(ratios, config["thresholds"]) == [], ratios


def test_gate_fails_on_a_planted_low_ratio(measured):
    config, ratios = measured
    planted = {**ratios, "hf-static": config["thresholds"]["hf-static"] * 0.5}
    failures = evaluate(planted, config["thresholds"])
    assert len(failures) == 1 and "hf-static" in failures[0] and "below" in failures[0]
    # and a threshold above what this machine measures fails the real measurement too
    raised = {name: ratio * 1.5 for name, ratio in ratios.items()}
    assert len(evaluate(ratios, raised)) == 2
    assert evaluate({}, {"hf-single": 1.0}) == ["no measurement for hf-single (threshold 1.0×)"]


def test_gate_cli_exit_code_follows_the_thresholds_file(tmp_path, monkeypatch, capsys):
    from leaflm.bench import gate
    from leaflm.engine.cli import main

    text = THRESHOLDS_FILE.read_text().replace("hf-static = ", "hf-static = 1000 + ")
    strict = tmp_path / "strict.toml"
    strict.write_text(text.replace("1000 + ", "1000.0 #"))
    monkeypatch.setattr(gate, "measure", lambda config: {"hf-single": 99.0, "hf-static": 5.0})
    assert main(["bench", "gate"]) == 0
    assert main(["bench", "gate", "--thresholds", str(strict)]) == 1
    assert "gate FAILED: leaflm / hf-static = 5.00×" in capsys.readouterr().out
    assert main(["bench", "gate", "--thresholds", str(tmp_path / "none.toml")]) == 2
