"""Property: for random small JSON schemas and random token sequences, xgrammar's bitmask
(as leaflm compiles it) allows exactly the tokens the matcher accepts, never forbids every
token before the grammar has ended, and every completed output is strict JSON that
validates against the schema with `jsonschema` (an independent check)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from leaflm.engine import StructuredOutputsParams
from leaflm.engine.structured_outputs import GrammarCache

xgr = pytest.importorskip("xgrammar")

leaf = st.one_of(
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 200),
    ),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(lambda k: {"type": "string", "maxLength": k}, st.integers(0, 4)),
    st.lists(st.sampled_from(["a", "b c", "é", 'x"y']), min_size=1, max_size=3, unique=True).map(
        lambda vals: {"enum": vals}
    ),
)


def _object(props: dict, required_mask: list[bool]) -> dict:
    names = list(props)
    return {
        "type": "object",
        "properties": props,
        "required": [n for n, r in zip(names, required_mask, strict=False) if r],
        "additionalProperties": False,
    }


schemas = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(
            lambda items, k: {"type": "array", "items": items, "maxItems": k},
            inner,
            st.integers(0, 3),
        ),
        st.builds(
            _object,
            st.dictionaries(st.sampled_from(["p", "q", "r s"]), inner, min_size=1, max_size=3),
            st.lists(st.booleans(), min_size=3, max_size=3),
        ),
    ),
    max_leaves=5,
)


@pytest.fixture(scope="module")
def grammar_env(llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_dir)
    vocab = len(tok)
    return tok, vocab, GrammarCache(tok, vocab, [tok.eos_token_id])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(schema=schemas, choices=st.lists(st.integers(0, 10**6), min_size=200, max_size=200))
def test_bitmask_agrees_with_grammar(grammar_env, schema, choices):
    tok, vocab, cache = grammar_env
    matcher = xgr.GrammarMatcher(cache.compile(StructuredOutputsParams(json=schema)))
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    out: list[int] = []
    for step in range(0, len(choices), 2):
        if matcher.is_terminated():
            break
        matcher.fill_next_token_bitmask(bitmask, 0)
        logits = torch.zeros(1, vocab)
        xgr.apply_token_bitmask_inplace(logits, bitmask)
        allowed = torch.nonzero(logits[0] == 0).flatten().tolist()
        assert allowed, f"every token forbidden after {tok.decode(out)!r}"
        # A random token from the whole vocabulary: accepted exactly when the mask allows it.
        probe = choices[step] % vocab
        accepted = matcher.accept_token(probe)
        assert accepted == (probe in set(allowed)), (tok.decode(out), probe)
        if accepted:
            out.append(probe)
            continue
        # Otherwise walk on with an allowed token (ending when the grammar allows it).
        pick = allowed[choices[step + 1] % len(allowed)]
        if tok.eos_token_id in allowed and choices[step + 1] % 3 == 0:
            pick = tok.eos_token_id
        assert matcher.accept_token(pick)
        out.append(pick)
    event("completed" if matcher.is_terminated() else "still open after the walk")
    if matcher.is_terminated():
        assert out[-1] == tok.eos_token_id
        text = tok.decode(out[:-1])
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("schema", [{"type": "string"}, {"type": "string", "maxLength": 1}])
def test_json_strings_are_valid_utf8(grammar_env, schema):
    """xgrammar admits UTF-8-encoded surrogates in strings (found by the property above:
    three U+FFFD where maxLength is 1); leaflm's compiled grammars refuse them."""
    _, _, cache = grammar_env
    compiled = cache.compile(StructuredOutputsParams(json=schema))

    def accepts(raw: bytes) -> bool:
        return xgr.GrammarMatcher(compiled, terminate_without_stop_token=True).accept_string(raw)

    assert accepts('"é"'.encode()) and accepts('"\u8000"'.encode())
    assert not accepts(b'"\xed\xa0\x80"')  # U+D800
    assert not accepts(b'"\x01"')  # a raw control character


@pytest.mark.parametrize("vocab", [49152, 1000, 33])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_cpu_mask_equals_xgrammars_apply(vocab, backend, monkeypatch):
    """leaflm's bitmask application (faster than xgrammar's on CPU) masks exactly the same,
    on all rows and on a subset of them."""
    from leaflm import kernels

    monkeypatch.setenv("LEAFLM_KERNELS", backend)
    gen = torch.Generator().manual_seed(vocab)
    words = -(-vocab // 32)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (5, words), dtype=torch.int32, generator=gen)
    bitmask[0] = -1  # all allowed
    bitmask[1] = 0  # none allowed
    logits = torch.randn(5, vocab, generator=gen)
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask)
    assert torch.equal(kernels.apply_token_bitmask(logits.clone(), bitmask), expected)

    rows = torch.tensor([4, 0, 2])
    expected = logits.clone()
    for j, r in enumerate(rows.tolist()):
        xgr.apply_token_bitmask_inplace(expected[r : r + 1], bitmask[j : j + 1])
    got = kernels.apply_token_bitmask(logits.clone(), bitmask[:3], rows)
    assert torch.equal(got, expected)
