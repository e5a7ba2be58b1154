"""Reading a GGUF file's metadata and tensors with errors that name the file, key or tensor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

_REQUIRED = object()


class GGUFError(ValueError):
    """A GGUF file that cannot become a correct HF model (corrupt, unsupported, incomplete)."""


class GGUFFile:
    """One opened GGUF file: typed metadata look-ups and dequantized tensors by GGUF name."""

    def __init__(self, path: str | Path) -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        if not self.path.is_file():
            raise GGUFError(f"GGUF file {self.path} does not exist")
        try:
            self.reader = GGUFReader(self.path)
        except Exception as exc:  # the reader raises struct/numpy/ValueErrors on damaged files
            raise GGUFError(
                f"{self.path} is not a readable GGUF file (corrupt or truncated?): {exc}"
            ) from exc
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture: str = self.get("general.architecture")

    def has(self, key: str) -> bool:
        return key in self.reader.fields

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        """The value of metadata `key`, or `default`; a missing required key is a GGUFError."""
        field = self.reader.fields.get(key)
        if field is None:
            if default is _REQUIRED:
                raise GGUFError(f"{self.path}: required metadata key {key!r} is missing")
            return default
        try:
            return field.contents()
        except Exception as exc:
            raise GGUFError(f"{self.path}: metadata key {key!r} is unreadable: {exc}") from exc

    def arch(self, suffix: str, default: Any = _REQUIRED) -> Any:
        """An architecture-scoped key, e.g. `arch("block_count")` -> `llama.block_count`."""
        return self.get(f"{self.architecture}.{suffix}", default)

    def dequantize(self, name: str) -> np.ndarray:
        """Tensor `name` as a float32 array in HF (row-major, out x in) layout."""
        from gguf.quants import dequantize

        tensor = self.tensors.get(name)
        if tensor is None:
            raise GGUFError(f"{self.path}: tensor {name!r} is missing")
        qtype = tensor.tensor_type
        try:
            weights = dequantize(tensor.data, qtype)
        except NotImplementedError as exc:
            raise GGUFError(
                f"{self.path}: tensor {name!r} uses quantization type {qtype.name}, "
                "which leaflm cannot dequantize"
            ) from exc
        except Exception as exc:
            raise GGUFError(
                f"{self.path}: tensor {name!r} ({qtype.name}) is corrupt: {exc}"
            ) from exc
        expected = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        if weights.shape != expected:
            raise GGUFError(
                f"{self.path}: tensor {name!r} dequantized to shape {weights.shape}, "
                f"expected {expected}"
            )
        weights = weights.astype(np.float32, copy=False)
        if not np.isfinite(weights).all():
            raise GGUFError(f"{self.path}: tensor {name!r} holds NaN or infinite values")
        return weights
