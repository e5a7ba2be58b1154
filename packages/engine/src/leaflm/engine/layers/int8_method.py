"""`quantization="int8"`: W8A8 linear layers on CPU (`leaflm.kernels.cpu.int8_gemm`).

Per-output-row int8 weights, quantized from each rank's float shard after loading, and
int8 activations quantized at each call, per token in blocks of 32 values; int32 accumulation with AVX-512 VNNI
(the PyTorch reference where the kernel is unavailable). A gated MLP's SiLU runs in the
kernel's epilogue.

Two names, because the LM head is where accuracy and speed pull apart (measured with
`leaflm.engine.quant_eval` on SmolLM2-135M against float32: mean next-token KL / top-1):

- `"int8"`: every linear layer, the LM head too, whose logits within `RESCORE_MARGIN` of
  each row's maximum are then recomputed in float32 from the float weight it keeps
  (`RescoredInt8Head`; 0.0060 nats, 95.6%: the top-1 agreement of a float32 head, within the
  0.02-nat and 95% targets). The head's GEMM at 64 rows: 3.3 ms plus 0.18 ms of rescoring,
  against 10.4 ms in float32; a batch-1 step streams ~0.13 GB of weights, not ~0.22 GB.
- `"int8_lm_head"`: the head in int8 alone (0.0070 nats, 94.2%); a tied embedding then
  looks its tokens up in the head's int8 rows, dequantized, and the float table is freed
  (~0.11 GB less resident than `"int8"`).
"""

from __future__ import annotations

import torch

from leaflm.engine.layers.embedding import LMHead
from leaflm.engine.layers.linear import PackableLinear
from leaflm.engine.layers.weight_method import (
    WeightMethod,
    register_weight_method,
)
from leaflm.engine.parallel_state import all_reduce_max
from leaflm.kernels.cpu import int8_gemm, rescore

#: logits within this much of their row's maximum are recomputed in float32 by `"int8"`'s
#: head: int8 moved SmolLM2-135M's logits by at most 0.91 over the eval text, and its float
#: argmax lay at most 0.24 below the int8 maximum (2.3 logits rescored a row on average)
RESCORE_MARGIN = 1.0


class Int8Method(WeightMethod):
    name = "int8"
    #: whether a layer keeps its float weight beside the int8 copy (the rescored head reads it)
    keeps_float_weight = False

    def __init__(self, lm_head: bool = False) -> None:
        self.lm_head = lm_head

    def method_for_layer(self, layer: PackableLinear) -> WeightMethod:
        if isinstance(layer, LMHead) and not self.lm_head:
            return RescoredInt8Head()
        return self

    def process_weights_after_loading(self, layer: PackableLinear) -> bool:
        if layer.packed is not None:
            return False
        w = layer.plain_weight()
        if w.device.type != "cpu" or w.dtype != torch.float32:
            raise ValueError(
                f"quantization='int8' runs on CPU in float32, got {w.device} {w.dtype} weights"
            )
        gated = layer.gated and layer.own_bias() is None
        # A row-parallel shard holds part of each row: scale by the whole row's max, so every
        # rank's int8 values are those of the unsharded weight and TP=2 computes what TP=1 does
        # (activation blocks line up too where each rank's columns are a multiple of 32).
        amax = all_reduce_max(w.abs().amax(dim=1)) if layer.reduce_output else None
        layer.packed = int8_gemm.pack_weight(w, gated=gated, row_amax=amax)
        if not self.keeps_float_weight:
            layer.drop_plain_weight()
        return True

    def apply(
        self, layer: PackableLinear, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if layer.packed is None:
            return super().apply(layer, x, bias)
        return int8_gemm.int8_linear(x, layer.packed, bias)

    def apply_gated(self, layer: PackableLinear, x: torch.Tensor) -> torch.Tensor:
        if layer.packed is not None and layer.packed.gated:
            return int8_gemm.int8_silu_and_mul(x, layer.packed)
        return super().apply_gated(layer, x)

    def rows(self, layer: PackableLinear, ids: torch.Tensor) -> torch.Tensor | None:
        if layer.packed is None or layer.packed.gated:
            return None
        return int8_gemm.int8_rows(layer.packed, ids)


class RescoredInt8Head(Int8Method):
    """`"int8"`'s LM head: int8 logits, made exact near each row's top from the float weight.

    The head keeps its float weight (a tied one is the embedding's table, which the lookup
    needs anyway, so the head never hands its rows to it) beside the int8 copy; see
    `leaflm.kernels.cpu.rescore`.
    """

    keeps_float_weight = True

    def apply(
        self, layer: PackableLinear, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        logits = super().apply(layer, x, bias)
        if layer.packed is not None:
            rescore.rescore_near_max(
                logits.view(-1, logits.shape[-1]), x.reshape(-1, x.shape[-1]),
                layer.plain_weight(), bias, RESCORE_MARGIN,
            )  # fmt: skip
        return logits


register_weight_method("int8", Int8Method)
register_weight_method("int8_lm_head", lambda: Int8Method(lm_head=True))
