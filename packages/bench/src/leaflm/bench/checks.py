"""A report's target check: shared by the HF targets (report.py) and the peers' (peer_targets.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Check:
    """One target: what was required, what was measured, and whether it held."""

    name: str
    required: str
    measured: str
    status: str  # "met" | "MISSED" | "not measured"


def ratio_check(name: str, required: str, ours: float, theirs: float, need: float) -> Check:
    """Met when leaflm's `ours` is at least `need` times the baseline's `theirs` (tok/s)."""
    ratio = ours / theirs
    measured = f"{ratio:.2f}× ({ours:.1f} vs {theirs:.1f} tok/s)"
    return Check(name, required, measured, "met" if ratio >= need else "MISSED")
