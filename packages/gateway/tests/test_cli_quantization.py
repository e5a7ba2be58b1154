"""`leaflm serve --quantization`: the flag reaches the engine. A server started with
`--quantization int8` answers with the int8 engine's logprobs (not the float engine's), and
an unknown name stops `leaflm serve` at once with the known names."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from leaflm.engine.cli import build_parser
from leaflm.gateway.cli import engine_kwargs
from leaflm.gateway.server import free_port
from leaflm.kernels.cpu import int8_gemm


def test_flag_parses_into_engine_kwargs():
    args = build_parser().parse_args(["serve", "m", "--quantization", "int8"])
    assert engine_kwargs(args)["quantization"] == "int8"
    assert engine_kwargs(build_parser().parse_args(["serve"]))["quantization"] is None


def test_unknown_quantization_stops_serve_naming_the_known_ones(tiny_model_dir):
    cmd = [sys.executable, "-m", "leaflm.engine.cli", "serve", str(tiny_model_dir),
           "--port", str(free_port()), "--quantization", "bogus"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "quantization must be None or one of ['gguf', 'int8'" in proc.stderr


def _first_logprobs(text_out: dict) -> list[float]:
    return text_out["choices"][0]["logprobs"]["token_logprobs"]


@pytest.mark.skipif(not int8_gemm.kernel_available(), reason="needs the int8 kernel (VNNI or AVX2)")
def test_int8_server_answers_with_the_int8_engine(tiny_model_dir):
    from leaflm.engine import LLM, SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=0)
    expected = {}
    for quant in ("int8", None):
        llm = LLM(str(tiny_model_dir), kv_cache_memory="8MiB", quantization=quant)
        try:
            out = llm.generate(["a leaf"], params, use_tqdm=False)[0].outputs[0]
            pairs = zip(out.logprobs, out.token_ids, strict=True)
            expected[quant] = [lp[t].logprob for lp, t in pairs]
        finally:
            llm.shutdown()
    port = free_port()
    cmd = [sys.executable, "-m", "leaflm.gateway", str(tiny_model_dir), "--port", str(port),
           "--served-model-name", "q", "--kv-cache-memory", "8MiB", "--log-level", "warning",
           "--quantization", "int8"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        body = {"model": "q", "prompt": "a leaf", "max_tokens": 4, "temperature": 0,
                "logprobs": 0, "ignore_eos": True}  # fmt: skip
        got = _first_logprobs(httpx.post(url + "/v1/completions", json=body, timeout=60).json())
    finally:
        proc.terminate()
        proc.wait(30)
    assert got == pytest.approx(expected["int8"], abs=1e-4)
    assert max(abs(a - b) for a, b in zip(got, expected[None], strict=True)) > 1e-4
