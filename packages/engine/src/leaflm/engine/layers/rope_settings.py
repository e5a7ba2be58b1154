"""Strict RoPE settings from any HF config generation, per layer type when the model has them.

transformers 5 writes `rope_parameters` (for Gemma 3 a dict per layer type); older configs
carry `rope_theta` / `rope_scaling` (GPT-NeoX: `rotary_emb_base`, `rotary_pct`; Gemma 3:
`rope_local_base_freq`). A config that states no base at all is an error here rather than a
silent default: the wrong theta gives a model that runs but is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RopeSettings:
    base: float
    scaling: dict[str, Any] | None  # HF scaling dict (rope_type + parameters), None = plain
    partial_rotary_factor: float = 1.0


_LEGACY_BASES = {
    None: ("rope_theta", "rotary_emb_base"),
    "full_attention": ("rope_theta",),
    "sliding_attention": ("rope_local_base_freq",),
}


def rope_settings(cfg: Any, layer_type: str | None = None) -> RopeSettings:
    """RoPE base, scaling and rotary fraction for `cfg` (for one layer type if given)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    elif layer_type is None and params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"config has per-layer-type rope_parameters {sorted(params)}; name one")
    base = params.get("rope_theta")
    scaling: dict[str, Any] | None = dict(params) if params else None
    if base is None:
        for key in _LEGACY_BASES.get(layer_type, ("rope_theta",)):
            base = getattr(cfg, key, None)
            if base is not None:
                break
        legacy = getattr(cfg, "rope_scaling", None)
        if layer_type != "sliding_attention" and legacy:
            scaling = dict(legacy)
    if base is None:
        where = f" for {layer_type} layers" if layer_type else ""
        raise ValueError(
            f"{type(cfg).__name__} states no RoPE base{where} (rope_parameters / rope_theta); "
            "refusing to guess one"
        )
    factor = params.get("partial_rotary_factor")
    if factor is None:
        factor = getattr(cfg, "partial_rotary_factor", None) or getattr(cfg, "rotary_pct", None)
    if scaling is not None:
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        scaling = None if kind == "default" else scaling
    if scaling is not None:
        scaling.setdefault("max_position_embeddings", getattr(cfg, "max_position_embeddings", None))
    return RopeSettings(float(base), scaling, float(factor or 1.0))
