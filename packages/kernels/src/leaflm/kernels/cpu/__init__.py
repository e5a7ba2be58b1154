"""C kernels for float32 CPU tensors, compiled on first use (see :mod:`.build`)."""

from leaflm.kernels.cpu.build import library, unavailable_reason

__all__ = ["library", "unavailable_reason"]
