"""Token embedding and the LM head (which may share the embedding's weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leaflm.engine.layers.linear import PackableLinear
from leaflm.kernels.cpu import gemm


class VocabEmbedding(nn.Module):
    packed: gemm.PackedWeight | None = None  # the tied LM head's packed copy, once shared

    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return gemm.packed_rows(self.packed, input_ids)
        return F.embedding(input_ids, self.weight)

    def share_packed(self, packed: gemm.PackedWeight) -> bool:
        """Look tokens up in `packed` (this table, packed by a tied head) and free the plain one.

        Only leaflm's panel layout has addressable rows; with oneDNN's both copies stay.
        """
        if not packed.panel_width or packed.gated:
            return False
        self.packed = packed
        self.register_parameter("weight", None)
        return True


class LMHead(PackableLinear):
    """Projects hidden states to vocabulary logits; tied heads reuse the embedding weight.

    Packed on CPU like any linear layer; a tied head's embedding then reads its rows from
    the packed copy (see `VocabEmbedding.share_packed`), so the table is held once.
    """

    def __init__(
        self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None
    ) -> None:
        super().__init__()
        self.tied_to = tied_to
        if tied_to is None:
            self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def plain_weight(self) -> torch.Tensor:
        return self.tied_to.weight if self.tied_to is not None else self.weight

    def drop_plain_weight(self) -> None:
        if self.tied_to is None:
            super().drop_plain_weight()
        elif self.packed is not None:
            self.tied_to.share_packed(self.packed)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed_forward(hidden, None)
        return F.linear(hidden, self.plain_weight())
