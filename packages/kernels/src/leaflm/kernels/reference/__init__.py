"""PyTorch reference ops: the specification of every kernel, and the CPU path."""

from leaflm.kernels.reference.attention import (
    paged_attention_decode,
    paged_attention_prefill,
    write_kv_cache,
)
from leaflm.kernels.reference.layers import (
    gelu_and_mul,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
)
from leaflm.kernels.reference.sampling import (
    apply_penalties,
    apply_token_bitmask,
    compute_logprobs,
    sample,
    uniform_from_seed,
)

__all__ = [
    "apply_penalties",
    "apply_token_bitmask",
    "compute_logprobs",
    "gelu_and_mul",
    "paged_attention_decode",
    "paged_attention_prefill",
    "rms_norm",
    "rotary_embedding",
    "sample",
    "silu_and_mul",
    "uniform_from_seed",
    "write_kv_cache",
]
