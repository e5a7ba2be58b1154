"""Strict field types for request bodies: JSON types as they are, no coercion.

Lax pydantic would read `true` as 1.0 and accept NaN or Infinity (which Python's JSON parser
produces from `NaN` / `Infinity` literals); a sampling value like that is a client bug that
must come back as a 400 naming the field, not a silently odd generation.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, Strict, StrictBool, StrictStr


def _integral(value: object) -> object:
    """JSON Schema counts 3.0 as an integer; so do we (never a boolean or a string)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


StrictInt = Annotated[int, Strict(), BeforeValidator(_integral)]
"""A JSON integer (3 or 3.0), never a boolean, a string or 3.5. (Constraints go before the
validator in each Annotated: after it, pydantic writes them into the JSON schema raw.)"""

Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
"""A finite JSON number (an integer literal is fine); never a boolean or a string."""

TokenId = Annotated[int, Strict(), Field(ge=0), BeforeValidator(_integral)]
"""A token id: a non-negative JSON integer, never a boolean."""

Unsupported = Annotated[
    None, Field(description="Not implemented by leaflm: any value but null is a 400 naming it.")
]
"""A parameter leaflm knows and refuses; documented as `null` so the schema tells the truth."""


def Int(ge: int | None = None, le: int | None = None, gt: int | None = None) -> object:
    """A strict JSON integer within bounds (documented in the schema)."""
    return Annotated[int, Strict(), Field(ge=ge, le=le, gt=gt), BeforeValidator(_integral)]


def Num(ge: float | None = None, le: float | None = None, gt: float | None = None) -> object:
    """A finite JSON number within bounds (documented in the schema)."""
    return Annotated[float, Strict(), Field(allow_inf_nan=False, ge=ge, le=le, gt=gt)]


NonEmptyStr = Annotated[str, Strict(), Field(min_length=1)]

__all__ = [
    "Int", "NonEmptyStr", "Num", "Number", "StrictBool", "StrictInt", "StrictStr", "TokenId",
    "Unsupported",
]  # fmt: skip
