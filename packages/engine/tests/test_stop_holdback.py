"""Stop strings longer than the text so far, include_stop_str_in_output, and best_of deltas.

Regression for a hold-back that sliced from the wrong end of the text (a negative index)
whenever the longest stop string was longer than what had been generated.
"""

from __future__ import annotations

import pytest

from leaflm.engine import SamplingParams
from leaflm.engine.config import EngineArgs
from leaflm.engine.engine import LLMEngine

PROMPT = "The model reads the cache and the kernel writes"


@pytest.fixture(scope="module")
def engine(llama_dir):
    return LLMEngine(EngineArgs(model=str(llama_dir), kv_cache_memory="16MiB"))


def _run(engine: LLMEngine, params: SamplingParams, rid: str) -> tuple[list[str], object]:
    engine.add_request(rid, PROMPT, params)
    pieces, last = [], None
    while engine.has_unfinished():
        for out in engine.step():
            pieces += [c.text for c in out.outputs]
            last = out
    assert engine.block_manager.all_free()
    return pieces, last


def _reference(engine: LLMEngine, max_tokens: int = 12) -> str:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    _, last = _run(engine, params, "reference")
    return last.outputs[0].text


@pytest.mark.parametrize("kind", ["delta", "cumulative", "final_only"])
def test_stop_string_longer_than_the_text_never_corrupts_it(engine, kind):
    text = _reference(engine)
    never = "\x01" * (len(text) + 10)  # longer than anything generated, never matched
    params = SamplingParams(
        temperature=0.0, max_tokens=12, ignore_eos=True, stop=[never], output_kind=kind
    )
    pieces, last = _run(engine, params, f"long-{kind}")
    final = "".join(pieces) if kind == "delta" else last.outputs[0].text
    assert final == text
    assert last.outputs[0].finish_reason == "length"


def test_long_stop_string_that_matches_cuts_exactly(engine):
    text = _reference(engine, 16)
    stop = text[4:9]
    long_never = "\x02" * 40
    params = SamplingParams(
        temperature=0.0, max_tokens=16, ignore_eos=True, stop=[long_never, stop],
        output_kind="delta",
    )  # fmt: skip
    pieces, last = _run(engine, params, "long-match")
    assert "".join(pieces) == text[: text.find(stop)]
    assert last.outputs[0].stop_reason == stop


def test_include_stop_str_in_output_keeps_the_stop_string(engine):
    text = _reference(engine, 16)
    stop = text[5:8]
    cut = text.find(stop) + len(stop)
    params = SamplingParams(
        temperature=0.0, max_tokens=16, ignore_eos=True, stop=stop,
        include_stop_str_in_output=True, output_kind="delta",
    )  # fmt: skip
    pieces, last = _run(engine, params, "include")
    assert "".join(pieces) == text[:cut]
    assert last.outputs[0].finish_reason == "stop"


def test_best_of_deltas_hold_each_candidate_whole(engine):
    params = SamplingParams(
        n=1, best_of=3, temperature=0.8, seed=1, max_tokens=8, ignore_eos=True,
        output_kind="delta",
    )  # fmt: skip
    engine.add_request("bo", PROMPT, params)
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert len(outs) == 1 and outs[0].finished  # nothing before the winner is known
    (choice,) = outs[0].outputs
    assert choice.index == 0 and len(choice.token_ids) == 8
    assert engine.block_manager.all_free()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 10**400])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        SamplingParams(temperature=value)
    with pytest.raises(ValueError, match="repetition_penalty must be a finite number"):
        SamplingParams(repetition_penalty=value)
