"""Weight methods: how a linear layer's weight is stored and multiplied (vLLM's quant_method).

A linear layer (`PackableLinear` and its Column/Row/Merged parallel subclasses) decides
*which* slice of a checkpoint tensor it holds and whether its output is all-reduced; its
weight method decides *how* that slice is kept and multiplied: float32 packed panels
(`"float"`, the default), int8 (`"int8"`), and later GGUF blocks. Sharding and weight format
are independent: every method works on whatever shard the layer holds.

Contract for a method (subclass `WeightMethod`, register it with `register_weight_method`):

- `process_weights_after_loading(layer)`: called once after the checkpoint is loaded, when
  `layer.plain_weight()` is this rank's float `[out, in]` shard. Build the method's form of the
  weight, store it in `layer.packed` (any object the method understands) and free the float
  copy with `layer.drop_plain_weight()`. Return False to leave the layer as it is (then
  `apply` must work on the float weight: `layer.packed is None`).
- `apply(layer, x, bias)`: `x @ W.T + bias` for `x` `[..., in]`; `bias` is already the local
  one (`layer.local_bias`), the all-reduce of a row-parallel layer happens outside.
- `apply_gated(layer, x)`: for a `SiluGatedLinear` (`layer.gated`, merged `[gate; up]`
  rows), `silu(x Wg.T) * (x Wu.T)`. The default runs `apply` then `silu_and_mul`; a method
  fuses it where it can.
- `rows(layer, ids)`: the float rows `ids` of `W`, for a tied embedding that looks tokens up
  in its LM head's prepared copy instead of keeping a second table; None when the method
  cannot (the embedding then keeps its own float table).

A method whose weight comes from elsewhere than a float tensor (GGUF blocks read as they are
in the file) keeps the same `apply`/`apply_gated`/`rows`, and fills `layer.packed` at load
time instead: the loader hands the layer's method the raw blocks of each checkpoint tensor
(a hook such as `load_raw(layer, param, shard, blocks)` that the loader calls when
`method.loads_raw` is true; it must slice the blocks by `layer.checkpoint_shard(param,
shard)` as the float loader slices tensors), and `process_weights_after_loading` then only
finishes (or does nothing, `layer.packed` being set). Such a layer may drop its float
parameter before loading (`layer.drop_plain_weight()`), so the float copy never exists.

Such a method needs its layers to hold it before loading: set `layer.weight_method =
get_weight_method(name).method_for_layer(layer)` ahead of `load_weights` (methods keep
their state in `layer.packed`, so the fresh instance `prepare_weights` assigns afterwards
finds it there).

`prepare_weights(model, quantization)` gives each layer its method (`method_for_layer` may
hand a layer a format does not cover to the default method, as `"int8"` does the LM head)
and prepares it; the model runner calls it after loading, on every tensor-parallel rank, in
the same module order (a method may run a collective there: `"int8"` all-reduces the row
maxima of row-parallel shards so that every rank quantizes as TP=1 would).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from leaflm import kernels
from leaflm.kernels.cpu import gemm

if TYPE_CHECKING:
    from torch import nn

    from leaflm.engine.layers.linear import PackableLinear


class WeightMethod:
    """The float weight as loaded, multiplied by `F.linear` (the GPU path, and the fallback)."""

    name = "plain"
    #: whether the loader hands this method raw checkpoint blocks (see the module docstring)
    loads_raw = False

    def process_weights_after_loading(self, layer: PackableLinear) -> bool:
        return False

    def apply(
        self, layer: PackableLinear, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return F.linear(x, layer.plain_weight(), bias)

    def apply_gated(self, layer: PackableLinear, x: torch.Tensor) -> torch.Tensor:
        return kernels.silu_and_mul(self.apply(layer, x, layer.local_bias(layer.own_bias())))

    def rows(self, layer: PackableLinear, ids: torch.Tensor) -> torch.Tensor | None:
        return None

    def method_for_layer(self, layer: PackableLinear) -> WeightMethod:
        """The method `layer` gets (a format may leave some layers to the default)."""
        return self


class PackedFloatMethod(WeightMethod):
    """float32 on CPU, packed once (`leaflm.kernels.cpu.gemm`); a gated MLP's activation fused.

    Elsewhere (CUDA, other dtypes, no packing on this machine) the float weight stays as it
    is and `F.linear` multiplies it.
    """

    name = "float"

    def process_weights_after_loading(self, layer: PackableLinear) -> bool:
        if layer.packed is not None or not gemm.packing_available():
            return False
        w = layer.plain_weight()
        if w.device.type != "cpu" or w.dtype != torch.float32:
            return False
        packed = gemm.pack_gated_weight(w) if layer.gated and layer.own_bias() is None else None
        layer.packed = packed if packed is not None else gemm.pack_weight(w)
        layer.drop_plain_weight()
        return True

    def apply(
        self, layer: PackableLinear, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if layer.packed is None:
            return super().apply(layer, x, bias)
        return gemm.packed_linear(x, layer.packed, bias)

    def apply_gated(self, layer: PackableLinear, x: torch.Tensor) -> torch.Tensor:
        if layer.packed is not None and layer.packed.gated:
            return gemm.packed_silu_and_mul(x, layer.packed)
        return super().apply_gated(layer, x)

    def rows(self, layer: PackableLinear, ids: torch.Tensor) -> torch.Tensor | None:
        p = layer.packed
        if p is None or not p.panel_width or p.gated:
            return None  # oneDNN's blocked layout has no addressable rows
        return gemm.packed_rows(p, ids)


DEFAULT_METHOD: WeightMethod = PackedFloatMethod()
_REGISTRY: dict[str, Callable[[], WeightMethod]] = {}


def register_weight_method(name: str, factory: Callable[[], WeightMethod]) -> None:
    """Make `quantization=name` build its method with `factory()`."""
    _REGISTRY[name] = factory


def known_quantizations() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def get_weight_method(name: str | None) -> WeightMethod:
    """The method for `quantization=name` (None: the default float method)."""
    if name is None:
        return DEFAULT_METHOD
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise ValueError(f"quantization must be None or one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]()


def prepare_weights(model: nn.Module, quantization: str | None = None) -> int:
    """Give every linear layer its weight method and prepare its weight; returns how many."""
    from leaflm.engine.layers.linear import PackableLinear

    method = get_weight_method(quantization)
    prepared = 0
    for module in model.modules():
        if isinstance(module, PackableLinear):
            module.weight_method = method.method_for_layer(module)
            if module.weight_method.process_weights_after_loading(module):
                prepared += 1
    return prepared


def _load_builtin_methods() -> None:
    """Import the modules that register the built-in formats."""
    from leaflm.engine.layers import (
        gguf_method,  # noqa: F401  (registers "gguf")
        int8_method,  # noqa: F401  (registers "int8")
    )
