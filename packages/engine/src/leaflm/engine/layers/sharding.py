"""Which slice of each checkpoint tensor this tensor-parallel rank holds.

Sharding is a property of where a weight sits in the model, not of how it is stored or
multiplied: a layer records a `Shard` per parameter (dim + the runs of the full tensor it
keeps), the loader reads exactly those runs from safetensors (`get_slice`, never the full
tensor), and the layer's weight method (plain `F.linear` or the packed CPU GEMM) then works
on the local shard as on any weight. At TP=1 every shard is the whole tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from leaflm.engine.parallel_state import tp_rank, tp_size

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Shard:
    """Keep `ranges` (start, stop) of dim `dim` of the checkpoint tensor, concatenated.

    `padded`: the parameter may be longer along `dim` than the ranges (vocab padding); the
    rest stays zero.
    """

    dim: int
    ranges: Ranges
    padded: bool = False

    @property
    def size(self) -> int:
        return sum(b - a for a, b in self.ranges)


def even_ranges(n: int, what: str = "dimension") -> Ranges:
    """This rank's contiguous 1/tp of `n` (column-parallel outputs, row-parallel inputs)."""
    size, rank = tp_size(), tp_rank()
    if n % size:
        raise ValueError(f"{what} {n} is not divisible by tensor_parallel_size={size}")
    part = n // size
    return ((rank * part, (rank + 1) * part),)


def scaled(ranges: Ranges, unit: int, offset: int = 0) -> Ranges:
    """Ranges in heads -> ranges in elements of `unit` (head_dim) each, shifted by `offset`."""
    return tuple((offset + a * unit, offset + b * unit) for a, b in ranges)


@dataclass(frozen=True)
class HeadShard:
    """This rank's attention heads: `q` query heads and `kv` KV heads (ranges of head ids)."""

    q: Ranges
    kv: Ranges

    @property
    def num_heads(self) -> int:
        return sum(b - a for a, b in self.q)

    @property
    def num_kv_heads(self) -> int:
        return sum(b - a for a, b in self.kv)


def shard_heads(arch: str, num_heads: int, num_kv_heads: int) -> HeadShard:
    """Split query heads evenly; KV heads too, or replicate one per rank when fewer than ranks.

    Raises ValueError naming `arch` when the counts do not split over `tensor_parallel_size`.
    """
    size, rank = tp_size(), tp_rank()
    if num_heads % size:
        raise ValueError(
            f"{arch}: {num_heads} attention heads are not divisible by tensor_parallel_size={size}"
        )
    per = num_heads // size
    q = ((rank * per, (rank + 1) * per),)
    if num_kv_heads >= size:
        if num_kv_heads % size:
            raise ValueError(
                f"{arch}: {num_kv_heads} KV heads are not divisible by tensor_parallel_size={size}"
            )
        kv_per = num_kv_heads // size
        return HeadShard(q, ((rank * kv_per, (rank + 1) * kv_per),))
    if size % num_kv_heads:
        raise ValueError(
            f"{arch}: tensor_parallel_size={size} is not a multiple of its {num_kv_heads} KV "
            "heads, so KV heads cannot be replicated evenly"
        )
    head = rank * num_kv_heads // size  # every local query head reads this KV head
    return HeadShard(q, ((head, head + 1),))


def vocab_shard(vocab_size: int) -> Shard:
    """Rows of a vocab-parallel embedding / LM head: ceil(V/tp) per rank, the last padded."""
    size, rank = tp_size(), tp_rank()
    per = -(-vocab_size // size)
    start = min(rank * per, vocab_size)
    return Shard(0, ((start, min(start + per, vocab_size)),), padded=True)


def vocab_rows(vocab_size: int) -> int:
    return -(-vocab_size // tp_size())


def arch_of(cfg: object) -> str:
    """The architecture name errors should cite (`LlamaForCausalLM`, else the model_type)."""
    archs = getattr(cfg, "architectures", None)
    return archs[0] if archs else str(getattr(cfg, "model_type", "model"))
