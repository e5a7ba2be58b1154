"""Linear layers, including merged ones (QKV, gate/up) filled shard by shard at load time.

Merging the projections that read the same input turns three (or two) matmuls into one,
which matters on CPU where each GEMM call has fixed overhead. On CPU in float32, each weight
is prepared once after loading by the layer's weight method (`weight_method.py`): by default
packed for leaflm's GEMM (`leaflm.kernels.cpu.gemm`; oneDNN's where the C kernels lack
AVX-512), which runs decode-sized batches 1.5-2x faster than `F.linear`; with
`quantization="int8"` quantized for the int8 GEMM. The float copy is then dropped.

Tensor parallelism is the other, independent choice: `ColumnParallelLinear` keeps some output
rows, `RowParallelLinear` some input columns and sums the ranks' partial outputs. Each only
records its `Shard`s (what the loader reads) and whether to all-reduce; the weight method
is the same code whichever shard it holds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leaflm.engine.layers.sharding import Ranges, Shard, even_ranges
from leaflm.engine.layers.weight_method import DEFAULT_METHOD, WeightMethod, prepare_weights
from leaflm.engine.parallel_state import all_reduce, tp_rank


def pack_for_cpu(model: nn.Module, quantization: str | None = None) -> int:
    """Prepare every linear weight with the weight method of `quantization`; returns how many.

    None packs float32 CPU weights for leaflm's GEMM (see `weight_method`).
    """
    return prepare_weights(model, quantization)


class PackableLinear(nn.Module):
    """A layer whose forward is `x @ W.T + b` for some `[out, in]` weight.

    How the weight is kept and multiplied is its `weight_method`'s business (float32 packed
    panels by default, int8, ...); the layer itself only knows its shards.
    """

    packed: Any = None  # the weight method's prepared form of the weight
    weight_method: WeightMethod = DEFAULT_METHOD
    gated = False  # merged [gate; up] rows whose forward is silu(gate) * up

    def __init__(self) -> None:
        super().__init__()
        # (parameter name, merged shard or -1) -> the slice of the checkpoint tensor it holds.
        self.shards: dict[tuple[str, int], Shard] = {}
        self.reduce_output = False  # row-parallel: all-reduce the partial products

    def checkpoint_shard(self, param: str, shard: int = -1) -> Shard | None:
        return self.shards.get((param, shard))

    def own_bias(self) -> torch.Tensor | None:
        """The layer's bias parameter, if it has one (an LM head has none)."""
        return getattr(self, "bias", None)

    def local_bias(self, bias: torch.Tensor | None) -> torch.Tensor | None:
        """A row-parallel bias is added once, by rank 0, before the sum over ranks."""
        return bias if not self.reduce_output or tp_rank() == 0 else None

    def plain_weight(self) -> torch.Tensor:
        """The `[out, in]` weight, as F.linear takes it."""
        raise NotImplementedError

    def drop_plain_weight(self) -> None:
        """Free the float weight once the weight method holds its own form of it."""
        self.register_parameter("weight", None)

    def apply_weight(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`x @ W.T + bias` through the weight method, all-reduced if row-parallel."""
        y = self.weight_method.apply(self, x, bias)
        return all_reduce(y) if self.reduce_output else y


class Linear(PackableLinear):
    """`y = x W^T + b`, with the weight stored as HF stores it (`[out, in]`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_weight(x, self.local_bias(self.bias))

    def plain_weight(self) -> torch.Tensor:
        return self.weight


class ColumnParallelLinear(Linear):
    """This rank's output rows `ranges` of an `[out, in]` weight (default: an even 1/tp)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, ranges: Ranges | None = None
    ) -> None:
        shard = Shard(0, ranges or even_ranges(out_features, "output size"))
        super().__init__(in_features, shard.size, bias)
        self.shards = {("weight", -1): shard, ("bias", -1): shard}


class RowParallelLinear(Linear):
    """This rank's input columns `ranges`; partial outputs are summed over the ranks."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, ranges: Ranges | None = None
    ) -> None:
        shard = Shard(1, ranges or even_ranges(in_features, "input size"))
        super().__init__(shard.size, out_features, bias)
        self.shards = {("weight", -1): shard}
        self.reduce_output = shard.size != in_features


class MergedLinear(Linear):
    """Several projections of one input stacked along the output dim (e.g. q, k and v).

    Column-parallel: of each projection this rank keeps `ranges[i]` (default an even 1/tp),
    so `output_sizes` are the local sizes, in the same order.
    """

    def __init__(
        self,
        in_features: int,
        output_sizes: list[int],
        bias: bool = False,
        ranges: list[Ranges] | None = None,
    ) -> None:
        if ranges is None:
            ranges = [even_ranges(n, "merged output size") for n in output_sizes]
        shards = [Shard(0, r) for r in ranges]
        output_sizes = [s.size for s in shards]
        super().__init__(in_features, sum(output_sizes), bias)
        self.shards = {(p, i): s for i, s in enumerate(shards) for p in ("weight", "bias")}
        self.output_sizes = output_sizes
        self.offsets = [sum(output_sizes[:i]) for i in range(len(output_sizes))]

    def load_shard(self, param: nn.Parameter, shard: int, tensor: torch.Tensor) -> None:
        """Copy one projection's weight or bias into its rows of the merged parameter."""
        start, size = self.offsets[shard], self.output_sizes[shard]
        if tensor.shape[0] != size or tensor.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"shard {shard} has shape {tuple(tensor.shape)}, expected "
                f"{(size, *param.shape[1:])}"
            )
        param.data[start : start + size].copy_(tensor)


class SiluGatedLinear(MergedLinear):
    """A SiLU-gated MLP's merged gate/up projection: ``forward`` gives ``silu(gate) * up``.

    Weight methods fuse the activation into the GEMM where they can (float32 packed and
    int8 on CPU, no bias): it never writes the twice-as-wide gate/up output for a separate
    pass to read back (a 2048-token prefill chunk of SmolLM: 25 MB per layer).
    """

    gated = True

    def __init__(self, in_features: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__(in_features, [intermediate_size, intermediate_size], bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight_method.apply_gated(self, x)
