"""Where a model comes from: an HF directory today; GGUF files and the embedded default next.

`resolve_model_path` turns what a user passes as `model` into a local HF-format directory
(config.json, weights, tokenizer files). Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

from pathlib import Path


def resolve_model_path(model: str | Path | None) -> Path:
    """Return the local HF-format directory for `model`, or raise a ValueError that says why not."""
    if model is None:
        raise ValueError(
            "no model given and the embedded default model is not available in this build"
        )
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {path} has no config.json")
        return path
    if path.exists():
        raise ValueError(f"unsupported model file {path}: expected an HF model directory")
    raise ValueError(
        f"model {str(model)!r} not found: pass a local HF model directory "
        "(leaflm never downloads from a model hub)"
    )
