"""Detokenization, stop strings/tokens, min_tokens, deltas and chat templates."""

from __future__ import annotations

import pytest

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.config import EngineArgs
from leaflm.engine.detokenizer import IncrementalDetokenizer
from leaflm.engine.engine import LLMEngine
from leaflm.engine.testing import random_token_prompts


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


PROMPT = "The model reads the cache and the kernel writes"


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), kv_cache_memory="4MiB")


@pytest.fixture(scope="module")
def reference(llm):
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    return llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]


def test_incremental_detokenizer_never_emits_broken_utf8(llm):
    tok = llm.get_tokenizer()
    text = "héllo 東京 数据 🙂 🌿 naïve straße café über"
    # One token per byte: every non-ASCII character spans several tokens.
    byte_char = _byte_level_alphabet()
    ids = [tok.convert_tokens_to_ids(byte_char[b]) for b in text.encode()]
    assert tok.unk_token_id not in ids
    detok = IncrementalDetokenizer(tok, tok.encode("Hello"), skip_special_tokens=True)
    pieces = []
    for t in ids:
        piece = detok.step([t])
        assert "\ufffd" not in piece
        pieces.append(piece)
    assert sum(1 for p in pieces if p == "") > 5  # bytes were held back
    assert "".join(pieces) + detok.flush() == text


def test_stop_string_spanning_tokens(llm, reference):
    text = reference.text
    assert len(text) > 12
    start = len(llm.get_tokenizer().decode(reference.token_ids[:3]))
    stop = text[start - 2 : start + 2]  # crosses the boundary between tokens 3 and 4
    cut = text.find(stop)
    params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop=[stop, "\x00"])
    out = llm.generate(PROMPT, params, use_tqdm=False)[0].outputs[0]
    assert out.text == text[:cut]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert reference.token_ids[: len(out.token_ids)] == out.token_ids


def test_stop_string_with_delta_outputs(llama_dir, reference):
    engine = LLMEngine(EngineArgs(model=str(llama_dir), kv_cache_memory="4MiB"))
    text = reference.text
    stop = text[8:11]
    cut = text.find(stop)
    params = SamplingParams(
        temperature=0.0, max_tokens=30, ignore_eos=True, stop=stop, output_kind="delta"
    )
    engine.add_request("d", PROMPT, params)
    pieces, finished = [], None
    while engine.has_unfinished():
        for out in engine.step():
            pieces.append(out.outputs[0].text if out.outputs else "")
            finished = out
    assert "".join(pieces) == text[:cut]
    assert finished.finished and finished.outputs[0].finish_reason == "stop"
    assert engine.block_manager.all_free()


def test_stop_token_ids_and_min_tokens(llm, reference):
    ids = reference.token_ids
    k = 4
    target = ids[k]
    first = ids.index(target)
    out = llm.generate(
        PROMPT,
        SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, stop_token_ids=[target]),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.token_ids == ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == target
    assert out.text == llm.get_tokenizer().decode(ids[:first])
    out = llm.generate(
        PROMPT,
        SamplingParams(
            temperature=0.0, max_tokens=30, stop_token_ids=[ids[0]], min_tokens=2, ignore_eos=True
        ),
        use_tqdm=False,
    )[0].outputs[0]
    assert len(out.token_ids) >= 2 and out.token_ids == ids[: len(out.token_ids)]
    out = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=5), use_tqdm=False)
    assert out[0].outputs[0].finish_reason in ("length", "stop")


def test_eos_stops_unless_ignored(llm):
    tok = llm.get_tokenizer()
    eos = tok.eos_token_id
    prompts = random_token_prompts(20, vocab=380, seed=2)
    # Find a prompt whose greedy continuation (with ignore_eos) contains EOS.
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    outs = llm.generate(prompts, params, use_tqdm=False)
    hits = [
        (p, o.outputs[0].token_ids)
        for p, o in zip(prompts, outs, strict=True)
        if eos in o.outputs[0].token_ids
    ]
    if not hits:
        pytest.skip("no greedy continuation of the tiny model produced EOS")
    prompt, ids = hits[0]
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=20), use_tqdm=False)
    comp = out[0].outputs[0]
    assert comp.token_ids == ids[: ids.index(eos) + 1]
    assert comp.finish_reason == "stop" and comp.stop_reason is None


def test_chat_applies_template(llm):
    messages = [{"role": "user", "content": "the cache holds a block"}]
    out = llm.chat(messages, SamplingParams(max_tokens=4, temperature=0.0), use_tqdm=False)[0]
    expected = llm.get_tokenizer().apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True
    )
    if not isinstance(expected, list):
        expected = expected["input_ids"]
    assert out.prompt_token_ids == list(expected)
    assert len(out.outputs[0].token_ids) >= 1
