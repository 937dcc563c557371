"""Keras hooks: ``fedsock.keras.FederatedCallback`` (imports TensorFlow)."""

from fedsock.worker.keras import FederatedCallback

__all__ = ["FederatedCallback"]
