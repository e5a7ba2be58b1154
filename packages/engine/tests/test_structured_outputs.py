"""Structured outputs through xgrammar: every output matches its schema, regex, choice or
grammar (checked with jsonschema / re, independent of xgrammar), with n > 1, prefix caching
and preemption; constrained rows leave unconstrained ones untouched; bad specs are errors."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from leaflm.engine import LLM, SamplingParams, StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green"]}, "maxItems": 3},
        "pet": {
            "type": "object",
            "properties": {"kind": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"}},
            "required": ["kind", "ok"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "tags", "pet"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), block_size=4, kv_cache_memory=4 << 20)


def sampled(max_tokens=120, **kwargs):
    so = StructuredOutputsParams(**kwargs)
    return SamplingParams(temperature=1.0, max_tokens=max_tokens, structured_outputs=so)


def test_json_schema_outputs_validate(llm, assert_no_leaks):
    params = sampled(json=SCHEMA)
    params.n = 3
    outs = llm.generate(["Hello", "The model", "One two"], params, use_tqdm=False)
    texts = [c.text for o in outs for c in o.outputs]
    assert len(texts) == 9 and len(set(texts)) > 1
    for o in outs:
        for c in o.outputs:
            assert c.finish_reason == "stop", c.text
            jsonschema.validate(json.loads(c.text), SCHEMA)  # strict JSON: no raw controls
    assert_no_leaks(llm)


def test_regex_choice_grammar_json_object(llm):
    regex = r"[a-z]{2,5}-\d{3}"
    choices = ["yes", "no", "東京 station"]
    grammar = 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9] [0-9]?'
    prompts = ["Hello"] * 4
    for params, check in (
        (sampled(regex=regex), lambda t: re.fullmatch(regex, t)),
        (sampled(choice=choices), lambda t: t in choices),
        (
            sampled(max_tokens=60, grammar=grammar),
            lambda t: re.fullmatch(r"\([1-9]\d?(\+[1-9]\d?)*\)", t),
        ),
        (sampled(json_object=True), lambda t: isinstance(json.loads(t), dict)),
    ):
        for out in llm.generate(prompts, params, use_tqdm=False):
            comp = out.outputs[0]
            if comp.finish_reason == "length":  # a free-form object may run out of tokens
                assert params.structured_outputs.json_object
                continue
            assert check(comp.text), comp.text


def test_unconstrained_rows_untouched(llm):
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = llm.generate(["The model"], greedy, use_tqdm=False)[0].outputs[0].token_ids
    mixed = llm.generate(
        ["Hello", "The model", "One"],
        [sampled(json=SCHEMA), greedy, sampled(regex="[0-9]+")],
        use_tqdm=False,
    )
    assert mixed[1].outputs[0].token_ids == alone


def test_compiled_once_per_schema(llm):
    cache = llm.llm_engine.grammars
    schema = {"type": "object", "properties": {"k": {"enum": [1, 2, 3]}}, "required": ["k"]}
    llm.generate(["a", "b"], sampled(json=schema), use_tqdm=False)
    first = cache.compile(StructuredOutputsParams(json=json.dumps(schema)))
    size = len(cache._compiled)
    llm.generate(["c"], sampled(json=dict(reversed(list(schema.items())))), use_tqdm=False)
    assert len(cache._compiled) == size
    assert cache.compile(StructuredOutputsParams(json=schema)) is first


def test_preemption_and_prefix_caching_keep_outputs(llama_dir, assert_no_leaks):
    """A cache too small for the batch: recomputed requests rebuild their grammar state from
    their tokens and produce what a roomy engine produces (seeded sampling)."""
    prompts = ["Hello there the model", "Hello there the model", "One two three four"]
    params = [sampled(json=SCHEMA) for _ in prompts]
    for k, p in enumerate(params):
        p.seed = 100 + k
    roomy = LLM(str(llama_dir), block_size=4, kv_cache_memory=4 << 20)
    warm = roomy.generate(prompts[:1], params[:1], use_tqdm=False)[0].outputs[0].text
    ref = [o.outputs[0].text for o in roomy.generate(prompts, params, use_tqdm=False)]
    assert roomy.llm_engine.block_manager.hit_rate > 0  # the prompt's blocks came from cache
    assert ref[0] == warm
    block_bytes = 2 * 2 * 4 * 2 * 16 * 4
    tight = LLM(str(llama_dir), block_size=4, kv_cache_memory=30 * block_bytes)
    got = [o.outputs[0].text for o in tight.generate(prompts, params, use_tqdm=False)]
    assert tight.llm_engine.scheduler.num_preemptions > 0
    assert got == ref
    for text in got:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert_no_leaks(tight)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"json": {"type": "nope"}}, "structured_outputs.json"),
        ({"json": "{not json"}, "structured_outputs.json"),
        ({"regex": "(ab"}, "structured_outputs.regex"),
        ({"grammar": "root ::= undefined_rule"}, "structured_outputs.grammar"),
    ],
)
def test_invalid_specs_are_value_errors(llm, spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        llm.generate(
            ["x"],
            SamplingParams(structured_outputs=StructuredOutputsParams(**spec)),
            use_tqdm=False,
        )
    assert not llm.llm_engine.requests


def test_exactly_one_kind():
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="choice"):
        StructuredOutputsParams(choice=[])
