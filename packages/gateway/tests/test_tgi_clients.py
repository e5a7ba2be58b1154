"""The official TGI clients, unchanged: `text_generation.Client` (which indexes POST /'s
one-element list) and `huggingface_hub.InferenceClient.chat_completion` without a model."""

from __future__ import annotations

import pytest
from gateway_testenv import API_KEY

PROMPT = "The river runs"


@pytest.fixture(scope="module")
def tgi_client(server):
    from text_generation import Client

    return Client(server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)


def test_text_generation_client_generate(tgi_client):
    r = tgi_client.generate(PROMPT, max_new_tokens=6)
    assert r.generated_text and r.details.generated_tokens == len(r.details.tokens) <= 6
    assert r.details.seed is None  # greedy: no seed, as TGI reports it
    again = tgi_client.generate(PROMPT, max_new_tokens=6)
    assert again.generated_text == r.generated_text


def test_text_generation_client_best_of_reports_the_others_and_the_seed(tgi_client):
    r = tgi_client.generate(PROMPT, max_new_tokens=5, best_of=3, do_sample=True)
    others = r.details.best_of_sequences
    assert len(others) == 2
    seeds = {r.details.seed, *(seq.seed for seq in others)}
    assert len(seeds) == 3 and all(isinstance(s, int) for s in seeds)
    best = sum(t.logprob for t in r.details.tokens)
    for seq in others:
        assert seq.generated_tokens == len(seq.tokens)
        assert sum(t.logprob for t in seq.tokens) <= best + 1e-5
    sampled = tgi_client.generate(PROMPT, max_new_tokens=3, do_sample=True)
    assert isinstance(sampled.details.seed, int)  # chosen by the server and reported
    replay = tgi_client.generate(
        PROMPT, max_new_tokens=3, do_sample=True, seed=sampled.details.seed
    )
    assert replay.generated_text == sampled.generated_text


def test_text_generation_client_stream(tgi_client):
    tokens, final = [], None
    for event in tgi_client.generate_stream(PROMPT, max_new_tokens=5):
        tokens.append(event.token.text)
        final = event.generated_text or final
    assert final == "".join(tokens) and len(tokens) == 5


def test_inference_client_chat_completion_without_a_model(server):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=server.url, api_key=API_KEY)
    out = client.chat_completion(
        [{"role": "user", "content": "Say hi"}], max_tokens=5, temperature=0
    )
    assert out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens <= 5
