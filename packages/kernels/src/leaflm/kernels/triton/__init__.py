"""Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``); same signatures as the references.

Ops without a kernel here (penalties, logprobs) use the PyTorch reference on every device.
"""

from leaflm.kernels.triton.decode import paged_attention_decode
from leaflm.kernels.triton.kv_cache import write_kv_cache
from leaflm.kernels.triton.layers import gelu_and_mul, rms_norm, silu_and_mul
from leaflm.kernels.triton.prefill import paged_attention_prefill
from leaflm.kernels.triton.rotary import rotary_embedding
from leaflm.kernels.triton.sampling import sample

__all__ = [
    "gelu_and_mul",
    "paged_attention_decode",
    "paged_attention_prefill",
    "rms_norm",
    "rotary_embedding",
    "sample",
    "silu_and_mul",
    "write_kv_cache",
]
