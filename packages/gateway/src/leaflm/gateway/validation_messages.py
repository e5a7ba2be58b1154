"""pydantic's validation errors as one sentence a client can act on, naming the field.

"n must be >= 1, got 0" instead of "n: Input should be greater than or equal to 1", and for a
field that accepts several shapes (a prompt is a string or lists of strings or token ids) the
error of the shape the client meant instead of one line per shape it did not.
"""

from __future__ import annotations

from typing import Any

_TYPE_NAMES = {"int": "an integer", "float": "a number", "string": "a string", "bool": "a boolean",
               "list": "a list", "dict": "an object", "none": "null"}  # fmt: skip


def _is_tag(part: Any) -> bool:
    """pydantic marks which union member failed with tags like 'list[constrained-str]'."""
    return isinstance(part, str) and ("[" in part or "-" in part or part in _UNION_TAGS)


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "nullable"}


def field_path(err: dict[str, Any]) -> list[str]:
    return [str(p) for p in err.get("loc", ()) if p != "body" and not _is_tag(p)]


def _value(err: dict[str, Any]) -> str:
    value = err.get("input")
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sentence(err: dict[str, Any]) -> str:
    """One error as '<field> must ..., got <value>'."""
    field = ".".join(field_path(err)) or "body"
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    got = f", got {_value(err)}"
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}  # fmt: skip
    if kind in bounds:
        op, key = bounds[kind]
        return f"{field} must be {op} {ctx.get(key)}{got}"
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return f"{field} must not be empty"
        return f"{field} must have at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"{field} may hold at most {ctx.get('max_length')} items"
    if kind == "string_too_short":
        return f"{field} must not be empty"
    if kind == "string_too_long":
        return f"{field} must be at most {ctx.get('max_length')} characters"
    if kind == "finite_number":
        return f"{field} must be a finite number{got}"
    if kind == "missing":
        return f"{field} is required"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        expected = _TYPE_NAMES.get(kind.split("_")[0], kind.split("_")[0])
        return f"{field} must be {expected}{got}"
    return f"{field}: {err.get('msg', 'invalid value')}"


def best_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per field, the most specific error: a bound or a length beats a type mismatch (which
    only says the value was not another member of the union)."""
    by_field: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for err in errors:
        by_field.setdefault(tuple(field_path(err)), []).append(err)
    chosen = []
    for errs in by_field.values():
        specific = [e for e in errs if not str(e.get("type", "")).endswith("_type")]
        chosen.append((specific or errs)[0])
    return chosen
