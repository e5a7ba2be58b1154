"""Engine configuration: the user's keyword arguments, validated, then resolved per concern.

`EngineArgs` mirrors the keyword arguments of `LLM`/`AsyncLLM` and validates each one in
`__post_init__` (errors name the field). `ModelConfig` is what the model, tokenizer and
gateway need to know; cache sizing lives in `CacheConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}
# kv_cache_dtype names (vLLM spells the halves "fp16"/"bf16" too); "auto" is the model's dtype
_KV_DTYPES = {**_DTYPES, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3}
_UNITS.update(
    {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
)


def parse_bytes(value: int | str, field: str) -> int:
    """`1073741824`, `"512MiB"`, `"2GB"` -> bytes; ValueError naming `field` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{field} must be bytes (int) or a size like '512MiB', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{field} must be bytes (int) or a size like '512MiB', got {value!r}")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"{field} must be > 0, got {value!r}")
    return n


@dataclass
class EngineArgs:
    """Keyword arguments of `LLM(...)` / `AsyncLLM(...)`, validated on construction."""

    model: str | Path | None = None
    dtype: str | torch.dtype = "auto"
    device: str = "auto"
    block_size: int = 16
    kv_cache_memory: int | str | None = None
    # CPU: the cache's first blocks (the first the allocator hands out) made resident at
    # start, so the first requests do not page-fault in their steps; 0: all lazily
    kv_cache_prefault: int | str = "1GiB"
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # "uni" | "mp" | "ray"; None: pick
    enable_prefix_caching: bool = True
    swap_space_gb: float = 0.0
    seed: int = 0
    served_model_name: str | None = None
    quantization: str | None = None  # None: float weights; "int8": see layers/weight_method
    # the paged KV cache's element type: "auto" (the model's dtype) or e.g. "float16", which
    # halves the bytes decode attention reads on a float32 CPU model
    kv_cache_dtype: str | torch.dtype = "auto"

    def __post_init__(self) -> None:
        def positive_int(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

        if isinstance(self.dtype, str) and self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}"
            )
        if not isinstance(self.dtype, (str, torch.dtype)):
            raise ValueError(f"dtype must be a string or torch.dtype, got {self.dtype!r}")
        kv = self.kv_cache_dtype
        if isinstance(kv, str) and kv.startswith("fp8"):
            raise ValueError(f"kv_cache_dtype {kv!r} is not supported: use 'auto' or 'float16'")
        if not (kv == "auto" or kv in _KV_DTYPES or kv in set(_KV_DTYPES.values())):
            raise ValueError(
                f"kv_cache_dtype must be 'auto' or one of {sorted(_KV_DTYPES)}, got {kv!r}"
            )
        if not isinstance(self.device, str) or not re.fullmatch(
            r"auto|cpu|cuda(:\d+)?", self.device
        ):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")
        positive_int("block_size")
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            raise ValueError(f"block_size must be a power of two up to 128, got {self.block_size}")
        if self.kv_cache_memory is not None:
            self.kv_cache_memory = parse_bytes(self.kv_cache_memory, "kv_cache_memory")
        if self.kv_cache_prefault not in (0, "0"):
            self.kv_cache_prefault = parse_bytes(self.kv_cache_prefault, "kv_cache_prefault")
        self.kv_cache_prefault = int(self.kv_cache_prefault)
        if not 0.0 < float(self.gpu_memory_utilization) <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        positive_int("max_num_seqs")
        positive_int("max_num_batched_tokens", allow_none=True)
        positive_int("max_model_len", allow_none=True)
        positive_int("tensor_parallel_size")
        if self.distributed_executor_backend not in (None, "uni", "mp", "ray"):
            raise ValueError(
                "distributed_executor_backend must be 'uni', 'mp' or 'ray', got "
                f"{self.distributed_executor_backend!r}"
            )
        if float(self.swap_space_gb) < 0:
            raise ValueError(f"swap_space_gb must be >= 0, got {self.swap_space_gb}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.quantization is not None:
            from leaflm.engine.layers.weight_method import get_weight_method

            get_weight_method(self.quantization)  # ValueError naming the known ones

    def resolve_kv_cache_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        kv = self.kv_cache_dtype
        if isinstance(kv, torch.dtype):
            return kv
        return model_dtype if kv == "auto" else _KV_DTYPES[kv]

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_dtype(self, device: torch.device, hf_config: Any) -> torch.dtype:
        if isinstance(self.dtype, torch.dtype):
            return self.dtype
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        if device.type == "cpu":
            return torch.float32  # bf16 matmuls on common CPUs are orders of magnitude slower
        declared = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
        if isinstance(declared, str):
            declared = _DTYPES.get(declared)
        return declared if declared in (torch.float16, torch.bfloat16) else torch.bfloat16


@dataclass
class ModelConfig:
    """What is known about the model once resolved: where, what, in which dtype and length."""

    model: str  # what the user asked for (path or name)
    path: Path
    hf_config: Any
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    served_name: str
    quantization: str | None = None  # the weight method's name (every rank prepares its own)
    gguf_path: Path | None = None  # the GGUF file the model came from, if it came from one
    kv_cache_dtype: torch.dtype | None = None  # None: the model's dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        """The paged KV cache's element type."""
        return self.kv_cache_dtype or self.dtype

    @property
    def max_position_embeddings(self) -> int:
        return int(getattr(self.hf_config, "max_position_embeddings", 2048))


@dataclass
class CacheConfig:
    block_size: int
    num_blocks: int
    num_cpu_blocks: int
    enable_prefix_caching: bool
    num_prefault_blocks: int = 0
