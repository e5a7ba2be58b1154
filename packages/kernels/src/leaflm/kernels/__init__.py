"""leaflm kernels: PyTorch reference ops (the specification, and the CPU path) and Triton kernels."""

__version__ = "0.1.0"
