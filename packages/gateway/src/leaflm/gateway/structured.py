"""Structured outputs, logit controls and beam search: request fields -> engine parameters.

Every dialect maps onto the engine's `StructuredOutputsParams`:
- OpenAI `response_format`: `{"type": "text"}` (nothing), `{"type": "json_object"}`,
  `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` (the schema is
  always enforced, `strict` or not: the grammar cannot be loosely followed);
- vLLM's extra body `structured_outputs: {json | regex | choice | grammar | json_object}` and
  the older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`;
- TGI's `grammar: {"type": "json" | "regex", "value": ...}`.
At most one of them per request. The grammar is compiled here, off the event loop, so a bad
schema or regex is a 400 naming the field before the request is queued (the engine's cache
then has it). `logit_bias` keys arrive as JSON strings and become token ids.
"""

from __future__ import annotations

import json
from typing import Any

from leaflm.gateway.errors import APIError, bad_request

GUIDED = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")


def _spec(param: str, **fields: Any) -> Any:
    from leaflm.engine import StructuredOutputsParams

    try:
        return StructuredOutputsParams(**fields)
    except ValueError as exc:
        raise bad_request(f"{param}: {exc}", param=param) from exc


def _from_response_format(rf: Any) -> Any | None:
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise bad_request("response_format must be an object with a 'type'", "response_format")
    kind = rf["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return _spec("response_format", json_object=True)
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            raise bad_request(
                "response_format.json_schema must be an object whose 'schema' is a JSON schema",
                "response_format",
            )
        strict = js.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise bad_request(
                "response_format.json_schema.strict must be a boolean", "response_format"
            )
        return _spec("response_format", json=js.get("schema") or {"type": "object"})
    raise bad_request(
        f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
        "response_format",
    )


def _from_structured_outputs(so: Any) -> Any:
    if not isinstance(so, dict):
        raise bad_request("structured_outputs must be an object", "structured_outputs")
    unknown = sorted(k for k in so if k not in STRUCTURED_KEYS and so[k] is not None)
    if unknown:
        raise bad_request(
            f"structured_outputs: unsupported key(s) {unknown}; use one of {list(STRUCTURED_KEYS)}",
            "structured_outputs",
        )
    return _spec("structured_outputs", **{k: so.get(k) for k in STRUCTURED_KEYS})


def openai_structured(req: Any) -> tuple[str, Any] | None:
    """(the field that asked, StructuredOutputsParams) of an OpenAI request, or None."""
    found: list[tuple[str, Any]] = []
    if req.response_format is not None:
        spec = _from_response_format(req.response_format)
        if spec is not None:
            found.append(("response_format", spec))
    if req.structured_outputs is not None:
        found.append(("structured_outputs", _from_structured_outputs(req.structured_outputs)))
    for name, kind in GUIDED.items():
        value = getattr(req, name, None)
        if value is not None:
            found.append((name, _spec(name, **{kind: value})))
    if len(found) > 1:
        names = [n for n, _ in found]
        raise bad_request(f"only one structured output may be requested, got {names}", names[1])
    return found[0] if found else None


def structured_param(req: Any) -> str:
    """The request field a grammar came from, for error messages."""
    found = openai_structured(req)
    return found[0] if found else "structured_outputs"


def tgi_structured(grammar: Any) -> Any:
    """TGI's `grammar` parameter."""
    if not isinstance(grammar, dict) or grammar.get("type") not in ("json", "regex"):
        raise bad_request("grammar must be {'type': 'json' | 'regex', 'value': ...}", "grammar")
    value = grammar.get("value")
    if grammar["type"] == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise bad_request(f"grammar.value is not valid JSON: {exc}", "grammar") from exc
        return _spec("grammar", json=value)
    return _spec("grammar", regex=value)


def compile_or_400(gw: Any, spec: Any, param: str) -> None:
    """Compile `spec` with the engine's grammar cache (CPU work: call off the event loop)."""
    engine = getattr(getattr(gw, "engine", None), "engine", None)
    grammars = getattr(engine, "grammars", None)
    if grammars is None:  # an engine without structured outputs (test doubles)
        return
    try:
        grammars.compile(spec)
    except ValueError as exc:
        raise bad_request(f"{param}: {exc}", param=param) from exc


def logit_controls(req: Any) -> dict[str, Any]:
    """SamplingParams keyword arguments for logit_bias, allowed_token_ids, bad_words and
    truncate_prompt_tokens (value checks are the engine's, reported as 400s)."""
    kwargs: dict[str, Any] = {}
    if req.logit_bias is not None:
        bias = {}
        for key, value in req.logit_bias.items():
            try:
                token = int(key)
            except ValueError:
                raise bad_request(
                    f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
                ) from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_request(
                    f"logit_bias values must be numbers, got {value!r}", param="logit_bias"
                )
            bias[token] = value
        kwargs["logit_bias"] = bias
    for name in ("allowed_token_ids", "bad_words", "truncate_prompt_tokens"):
        value = getattr(req, name, None)
        if value is not None:
            kwargs[name] = value
    return kwargs


def truncate_prompts(gw: Any, prompts: list[Any], keep: int | None) -> list[Any]:
    """`truncate_prompt_tokens`: keep each prompt's last `keep` tokens (before the context
    check and usage, so both count what the engine runs)."""
    if keep is None:
        return prompts
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise bad_request(
            f"truncate_prompt_tokens must be an integer >= 1, got {keep!r}",
            param="truncate_prompt_tokens",
        )
    from leaflm.gateway.generation import Prompt

    out = []
    for p in prompts:
        if len(p.token_ids) > keep:
            ids = p.token_ids[-keep:]
            p = Prompt(gw.tokenizer.decode(ids), ids)
        out.append(p)
    return out


BEAM_CONFLICTS = ("stop", "logprobs", "top_logprobs", "prompt_logprobs", "min_tokens")


def beam_params(req: Any, max_tokens: int) -> Any:
    """vLLM's `use_beam_search`: beam width n, all n hypotheses returned best first (a
    stream sends them when the search ends)."""
    from leaflm.engine import BeamSearchParams

    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of must equal n with use_beam_search", param="best_of")
    for name in BEAM_CONFLICTS:
        value = getattr(req, name, None)
        if value not in (None, False, 0, []):
            raise bad_request(f"{name} is not supported with use_beam_search", param=name)
    if openai_structured(req) is not None or logit_controls(req):
        raise bad_request(
            "structured outputs and logit controls are not supported with use_beam_search",
            param="use_beam_search",
        )
    try:
        return BeamSearchParams(
            beam_width=req.n,
            max_tokens=max_tokens,
            ignore_eos=req.ignore_eos,
            temperature=req.temperature or 0.0,
            length_penalty=req.length_penalty,
        )
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc
