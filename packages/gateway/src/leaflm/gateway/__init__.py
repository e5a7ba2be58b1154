"""leaflm gateway: the OpenAI- and TGI-compatible HTTP server around AsyncLLM."""

__version__ = "0.1.0"
