"""What every causal LM shares: the interface the loader and the runner read, in one place.

The runner needs `config`, `num_layers`/`num_kv_heads`/`head_dim` (the KV-cache shape),
`forward` (hidden states) and `compute_logits`; the loader reads `packed_modules`,
`ignored_weights`, `tied_weights` and an optional `checkpoint_name`. A model file only
builds its backbone and says where it lives (`backbone_attr`) and what its head is called
(`head_attr`), because checkpoints load by those module names.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from leaflm.engine.forward_context import ForwardContext
from leaflm.engine.layers.embedding import LMHead, VocabEmbedding

# HF tensor name piece -> (merged module name piece, shard index), for models that fuse
# LLaMA-style q/k/v into `qkv_proj` and gate/up into `gate_up_proj`.
LLAMA_PACKED_MODULES: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}

# RoPE caches some checkpoints save next to the weights; leaflm recomputes them.
ROTARY_BUFFERS: tuple[str, ...] = ("rotary_emb.inv_freq",)


class CausalLM(nn.Module):
    """A backbone (`input_ids, positions, ctx -> hidden`) plus a possibly tied LM head."""

    packed_modules: ClassVar[dict[str, tuple[str, int]]] = {}
    ignored_weights: ClassVar[tuple[str, ...]] = ()
    # Module names checkpoints use for the backbone and the head (e.g. "transformer").
    backbone_attr: ClassVar[str] = "model"
    head_attr: ClassVar[str] = "lm_head"
    # What a config without `tie_word_embeddings` means, per HF's config class default.
    tie_by_default: ClassVar[bool] = False

    def __init__(
        self,
        cfg: Any,
        backbone: nn.Module,
        embed: VocabEmbedding,
        kv_shape: tuple[int, int, int],
    ) -> None:
        """`kv_shape` is the cache's `(num_layers, num_kv_heads, head_dim)`."""
        super().__init__()
        self.config = cfg
        setattr(self, self.backbone_attr, backbone)
        tied = bool(getattr(cfg, "tie_word_embeddings", self.tie_by_default))
        vocab_size, hidden_size = embed.num_embeddings, embed.embedding_dim
        setattr(self, self.head_attr, LMHead(vocab_size, hidden_size, embed if tied else None))
        self.tied_weights = {f"{self.head_attr}.weight"} if tied else set()
        self.num_layers, self.num_kv_heads, self.head_dim = kv_shape

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.backbone_attr)

    @property
    def head(self) -> LMHead:
        return getattr(self, self.head_attr)

    @classmethod
    def with_backbone_prefix(cls, name: str) -> str:
        """`name` under the backbone: some Hub files omit its prefix (GPT-2, BLOOM)."""
        if not name.startswith((f"{cls.backbone_attr}.", f"{cls.head_attr}.")):
            name = f"{cls.backbone_attr}.{name}"
        return name

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        return self.backbone(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)
