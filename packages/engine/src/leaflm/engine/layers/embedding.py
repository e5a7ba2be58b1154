"""Token embedding and the LM head (which may share the embedding's weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leaflm.engine.layers.linear import PackableLinear


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(PackableLinear):
    """Projects hidden states to vocabulary logits; tied heads reuse the embedding weight.

    Packed on CPU like any linear layer; a tied head then holds a packed copy and
    leaves the embedding's weight in place for the token lookup.
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

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed_forward(hidden, None)
        return F.linear(hidden, self.plain_weight())
