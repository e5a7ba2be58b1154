"""Linear layers, including merged ones (QKV, gate/up) filled shard by shard at load time.

Merging the projections that read the same input turns three (or two) matmuls into one,
which matters on CPU where each GEMM call has fixed overhead. On CPU in float32, each weight
is packed once after loading (see `leaflm.kernels.cpu.gemm`: leaflm's own GEMM where the C
kernels have AVX-512, oneDNN's otherwise), which runs decode-sized batches 1.5-2x faster than
`F.linear`; the plain copy is then dropped.

Tensor parallelism is the other, independent choice: `ColumnParallelLinear` keeps some output
rows, `RowParallelLinear` some input columns and sums the ranks' partial outputs. Each only
records its `Shard`s (what the loader reads) and whether to all-reduce; the weight method
(plain or packed) is the same code whichever shard it holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leaflm import kernels
from leaflm.engine.layers.sharding import Ranges, Shard, even_ranges
from leaflm.engine.parallel_state import all_reduce, tp_rank
from leaflm.kernels.cpu import gemm


def pack_for_cpu(model: nn.Module) -> int:
    """Pack every packable linear weight of a float32 CPU model; returns how many."""
    if not gemm.packing_available():
        return 0
    packed = 0
    for module in model.modules():
        if isinstance(module, PackableLinear) and module.pack_cpu_weight():
            packed += 1
    return packed


class PackableLinear(nn.Module):
    """A layer whose forward is `x @ W.T + b` for some `[out, in]` weight it can pack."""

    packed: gemm.PackedWeight | None = None

    def __init__(self) -> None:
        super().__init__()
        # (parameter name, merged shard or -1) -> the slice of the checkpoint tensor it holds.
        self.shards: dict[tuple[str, int], Shard] = {}
        self.reduce_output = False  # row-parallel: all-reduce the partial products

    def checkpoint_shard(self, param: str, shard: int = -1) -> Shard | None:
        return self.shards.get((param, shard))

    def local_bias(self, bias: torch.Tensor | None) -> torch.Tensor | None:
        """A row-parallel bias is added once, by rank 0, before the sum over ranks."""
        return bias if not self.reduce_output or tp_rank() == 0 else None

    def plain_weight(self) -> torch.Tensor:
        """The `[out, in]` weight, as F.linear takes it."""
        raise NotImplementedError

    def pack_cpu_weight(self) -> bool:
        """Swap in the packed weight (float32 CPU only); the plain one is freed."""
        if self.packed is not None:
            return False
        w = self.plain_weight()
        if w.device.type != "cpu" or w.dtype != torch.float32:
            return False
        self.packed = self.pack(w)
        self.drop_plain_weight()
        return True

    def pack(self, weight: torch.Tensor) -> gemm.PackedWeight:
        """The packed form this layer's forward reads (a plain linear's, unless overridden)."""
        return gemm.pack_weight(weight)

    def drop_plain_weight(self) -> None:
        self.register_parameter("weight", None)

    def packed_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        assert self.packed is not None
        return gemm.packed_linear(x, self.packed, bias)


class Linear(PackableLinear):
    """`y = x W^T + b`, with the weight stored as HF stores it (`[out, in]`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.local_bias(self.bias)
        if self.packed is not None:
            y = self.packed_forward(x, bias)
        else:
            y = F.linear(x, self.weight, bias)
        return all_reduce(y) if self.reduce_output else y

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

    Packed on CPU (leaflm's GEMM, no bias), the activation runs inside the GEMM: it never
    writes the twice-as-wide gate/up output for a separate pass to read back (a 2048-token
    prefill chunk of SmolLM: 25 MB per layer).
    """

    def __init__(self, in_features: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__(in_features, [intermediate_size, intermediate_size], bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and self.packed.gated:
            return gemm.packed_silu_and_mul(x, self.packed)
        return kernels.silu_and_mul(super().forward(x))

    def pack(self, weight: torch.Tensor) -> gemm.PackedWeight:
        gated = gemm.pack_gated_weight(weight) if self.bias is None else None
        return gated if gated is not None else super().pack(weight)
