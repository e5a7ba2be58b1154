"""leaflm gateway: the OpenAI- and TGI-compatible HTTP server around AsyncLLM.

`create_app` and `GatewaySettings` load lazily, so `leaflm --help` stays fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["GatewaySettings", "__version__", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from leaflm.gateway.app import create_app

        return create_app
    if name == "GatewaySettings":
        from leaflm.gateway.settings import GatewaySettings

        return GatewaySettings
    raise AttributeError(f"module 'leaflm.gateway' has no attribute {name!r}")
