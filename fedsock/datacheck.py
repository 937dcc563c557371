"""Checks of a shard's arrays before any training, with messages that name the file and the fix.

Two stages. ``check_arrays`` runs on every file as it is read (before a
worker connects): features must be numbers and finite, labels must not be
text or non-finite. ``check_labels`` runs once the model is known, against
its loss: sparse categorical losses want integer class ids, categorical ones
one-hot rows. Both are pure functions of the arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsock.errors import ConfigError


def check_arrays(x: np.ndarray, y: np.ndarray, source: str) -> None:
    """Refuse arrays no model can train on.

    Args:
        x, y: one file's features and labels.
        source: the file, for the message.

    Raises:
        ConfigError: x not numeric or with NaN/Inf; y text, objects or NaN/Inf.
    """
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"{source}: x has dtype {x.dtype}, not numbers; save the features as a float array "
                          "(e.g. x.astype('float32'))")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            rows = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1)) if x.ndim > 1 else np.flatnonzero(bad)
            what = "NaN" if np.isnan(x).any() else "Inf"
            raise ConfigError(
                f"{source}: x contains {int(bad.sum())} NaN/Inf values ({what} first in row {int(rows[0])}; "
                f"{len(rows)} rows affected); drop those rows or fill them (e.g. np.nan_to_num(x)) and save again"
            )
    if y.dtype.kind in "USO":
        sample = ", ".join(repr(str(v)) for v in np.unique(y.astype(str))[:3])
        raise ConfigError(
            f"{source}: labels y are text ({sample} ...), not class ids; map them to integers 0..K-1, e.g. "
            "classes, y = np.unique(y, return_inverse=True), and save y as integers"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ConfigError(f"{source}: labels y contain {int((~np.isfinite(y)).sum())} NaN/Inf values; "
                          "drop those rows and save again")


def loss_name(model: Any) -> str:
    """The model's loss as a snake_case name ("" when it has none or it is not known)."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    return name if isinstance(name, str) else ""


def check_labels(y: np.ndarray, loss: str, classes: int | None, source: str) -> None:
    """Check labels against a classification loss (other losses are not checked).

    Args:
        y: the labels.
        loss: the model's loss name (``loss_name``).
        classes: the model's output size, if known.
        source: the shard, for the message.

    Raises:
        ConfigError: one-hot labels for a sparse loss, class ids for a
            categorical loss, labels that are not whole numbers, or class ids
            outside the model's outputs; naming the fix.
    """
    if "categorical_crossentropy" not in loss or len(y) == 0:
        return
    if loss.startswith("sparse"):
        if y.ndim > 1 and y.shape[-1] > 1:
            raise ConfigError(
                f"{source}: labels y have shape {y.shape}, one-hot (or probability) rows, but the model's loss "
                f"{loss} wants one class id per example; save y.argmax(axis=1) instead, or compile the model "
                "with loss='categorical_crossentropy'"
            )
        flat = y.reshape(len(y))
        if flat.dtype.kind == "f" and not np.array_equal(flat, np.round(flat)):
            bad = flat[flat != np.round(flat)][:3]
            raise ConfigError(
                f"{source}: labels y are not whole numbers (e.g. {', '.join(f'{v:g}' for v in bad)}), but the "
                f"model's loss {loss} wants class ids 0..K-1; save integer labels (for a regression target, "
                "compile the model with a regression loss such as 'mse')"
            )
        if classes is not None and (flat.min() < 0 or flat.max() >= classes):
            raise ConfigError(
                f"data does not fit the model: model has {classes} output classes (0..{classes - 1}), "
                f"{source} has labels {int(flat.min())}..{int(flat.max())}"
            )
        return
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        raise ConfigError(
            f"{source}: labels y are class ids (shape {y.shape}), but the model's loss {loss} wants one-hot "
            "rows; save keras.utils.to_categorical(y, K) instead, or compile the model with "
            "loss='sparse_categorical_crossentropy'"
        )
    if classes is not None and y.shape[-1] != classes:
        raise ConfigError(f"data does not fit the model: model has {classes} output classes, "
                          f"{source} has one-hot labels of width {y.shape[-1]}")
