"""`quantization="int8"`: W8A8 linear layers on CPU (`leaflm.kernels.cpu.int8_gemm`).

Per-output-row int8 weights, quantized from each rank's float shard after loading, and
int8 activations quantized at each call, per token in blocks of 32 values; int32 accumulation with AVX-512 VNNI
(the PyTorch reference where the kernel is unavailable). A gated MLP's SiLU runs in the
kernel's epilogue.

Two names, because the LM head is where accuracy and speed pull apart (measured with
`leaflm.engine.quant_eval` on SmolLM2-135M against float32: mean next-token KL / top-1):

- `"int8"`: every linear layer but the LM head, which stays float32 packed (0.0049 nats,
  95.6%: within the 0.02-nat and 95% targets).
- `"int8_lm_head"`: the head too (0.0070 nats, 94.2%), so a batch-1 decode step streams
  ~0.13 GB of weights instead of ~0.22 GB (the tied 49152 x 576 head is as large as all 30
  layers); a tied embedding then looks its tokens up in the head's int8 rows, dequantized,
  and the float table is freed.
"""

from __future__ import annotations

import torch

from leaflm.engine.layers.embedding import LMHead
from leaflm.engine.layers.linear import PackableLinear
from leaflm.engine.layers.weight_method import (
    DEFAULT_METHOD,
    WeightMethod,
    register_weight_method,
)
from leaflm.engine.parallel_state import all_reduce_max
from leaflm.kernels.cpu import int8_gemm


class Int8Method(WeightMethod):
    name = "int8"

    def __init__(self, lm_head: bool = False) -> None:
        self.lm_head = lm_head

    def method_for_layer(self, layer: PackableLinear) -> WeightMethod:
        if isinstance(layer, LMHead) and not self.lm_head:
            return DEFAULT_METHOD
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


register_weight_method("int8", Int8Method)
register_weight_method("int8_lm_head", lambda: Int8Method(lm_head=True))
