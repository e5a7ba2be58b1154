"""leaflm client: typed sync/async HTTP client for leaflm's OpenAI and TGI APIs.

from leaflm.client import Client
with Client("http://127.0.0.1:8000") as client:
    print(client.completions("The future of AI is", max_tokens=16).choices[0].text)
"""

__version__ = "0.1.0"

from leaflm.client.async_client import AsyncClient
from leaflm.client.errors import LeaflmAPIError, LeaflmConnectionError, LeaflmError
from leaflm.client.retry import RetryPolicy
from leaflm.client.sync_client import Client

__all__ = [
    "AsyncClient",
    "Client",
    "LeaflmAPIError",
    "LeaflmConnectionError",
    "LeaflmError",
    "RetryPolicy",
    "__version__",
]
