"""Strict field types for request bodies: JSON types as they are, no coercion.

Lax pydantic would read `true` as 1.0 and accept NaN or Infinity (which Python's JSON parser
produces from `NaN` / `Infinity` literals); a sampling value like that is a client bug that
must come back as a 400 naming the field, not a silently odd generation.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict, StrictBool, StrictInt, StrictStr

Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
"""A finite JSON number (an integer literal is fine); never a boolean or a string."""

TokenId = Annotated[int, Strict(), Field(ge=0)]
"""A token id: a non-negative JSON integer, never a boolean."""

__all__ = ["Number", "StrictBool", "StrictInt", "StrictStr", "TokenId"]
