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
