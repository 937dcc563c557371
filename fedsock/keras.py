"""Keras hooks: ``fedsock.keras.FederatedCallback`` (imports TensorFlow, its start-up logging hidden)."""

from fedsock import quiet

quiet.import_tensorflow()  # before fedsock.worker.keras imports Keras (see fedsock.quiet)

from fedsock.worker.keras import FederatedCallback  # noqa: E402

__all__ = ["FederatedCallback"]
