"""The raw GGUF blocks of each linear layer, for ``quantization="gguf"`` (weights as shipped).

The blocks are read from the GGUF file itself (memory-mapped), not from the converted HF
directory: the conversion cache stays one float32 format, and the file the user named is
what runs. Each layer gets exactly the rows (or whole-block columns) of its tensor-parallel
shard, in the same order the float loader gives it:

- llama.cpp's Q/K row permutation (see ``tensors.py``) is a permutation of whole rows, so it
  is undone on block rows before slicing;
- a column shard must start and end on a block boundary (32 inputs; 256 for K-quants),
  else a ValueError;
- a merged layer (q/k/v, gate/up) needs every part in the same block type; otherwise it, like
  a layer whose tensor has no block kernel (F32, F16, Q5_K, ...), keeps its float
  weight, and one log line names those layers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch import nn

from leaflm.engine.gguf.file import GGUFFile
from leaflm.engine.gguf.tensors import hf_name, unpermute_qk
from leaflm.engine.layers.embedding import LMHead
from leaflm.engine.layers.gguf_method import PENDING_ATTR
from leaflm.engine.layers.linear import PackableLinear
from leaflm.engine.layers.sharding import Shard
from leaflm.engine.loader import checkpoint_target
from leaflm.engine.parallel_state import tp_size
from leaflm.kernels.cpu import gguf_blocks, gguf_gemm

logger = logging.getLogger(__name__)


def attach_gguf_blocks(model: nn.Module, gguf_path: str | Path, hf_config) -> int:
    """Give every linear layer whose tensors are in a supported block type its packed blocks
    (``layer.gguf_pending``); returns how many layers got them."""
    f = GGUFFile(gguf_path)
    by_param: dict[tuple[str, int], str] = {}  # (leaflm parameter, merged shard) -> GGUF name
    for gname in f.tensors:
        found = checkpoint_target(model, hf_name(f, gname))
        if found is not None:
            by_param[(found[1], found[2])] = gname
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    attached, kept = 0, []
    for name, layer in modules.items():
        if not isinstance(layer, PackableLinear):
            continue
        param = f"{name}.weight"
        if isinstance(layer, LMHead) and layer.tied_to is not None:
            param = f"{names[id(layer.tied_to)]}.weight"
        shards = range(len(layer.output_sizes)) if hasattr(layer, "output_sizes") else [-1]
        found = [by_param.get((param, s)) for s in shards]
        gnames = [g for g in found if g is not None]
        if len(gnames) != len(found):
            kept.append(f"{name} (no GGUF tensor)")
            continue
        qtypes = {int(f.tensors[g].tensor_type) for g in gnames}
        if len(qtypes) != 1 or next(iter(qtypes)) not in gguf_blocks.FORMATS:
            types = "/".join(sorted(f.tensors[g].tensor_type.name for g in gnames))
            kept.append(f"{name} ({types})")
            continue
        setattr(layer, PENDING_ATTR, _layer_weight(f, layer, gnames, list(shards), hf_config))
        attached += 1
    if kept:
        logger.info(
            "GGUF blocks: %d linear layers run on their blocks; %d keep float weights: %s",
            attached, len(kept), ", ".join(kept[:6]) + (" ..." if len(kept) > 6 else ""),
        )  # fmt: skip
    return attached


def _layer_weight(
    f: GGUFFile, layer: PackableLinear, gnames: list[str], shards: list[int], hf_config
) -> gguf_gemm.GGUFWeight:
    qtype = int(f.tensors[gnames[0]].tensor_type)
    fmt = gguf_blocks.block_format(qtype)
    parts = []
    for gname, shard in zip(gnames, shards, strict=True):
        rows = _rows(f, gname, fmt, hf_config)
        spec = layer.checkpoint_shard("weight", shard) if tp_size() > 1 else None
        parts.append(rows if spec is None else _shard(rows, spec, fmt, gname))
    raw = parts[0] if len(parts) == 1 else np.concatenate(parts)
    out_features, in_features = layer.plain_weight().shape
    if raw.shape[0] < out_features:  # the last rank's vocab padding: zero blocks
        raw = np.pad(raw, ((0, out_features - raw.shape[0]), (0, 0)))
    if raw.shape != (out_features, in_features // fmt.elems * fmt.block_bytes):
        raise ValueError(
            f"GGUF tensor(s) {', '.join(gnames)} give {raw.shape[0]} rows of {raw.shape[1]} "
            f"bytes, the layer needs [{out_features}, {in_features}] in {fmt.name}"
        )
    return gguf_gemm.pack_gguf_weight(raw, qtype, out_features, in_features)


def _rows(f: GGUFFile, gname: str, fmt: gguf_blocks.BlockFormat, hf_config) -> np.ndarray:
    """The tensor's blocks as ``[rows, bytes per row]``, Q/K rows unpermuted as in tensors.py."""
    tensor = f.tensors[gname]
    cols, rows = (int(d) for d in tensor.shape.tolist()[:2])
    if cols % fmt.elems:
        raise ValueError(f"{f.path}: {gname} rows of {cols} are not whole {fmt.name} blocks")
    data = np.asarray(tensor.data).view(np.uint8).reshape(rows, cols // fmt.elems * fmt.block_bytes)
    if f.architecture == "llama" and gname.endswith("attn_q.weight"):
        data = unpermute_qk(data, hf_config.num_attention_heads)
    elif f.architecture == "llama" and gname.endswith("attn_k.weight"):
        data = unpermute_qk(data, hf_config.num_key_value_heads)
    return data


def _shard(rows: np.ndarray, spec: Shard, fmt: gguf_blocks.BlockFormat, gname: str) -> np.ndarray:
    if spec.dim == 0:
        return np.concatenate([rows[a:b] for a, b in spec.ranges])
    parts = []
    for a, b in spec.ranges:
        if a % fmt.elems or b % fmt.elems:
            raise ValueError(
                f"tensor-parallel shard of input columns {a}:{b} of {gname} does not align "
                f"to {fmt.name} blocks of {fmt.elems}; use another "
                "tensor_parallel_size or quantization=None"
            )
        bb = fmt.block_bytes
        parts.append(rows[:, a // fmt.elems * bb : b // fmt.elems * bb])
    return np.concatenate(parts, axis=1)
