"""`quantization="int8"`: W8A8 linear layers on CPU (`leaflm.kernels.cpu.int8_gemm`).

Per-output-row int8 weights, quantized from each rank's float shard after loading, and
per-token int8 activations quantized at each call; int32 accumulation with AVX-512 VNNI
(the PyTorch reference where the kernel is unavailable). A gated MLP's SiLU runs in the
kernel's epilogue. The LM head is int8 too (its accuracy is measured with the rest, see
`leaflm.engine.quant_eval`), and a tied embedding looks its tokens up in the head's int8
rows, dequantized, so the float table is freed.
"""

from __future__ import annotations

import torch

from leaflm.engine.layers.linear import PackableLinear
from leaflm.engine.layers.weight_method import WeightMethod, register_weight_method
from leaflm.kernels.cpu import int8_gemm


class Int8Method(WeightMethod):
    name = "int8"

    def process_weights_after_loading(self, layer: PackableLinear) -> bool:
        if layer.packed is not None:
            return False
        w = layer.plain_weight()
        if w.device.type != "cpu" or w.dtype != torch.float32:
            raise ValueError(
                f"quantization='int8' runs on CPU in float32, got {w.device} {w.dtype} weights"
            )
        gated = layer.gated and layer.own_bias() is None
        layer.packed = int8_gemm.pack_weight(w, gated=gated)
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
