"""leaflm client: typed sync/async HTTP client for leaflm's OpenAI and TGI APIs."""

__version__ = "0.1.0"
