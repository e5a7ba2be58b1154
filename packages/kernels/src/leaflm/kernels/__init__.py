"""leaflm kernels: PyTorch reference ops (the specification, and the CPU path) and Triton kernels.

Every public op dispatches by device (see :mod:`leaflm.kernels.dispatch`); the references live in
:mod:`leaflm.kernels.reference`, the kernels in :mod:`leaflm.kernels.triton` (imported lazily, so
this package imports without Triton).
"""

from leaflm.kernels.dispatch import backend_for, triton_available
from leaflm.kernels.ops import (
    apply_penalties,
    apply_token_bitmask,
    compute_logprobs,
    gelu_and_mul,
    paged_attention_decode,
    paged_attention_prefill,
    rms_norm,
    rotary_embedding,
    sample,
    silu_and_mul,
    write_kv_cache,
)
from leaflm.kernels.rope import build_cos_sin_cache, rope_inv_freq

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "apply_penalties",
    "apply_token_bitmask",
    "backend_for",
    "build_cos_sin_cache",
    "compute_logprobs",
    "gelu_and_mul",
    "paged_attention_decode",
    "paged_attention_prefill",
    "rms_norm",
    "rope_inv_freq",
    "rotary_embedding",
    "sample",
    "silu_and_mul",
    "triton_available",
    "write_kv_cache",
]
