"""A worker's own evaluation: the validation split it never trains on, the names metrics go under, and
what of them it shares (``--share-metrics``).

Every global model a worker receives is evaluated on its validation split
before it trains on it; those metrics travel with the worker's next Update as
``val_<name>`` with ``val_examples`` (their weight on the chief), and its
training metrics as ``train_<name>`` (protocol.md, Update). Nothing here does
I/O or imports Keras.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from fedsock.errors import ConfigError

VAL, TRAIN, VAL_EXAMPLES = "val_", "train_", "val_examples"
log = logging.getLogger("fedsock.worker")


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_val, y_val)``: a seeded random ``fraction`` of the examples held out.

    The same data, fraction and seed give the same split on every run (a
    restarted worker never trains on what it validated on before). At least
    one example stays on each side when ``fraction`` > 0.

    Raises:
        ConfigError: ``fraction`` outside [0, 1), or too few examples to split.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"--val-split must be in [0, 1), got {fraction:g}")
    n = len(y)
    if fraction == 0:
        return x, y, x[:0], y[:0]
    k = max(1, int(round(n * fraction)))
    if n - k < 1:
        raise ConfigError(f"--val-split {fraction:g} of {n} examples leaves none to train on; "
                          "use a smaller --val-split, --val-split 0, or --val-data")
    order = np.random.default_rng(seed).permutation(n)
    val, train = np.sort(order[:k]), np.sort(order[k:])
    return x[train], y[train], x[val], y[val]


def validation_metrics(result: Mapping[str, float], examples: int) -> dict[str, float]:
    """An evaluation's metrics (Keras names, or already ``val_``) under their Update names, with
    ``val_examples``."""
    out = {(k if k.startswith(VAL) else VAL + k): float(v) for k, v in result.items() if k != "examples"}
    out[VAL_EXAMPLES] = float(examples)
    return out


def training_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Training metrics under their Update names: ``train_<name>`` (names already ``val_`` or
    ``train_`` are kept)."""
    return {(k if k.startswith((VAL, TRAIN)) else TRAIN + k): float(v) for k, v in metrics.items()}


class Evaluation:
    """A Client's evaluate callable and the metrics waiting for its next sync."""

    def __init__(self, evaluate: Callable[[list[np.ndarray]], Mapping[str, float]] | None) -> None:
        self.fn = evaluate
        self.last: dict[str, float] = {}  # the val_* metrics of the model last evaluated

    def evaluate(self, model: list[np.ndarray]) -> list[np.ndarray]:
        """``model`` (a global model just received), evaluated if there is a callable.

        Raises:
            ConfigError: the callable returned no ``examples``.
        """
        if self.fn is None:
            return model
        result = dict(self.fn(model))
        examples = result.pop(VAL_EXAMPLES, result.pop("examples", None))
        if examples is None:
            raise ConfigError("the evaluate callable must return 'examples' (the number of validation "
                              "examples) with its metrics: the chief weights each worker's metrics by it")
        self.last = validation_metrics(result, int(examples))
        return model

    def outgoing(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The metrics of the next Update: ``metrics`` as training metrics, and the last evaluation's
        unless ``metrics`` has ``val_*`` ones of its own."""
        sent = training_metrics(metrics)
        return sent if any(k.startswith(VAL) for k in sent) else {**self.last, **sent}


#: ``--share-metrics``: what of a worker's metrics reaches the chief.
SHARE_ALL, SHARE_AGGREGATE, SHARE_NONE = "all", "aggregate-only", "none"
SHARING = (SHARE_ALL, SHARE_AGGREGATE, SHARE_NONE)


class MetricSharing:
    """``--share-metrics``: which of a worker's metrics go to the chief, and saying so in its log.

    ``all``: with every update (with secure aggregation, only inside the masked sum);
    ``aggregate-only``: only inside a secure-aggregation sum, so a chief without
    ``--secure-agg`` gets none; ``none``: never (a secure sum gets weight 0 for each).

    Raises:
        ConfigError: another mode.
    """

    def __init__(self, mode: str) -> None:
        if mode not in SHARING:
            raise ConfigError(f"--share-metrics must be one of {', '.join(SHARING)}, got {mode!r}")
        self.mode = mode
        self._said: str | None = None

    def shared(self, secure: bool, metrics: Mapping[str, float]) -> dict[str, float]:
        """What of ``metrics`` the next update carries (for ``secure``: into the masked vector)."""
        if self.mode == SHARE_NONE or (self.mode == SHARE_AGGREGATE and not secure):
            return {}
        return dict(metrics)

    def describe(self, secure: bool) -> str:
        """What this mode means with a chief that does (``secure``) or does not run secure aggregation."""
        flag = f"--share-metrics {self.mode}"
        if self.mode == SHARE_NONE:
            return f"metrics: this worker sends the chief none of its metrics ({flag})"
        if secure:
            return ("metrics: this worker's validation and training metrics reach the chief only inside the "
                    f"secure-aggregation sum, never on their own ({flag}; the chief runs --secure-agg)")
        if self.mode == SHARE_AGGREGATE:
            return (f"metrics: this chief does not run secure aggregation, so with {flag} this worker sends "
                    "it no metrics")
        return f"metrics: this worker sends its validation and training metrics with each update ({flag})"

    def news(self, secure: bool) -> str | None:
        """``describe(secure)`` if it differs from what this returned last (else None): the line to log
        at join, and again only when a reconnect finds a chief with another plan."""
        text = self.describe(secure)
        if text == self._said:
            return None
        self._said = text
        return text


def answer_request(evaluator: Callable[[list[np.ndarray]], Mapping[str, float]] | None, weights: list[np.ndarray],
                   round_: int) -> dict[str, float]:
    """The metrics that answer the chief's request to evaluate ``weights`` (the model of ``round_``):
    ``evaluator``'s (``val_*`` with ``val_examples``), or none without one or when it fails (the
    round goes on without this worker's values)."""
    metrics: dict[str, float] = {}
    if evaluator is not None:
        try:
            result = dict(evaluator(weights))
            metrics = validation_metrics(result, int(result.pop(VAL_EXAMPLES, result.pop("examples", 0))))
        except Exception as exc:  # noqa: BLE001 - the user's code: it must not end the worker's run
            log.warning("evaluating the model of round %d for the chief failed (%s); answering without values",
                        round_, exc)
    log.info("held for this round: evaluated the model of round %d for the chief (%s)", round_,
             ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "no validation data")
    return metrics
