"""fedsock: federated averaging for Keras/TensorFlow over TLS sockets.

``import fedsock`` imports nothing heavy: ``fedsock.Client``, ``fedsock.Chief``
and ``fedsock.keras`` (which imports TensorFlow) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedsock.errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    FedsockError,
    LocalProtocolError,
    PeerError,
    RemoteProtocolError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError", "Chief", "Client", "ConfigError", "ConnectError", "FedsockError",
    "LocalProtocolError", "PeerError", "RemoteProtocolError", "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from fedsock.worker.client import Client

        return Client
    if name == "Chief":
        from fedsock.chief import Chief

        return Chief
    if name == "keras":
        return importlib.import_module("fedsock.keras")
    raise AttributeError(f"module 'fedsock' has no attribute {name!r}")
