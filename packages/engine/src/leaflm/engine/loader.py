"""Load HF checkpoints (safetensors, .bin, sharded with an index) into a leaflm model.

Tensors are streamed one at a time from memory-mapped files straight into the model's
preallocated parameters, so peak memory is one model plus one tensor, never two full copies.
A tensor-parallel shard (a layer's `checkpoint_shard`) is read as safetensors slices: a
rank reads only its rows or columns, never the full tensor.
Every parameter must be filled exactly once; a missing or unexpected tensor is an error that
names the tensor and the file it came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leaflm.engine.layers.linear import MergedLinear
from leaflm.engine.layers.sharding import Shard
from leaflm.engine.parallel_state import tp_size


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The weight files of an HF directory, honouring a sharded checkpoint's index."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = model_dir / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        files = sorted(model_dir.glob("pytorch_model*.bin")) or sorted(model_dir.glob("*.pt"))
    if not files:
        raise ValueError(f"no weights (*.safetensors or pytorch_model*.bin) found in {model_dir}")
    return files


def iter_checkpoint(files: list[Path]) -> Iterator[tuple[str, Any, Path]]:
    """Yield (name, tensor or lazy safetensors slice, file) for every tensor, one at a time."""
    for path in files:
        if not path.is_file():
            raise ValueError(f"checkpoint file {path} listed in the index is missing")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    yield name, f.get_slice(name), path
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            for name in list(state):
                yield name, state.pop(name), path


def read_tensor(handle: Any, shard: Shard | None) -> torch.Tensor:
    """The whole tensor, or the runs of `shard` concatenated (only those are read)."""
    if isinstance(handle, torch.Tensor):
        if shard is None:
            return handle
        parts = [handle.narrow(shard.dim, a, b - a) for a, b in shard.ranges]
        return parts[0] if len(parts) == 1 else torch.cat(parts, shard.dim)
    if shard is None:
        return handle[:]
    lead = (slice(None),) * shard.dim
    parts = [handle[(*lead, slice(a, b))] for a, b in shard.ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, shard.dim)


def load_weights(model: nn.Module, model_dir: Path) -> None:
    """Fill every parameter of `model` from the checkpoint in `model_dir`."""
    params = dict(model.named_parameters())
    packed: dict[str, tuple[str, int]] = getattr(model, "packed_modules", {})
    expected: set[tuple[str, int]] = set()
    for name, module in model.named_modules():
        sizes = getattr(module, "output_sizes", None)
        for pname, _ in module.named_parameters(prefix=name, recurse=False):
            shards = range(len(sizes)) if sizes is not None else [-1]
            expected.update((pname, s) for s in shards)
    loaded: set[tuple[str, int]] = set()

    for hf_name, handle, path in iter_checkpoint(checkpoint_files(model_dir)):
        found = checkpoint_target(model, hf_name)
        if found is None:
            continue
        name, target, shard = found
        param = params.get(target)
        if param is None or (target, shard) not in expected:
            raise ValueError(
                f"unexpected tensor {name!r} in {path.name}: the model has no such weight"
            )
        if (target, shard) in loaded:
            raise ValueError(f"tensor {name!r} in {path.name} appears twice in the checkpoint")
        owner, _, pname = target.rpartition(".")
        module = model.get_submodule(owner)
        spec = None  # at TP=1 every shard is the whole tensor: read it whole, check its shape
        shard_of = getattr(module, "checkpoint_shard", None)
        if tp_size() > 1 and callable(shard_of):
            spec = shard_of(pname, shard)
        tensor = read_tensor(handle, spec)
        with torch.no_grad():
            if shard >= 0:
                assert isinstance(module, MergedLinear)  # only merged layers have shards
                module.load_shard(param, shard, tensor.to(param.dtype))
            elif spec is not None and spec.padded and tensor.shape[0] < param.shape[0]:
                param.data[tensor.shape[0] :].zero_()  # vocab padding of the last rank
                param.data[: tensor.shape[0]].copy_(tensor)
            else:
                if tuple(tensor.shape) != tuple(param.shape):
                    raise ValueError(
                        f"tensor {name!r} in {path.name} has shape {tuple(tensor.shape)}, "
                        f"expected {tuple(param.shape)}"
                    )
                param.data.copy_(tensor)
        loaded.add((target, shard))

    missing = expected - loaded
    if missing:
        names = sorted(_hf_name(n, s, packed) for n, s in missing)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise ValueError(f"checkpoint in {model_dir} is missing tensor(s): {shown}")


def checkpoint_target(model: nn.Module, hf_name: str) -> tuple[str, str, int] | None:
    """(leaflm tensor name, parameter it fills, merged shard or -1) for checkpoint tensor
    `hf_name`, or None for a tensor the model skips (tied, ignored, renamed away)."""
    packed: dict[str, tuple[str, int]] = getattr(model, "packed_modules", {})
    ignored: tuple[str, ...] = getattr(model, "ignored_weights", ())
    tied: set[str] = getattr(model, "tied_weights", set())
    rename = getattr(model, "checkpoint_name", None)  # HF name -> leaflm name, None = skip
    name = hf_name if rename is None else rename(hf_name)
    if name is None or name in tied or any(name.endswith(s) for s in ignored):
        return None
    parts = name.split(".")
    for i, piece in enumerate(parts):
        if piece in packed:
            merged, shard = packed[piece]
            return name, ".".join([*parts[:i], merged, *parts[i + 1 :]]), shard
    return name, name, -1


def _hf_name(target: str, shard: int, packed: dict[str, tuple[str, int]]) -> str:
    if shard < 0:
        return target
    for hf_piece, (merged, s) in packed.items():
        if s == shard and f".{merged}." in f".{target}":
            return target.replace(merged, hf_piece)
    return f"{target}[shard {shard}]"
