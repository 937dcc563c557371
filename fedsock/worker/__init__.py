"""The worker side: ``Client`` (numpy), Keras hooks and the ``worker.py`` runner."""

from fedsock.worker.client import Client

__all__ = ["Client"]
