"""Token embedding and the LM head (which may share the embedding's weight), vocab-parallel.

Under tensor parallelism each rank holds ceil(V/tp) vocabulary rows (the last rank's tail
zero-padded): a lookup outside a rank's rows gives zeros there and the all-reduce sums the
one real row; the head's logit columns are gathered to rank 0, which trims the padding.
At TP=1 the shard is the whole vocabulary and both collectives are no-ops.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from leaflm.engine.layers.linear import PackableLinear
from leaflm.engine.layers.sharding import Shard, vocab_rows, vocab_shard
from leaflm.engine.parallel_state import all_reduce, gather_last_dim, tp_size
from leaflm.kernels.cpu import graph
from leaflm.kernels.cpu import layers as cpu_layers
from leaflm.kernels.dispatch import use_cpu_kernels


class VocabEmbedding(nn.Module):
    """`parallel=False` replicates the table (e.g. GPT-2's learned positions)."""

    # rows of the table read back from the tied LM head's prepared copy, once it holds it
    # (a function, not the head itself: that would make the head a submodule of its own input)
    row_source: Callable[[torch.Tensor], torch.Tensor | None] | None = None

    def __init__(self, vocab_size: int, hidden_size: int, parallel: bool = True) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = vocab_size, hidden_size
        self.parallel = parallel and tp_size() > 1
        rows = vocab_rows(vocab_size) if self.parallel else vocab_size
        self.num_rows = rows  # this rank's rows (the weight may be freed once packed)
        self.shard: Shard | None = vocab_shard(vocab_size) if self.parallel else None
        self.weight = nn.Parameter(torch.empty(rows, hidden_size), requires_grad=False)

    def checkpoint_shard(self, param: str, shard: int = -1) -> Shard | None:
        return self.shard

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.shard is None:
            return self._lookup(input_ids)
        start = self.shard.ranges[0][0]
        local = input_ids - start
        outside = (local < 0) | (local >= self.num_rows)
        out = self._lookup(local.masked_fill(outside, 0))
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return all_reduce(out)

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.row_source is not None:
            flat, source = ids.reshape(-1), self.row_source
            out = torch.empty(flat.shape[0], self.embedding_dim, dtype=torch.float32)

            # A head's rows may be read back by torch work (a quantized table's lookup): a
            # CPU graph replays it as a step of its own.
            def lookup() -> None:
                rows = source(flat)
                assert rows is not None  # checked by share_rows
                out.copy_(rows)

            graph.python_step(lookup)
            return out.view(*ids.shape, self.embedding_dim)
        if use_cpu_kernels(self.weight):  # a C call: a recorded CPU graph covers it
            return cpu_layers.embedding(ids, self.weight)
        return F.embedding(ids, self.weight)

    def share_rows(self, head: PackableLinear) -> bool:
        """Look tokens up in the tied `head`'s prepared copy of this table; free the plain one.

        Only where the head's weight method can read rows back (leaflm's float panels, int8
        rows dequantized); otherwise (oneDNN's layout) both copies stay.
        """
        rows = functools.partial(head.weight_method.rows, head)
        if rows(torch.zeros(1, dtype=torch.long)) is None:
            return False
        self.row_source = rows
        self.register_parameter("weight", None)
        return True


class LMHead(PackableLinear):
    """Projects hidden states to vocabulary logits; tied heads reuse the embedding weight.

    Prepared by its weight method like any linear layer; a tied head's embedding then reads
    its rows from the prepared copy (see `VocabEmbedding.share_rows`), so the table is held
    once. Under TP
    only rank 0 gets the logits (`[T, V]`); the other ranks get `[T, 0]`.
    """

    def __init__(
        self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.tied_to = tied_to
        self.parallel = tp_size() > 1
        if self.parallel:
            self.shards = {("weight", -1): vocab_shard(vocab_size)}
        if tied_to is None:
            rows = vocab_rows(vocab_size) if self.parallel else vocab_size
            self.weight = nn.Parameter(torch.empty(rows, hidden_size), requires_grad=False)

    def plain_weight(self) -> torch.Tensor:
        return self.tied_to.weight if self.tied_to is not None else self.weight

    def drop_plain_weight(self) -> None:
        if self.tied_to is None:
            super().drop_plain_weight()
        else:
            self.tied_to.share_rows(self)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.weight_method.apply(self, hidden, None)
        if not self.parallel:
            return logits
        return gather_last_dim(logits)[..., : self.vocab_size]
