"""Kernel microbenchmarks (``python -m leaflm.kernels.benchmarks.gpu_microbench``)."""
