"""Operational routes: /metrics after traffic, tokenize/detokenize round trip, version."""

from __future__ import annotations

import httpx
from gateway_testenv import MODEL_NAME

from leaflm.client.bodies import parse_metrics


def test_metrics_count_tokens_and_latencies(server, auth):
    before = parse_metrics(httpx.get(server.url + "/metrics").text)
    body = {"model": MODEL_NAME, "prompt": "one two three", "max_tokens": 5, "temperature": 0}
    r = httpx.post(server.url + "/v1/completions", json=body, headers=auth).json()
    after = parse_metrics(httpx.get(server.url + "/metrics").text)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert grew("leaflm:prompt_tokens_total") == r["usage"]["prompt_tokens"]
    assert grew("leaflm:generation_tokens_total") == 5
    assert grew("leaflm:time_to_first_token_seconds_count") == 1
    assert grew("leaflm:inter_token_latency_seconds_count") == 4
    assert grew("leaflm:e2e_request_latency_seconds_count") == 1
    assert grew('leaflm:request_success_total{finished_reason="length"}') == 1
    assert after["leaflm:kv_cache_blocks_total"] > 0
    assert 0.0 <= after["leaflm:prefix_cache_hit_rate"] <= 1.0


def test_tokenize_detokenize_round_trip(server, auth, engine):
    text = "The quiet river runs"
    r = httpx.post(server.url + "/tokenize", json={"prompt": text}, headers=auth).json()
    assert r["tokens"] == engine.get_tokenizer().encode(text)
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 256
    back = httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}, headers=auth)
    assert back.json() == {"prompt": text}
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    ids = httpx.post(server.url + "/tokenize", json=chat, headers=auth).json()["tokens"]
    assert engine.get_tokenizer().decode(ids).endswith("<|im_start|>assistant\n")


def test_version_and_model_card(server, auth):
    from leaflm.gateway import __version__

    assert httpx.get(server.url + "/version").json()["version"] == __version__
    card = httpx.get(f"{server.url}/v1/models/{MODEL_NAME}", headers=auth).json()
    assert card["id"] == MODEL_NAME and card["max_model_len"] == 256


def test_message_names_reach_the_chat_template(server, auth, engine):
    tok = engine.get_tokenizer()
    saved = tok.chat_template
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}{% if m['name'] is defined %}({{ m['name'] }})"
        "{% endif %}: {{ m['content'] }}\n{% endfor %}"
    )
    try:
        chat = {"messages": [{"role": "user", "name": "ann", "content": "hi"},
                             {"role": "user", "content": "yo"}],
                "add_generation_prompt": False}  # fmt: skip
        ids = httpx.post(server.url + "/tokenize", json=chat, headers=auth).json()["tokens"]
    finally:
        tok.chat_template = saved
    assert ids == tok.encode("user(ann): hi\nuser: yo\n", add_special_tokens=False)
