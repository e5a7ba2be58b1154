"""``quantization="gguf"``: a GGUF model's linear layers run on the file's own blocks.

The blocks of each layer's shard are attached at load time by ``leaflm.engine.gguf.blocks``
(``layer.gguf_pending``); this method swaps them in for the float weight and multiplies them
with ``leaflm.kernels.cpu.gguf_gemm`` (activations quantized per call to int8 blocks, as
llama.cpp does). A layer that got no blocks (a type without a kernel, mixed merged parts)
keeps the default float method. A tied embedding dequantizes only the rows it looks up from
the LM head's blocks, so the table is held once, quantized.
"""

from __future__ import annotations

import torch

from leaflm.engine.layers.linear import PackableLinear
from leaflm.engine.layers.weight_method import DEFAULT_METHOD, WeightMethod, register_weight_method
from leaflm.kernels.cpu import gguf_gemm

#: where a layer's packed GGUF weight waits between loading and `prepare_weights`
PENDING_ATTR = "gguf_pending"


class GGUFMethod(WeightMethod):
    name = "gguf"

    def method_for_layer(self, layer: PackableLinear) -> WeightMethod:
        return self if getattr(layer, PENDING_ATTR, None) is not None else DEFAULT_METHOD

    def process_weights_after_loading(self, layer: PackableLinear) -> bool:
        layer.packed = getattr(layer, PENDING_ATTR)
        delattr(layer, PENDING_ATTR)
        layer.drop_plain_weight()
        return True

    def apply(
        self, layer: PackableLinear, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return gguf_gemm.gguf_linear(x, layer.packed, bias)

    def rows(self, layer: PackableLinear, ids: torch.Tensor) -> torch.Tensor | None:
        return gguf_gemm.gguf_rows(layer.packed, ids)


register_weight_method("gguf", GGUFMethod)
