"""leaflm engine: paged KV cache, continuous batching, model runner and the vLLM-style API."""

__version__ = "0.1.0"
