"""Which leaflm class implements an HF config: by `architectures`, then by `model_type`.

Entries are "module:Class" strings imported on demand, so adding an architecture costs one
line here and importing the registry loads no model code.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

_MODELS: dict[str, str] = {
    "LlamaForCausalLM": "leaflm.engine.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "leaflm.engine.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "leaflm.engine.models.llama:Qwen2ForCausalLM",
    "GPT2LMHeadModel": "leaflm.engine.models.gpt2:GPT2LMHeadModel",
    "GPTNeoXForCausalLM": "leaflm.engine.models.gpt_neox:GPTNeoXForCausalLM",
    "BloomForCausalLM": "leaflm.engine.models.bloom:BloomForCausalLM",
    "FalconForCausalLM": "leaflm.engine.models.falcon:FalconForCausalLM",
    "RWForCausalLM": "leaflm.engine.models.falcon:FalconForCausalLM",
    "Qwen3ForCausalLM": "leaflm.engine.models.qwen3:Qwen3ForCausalLM",
    "Gemma3ForCausalLM": "leaflm.engine.models.gemma3:Gemma3ForCausalLM",
}

_MODEL_TYPES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "bloom": "BloomForCausalLM",
    "falcon": "FalconForCausalLM",
    "RefinedWeb": "RWForCausalLM",
    "RefinedWebModel": "RWForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}


# Config formats transformers no longer reads: model_type -> "module:function(raw dict)".
_LEGACY_CONFIGS: dict[str, str] = {
    "RefinedWebModel": "leaflm.engine.models.falcon:legacy_config",
    "RefinedWeb": "leaflm.engine.models.falcon:legacy_config",
}


def load_hf_config(model_dir: Path) -> Any:
    """The HF config of `model_dir`, including legacy formats; errors name the model type."""
    raw = json.loads((model_dir / "config.json").read_text())
    legacy = _LEGACY_CONFIGS.get(raw.get("model_type", ""))
    if legacy is not None:
        return _load(legacy)(raw)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir)
    except (ValueError, KeyError) as exc:
        shown = ", ".join(raw.get("architectures") or []) or f"model_type={raw.get('model_type')!r}"
        raise ValueError(
            f"unsupported model architecture {shown} in {model_dir}: {exc}; "
            f"supported: {', '.join(supported_architectures())}"
        ) from exc


def register_model(architecture: str, target: str, model_type: str | None = None) -> None:
    """Add an architecture: `target` is "package.module:ClassName"."""
    _MODELS[architecture] = target
    if model_type is not None:
        _MODEL_TYPES[model_type] = architecture


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def resolve_model_class(hf_config: Any) -> type:
    """The model class for an HF config, or a ValueError naming the unsupported architecture."""
    names = list(getattr(hf_config, "architectures", None) or [])
    model_type = getattr(hf_config, "model_type", None)
    for name in names:
        if name in _MODELS:
            return _load(_MODELS[name])
    if model_type in _MODEL_TYPES:
        return _load(_MODELS[_MODEL_TYPES[model_type]])
    shown = ", ".join(names) or f"model_type={model_type!r}"
    raise ValueError(
        f"unsupported model architecture {shown}; supported: {', '.join(supported_architectures())}"
    )


def _load(target: str) -> type:
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
