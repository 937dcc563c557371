"""fedsock: federated averaging for Keras/TensorFlow over TLS sockets.

``import fedsock`` does not import TensorFlow; ``fedsock.keras`` does, on
first use.
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
from fedsock.worker.client import Client

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError", "Chief", "Client", "ConfigError", "ConnectError", "FedsockError",
    "LocalProtocolError", "PeerError", "RemoteProtocolError", "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Chief":
        from fedsock.chief import Chief

        return Chief
    if name == "keras":
        return importlib.import_module("fedsock.keras")
    raise AttributeError(f"module 'fedsock' has no attribute {name!r}")
