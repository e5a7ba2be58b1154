"""leaflm bench: side-by-side benchmarks against HF Transformers and TGI."""

__version__ = "0.1.0"
