"""The TGI surface through huggingface_hub's InferenceClient (streamed and not, with
details), raw TGI shapes checked with jsonschema, and TGI's finish reasons."""

from __future__ import annotations

import httpx
import jsonschema
import pytest
from gateway_testenv import API_KEY

PROMPT = "The river runs"

TOKEN = {
    "type": "object",
    "required": ["id", "text", "logprob", "special"],
    "properties": {
        "id": {"type": "integer"},
        "text": {"type": "string"},
        "logprob": {"type": "number", "maximum": 0},
        "special": {"type": "boolean"},
    },
}
FINISH = {"enum": ["length", "eos_token", "stop_sequence"]}
GENERATE_SCHEMA = {
    "type": "object",
    "required": ["generated_text", "details"],
    "properties": {
        "generated_text": {"type": "string"},
        "details": {
            "type": "object",
            "required": ["finish_reason", "generated_tokens", "prefill", "tokens"],
            "properties": {
                "finish_reason": FINISH,
                "generated_tokens": {"type": "integer", "minimum": 1},
                "tokens": {"type": "array", "items": TOKEN},
            },
        },
    },
}
STREAM_SCHEMA = {
    "type": "object",
    "required": ["index", "token", "generated_text", "details"],
    "properties": {
        "index": {"type": "integer"},
        "token": TOKEN,
        "generated_text": {"type": ["string", "null"]},
        "details": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["finish_reason", "generated_tokens", "input_length"],
                    "properties": {"finish_reason": FINISH},
                },
            ]
        },
    },
}


@pytest.fixture(scope="module")
def hf(server):
    from huggingface_hub import InferenceClient

    return InferenceClient(server.url, api_key=API_KEY)


def test_inference_client_stream_with_details(hf):
    events = list(hf.text_generation(PROMPT, max_new_tokens=8, stream=True, details=True))
    assert len(events) == 8
    assert [e.index for e in events] == list(range(8))
    assert all(e.details is None for e in events[:-1])
    last = events[-1]
    assert last.details.finish_reason == "length"
    assert last.details.generated_tokens == 8
    assert last.generated_text == "".join(e.token.text for e in events)
    full = hf.text_generation(PROMPT, max_new_tokens=8, details=True)
    assert [t.id for t in full.details.tokens] == [e.token.id for e in events]
    assert full.generated_text == last.generated_text


def test_inference_client_plain_and_sampling_values(hf):
    text = hf.text_generation(PROMPT, max_new_tokens=6)
    assert isinstance(text, str) and text
    # TGI clients send near-greedy sampling values; they must be accepted.
    sampled = hf.text_generation(
        PROMPT, max_new_tokens=6, temperature=0.01, top_p=0.99, top_k=10, seed=1, details=True
    )
    assert sampled.details.generated_tokens == 6
    assert sampled.details.seed == 1


def test_generate_schema_prefill_and_full_text(server, auth):
    body = {
        "inputs": PROMPT,
        "parameters": {
            "max_new_tokens": 5,
            "details": True,
            "decoder_input_details": True,
            "return_full_text": True,
            "top_n_tokens": 2,
        },
    }
    r = httpx.post(server.url + "/generate", json=body, headers=auth)
    assert r.status_code == 200, r.text
    data = r.json()
    jsonschema.validate(data, GENERATE_SCHEMA)
    assert data["generated_text"].startswith(PROMPT)
    prefill = data["details"]["prefill"]
    assert prefill[0]["logprob"] is None and all(p["logprob"] <= 0 for p in prefill[1:])
    assert all(len(top) == 2 for top in data["details"]["top_tokens"])


def test_generate_stream_schema(server, auth):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4}}
    with httpx.stream("POST", server.url + "/generate_stream", json=body, headers=auth) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert len(events) == 4
    import json

    for line in events:
        assert line.startswith("data:")
        jsonschema.validate(json.loads(line[5:]), STREAM_SCHEMA)


def test_stop_sequence_finish_reason(hf):
    full = hf.text_generation(PROMPT, max_new_tokens=12, details=True)
    stop = full.generated_text[4:7]
    assert stop.strip(), "greedy text too short for a stop sequence"
    r = hf.text_generation(PROMPT, max_new_tokens=12, details=True, stop=[stop])
    assert r.details.finish_reason == "stop_sequence"
    assert r.generated_text == full.generated_text[: full.generated_text.index(stop)]


def test_info(server):
    info = httpx.get(server.url + "/info").json()
    assert info["max_total_tokens"] == 256
    assert info["model_pipeline_tag"] == "text-generation"


def test_validation_error_in_tgi_shape(hf, server, auth):
    from huggingface_hub.errors import ValidationError

    with pytest.raises(ValidationError, match="max_new_tokens"):
        hf.text_generation(PROMPT, max_new_tokens=100_000)
    r = httpx.post(server.url + "/generate", json={"inputs": PROMPT, "parameters": {"temperature": -1}}, headers=auth)  # fmt: skip
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation" and "temperature" in r.json()["error"]
