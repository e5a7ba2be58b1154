"""The official openai SDK, unchanged, against a real server; its pydantic types validate
every response, and greedy text must equal the offline engine's on the same prompt."""

from __future__ import annotations

import pytest
from gateway_testenv import MODEL_NAME

PROMPT = "The model reads a token"


@pytest.fixture(scope="module")
def offline(tiny_model_dir):
    from leaflm.engine import LLM

    return LLM(str(tiny_model_dir), kv_cache_memory="8MiB", max_model_len=256)


def test_models_list(openai_client):
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].object == "model"


def _ids(logprobs) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in logprobs]


def _visible(tokenizer, ids: list[int]) -> str:
    """What incremental detokenization shows: a trailing partial UTF-8 char is held back."""
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


@pytest.mark.parametrize("prompt", [PROMPT, "one two three four five"])
def test_greedy_completion_equals_offline_generate(openai_client, offline, prompt):
    from leaflm.engine import SamplingParams

    ref = offline.generate([prompt], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    r = openai_client.completions.create(
        model=MODEL_NAME,
        prompt=prompt,
        max_tokens=12,
        temperature=0,
        logprobs=0,
        extra_body={"return_tokens_as_token_ids": True},
    )
    assert r.object == "text_completion"
    ref_ids = ref[0].outputs[0].token_ids
    assert _ids(r.choices[0].logprobs.tokens) == ref_ids
    assert r.choices[0].text == _visible(offline.get_tokenizer(), ref_ids)
    assert r.choices[0].finish_reason == ref[0].outputs[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(ref[0].prompt_token_ids)
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_greedy_chat_equals_offline_chat(openai_client, offline):
    from leaflm.engine import SamplingParams

    messages = [{"role": "user", "content": "Which leaf falls first?"}]
    ref = offline.chat(messages, SamplingParams(temperature=0, max_tokens=10), use_tqdm=False)
    r = openai_client.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=10,
        temperature=0,
        logprobs=True,
        extra_body={"return_tokens_as_token_ids": True},
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    ref_ids = ref[0].outputs[0].token_ids
    assert _ids(e.token for e in r.choices[0].logprobs.content) == ref_ids
    assert r.choices[0].message.content == _visible(offline.get_tokenizer(), ref_ids)
    assert r.usage.prompt_tokens == len(ref[0].prompt_token_ids)


def test_completion_stream_with_usage_matches_non_stream(openai_client):
    kwargs = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    full = openai_client.completions.create(**kwargs)
    chunks = list(
        openai_client.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_role_first_and_usage(openai_client):
    kwargs = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    full = openai_client.chat.completions.create(**kwargs)
    chunks = list(
        openai_client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_n2_completions_and_chat(openai_client):
    r = openai_client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=6, n=2, temperature=1.0, seed=3
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 12
    chat = openai_client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "two answers"}],
        max_tokens=5,
        n=2,
        temperature=1.0,
    )
    assert sorted(c.index for c in chat.choices) == [0, 1]
    stream = openai_client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=5, n=2, stream=True, temperature=0
    )
    texts = {0: "", 1: ""}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts[0] == texts[1] != ""  # greedy: both completions agree


def test_multiple_prompts_number_choices_per_prompt(openai_client):
    r = openai_client.completions.create(
        model=MODEL_NAME, prompt=[PROMPT, "a green leaf"], max_tokens=4, n=2, temperature=0
    )
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in r.choices}
    assert by_index[0] == by_index[1] and by_index[2] == by_index[3]


def test_completion_logprobs(openai_client):
    r = openai_client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen <= 0 and 1 <= len(top) <= 3
        assert chosen == pytest.approx(max(top.values()))  # greedy picks the top token
    assert lp.text_offset == sorted(lp.text_offset)


def test_completion_echo_with_logprobs(openai_client):
    r = openai_client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1
    )
    assert r.choices[0].text.startswith(PROMPT)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None  # the first prompt token has no logprob
    assert len(lp.tokens) == r.usage.prompt_tokens + 3


def test_chat_logprobs(openai_client):
    r = openai_client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_stop_string_finishes_with_stop(openai_client):
    full = openai_client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0
    ).choices[0]
    stop = full.text[3:6]
    assert stop.strip(), "the tiny model's greedy text is too short for this test"
    r = openai_client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop]
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full.text[: full.text.index(stop)]
