"""Built-in Keras models (``--model fedsock.models:digits_mlp``)."""

from __future__ import annotations

from typing import Any


def digits_mlp(hidden: int = 64, learning_rate: float = 0.05) -> Any:
    """A small MLP for scikit-learn's 8x8 digits (64 features, 10 classes), compiled."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((64,), name="pixels"),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="digit"),
        ],
        name="digits_mlp",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
