"""Federated evaluation on the chief: each worker's metrics kept per round, and their aggregate.

A worker evaluates every global model it receives on its own validation
split before training on it, and sends those metrics (``val_*``, with
``val_examples``) and its training metrics (``train_*``) with its next
Update. The chief keeps an accepted update's metrics with its worker for the
round (``WorkerMetrics``); when the round closes, ``federate`` turns the
per-worker values into

* the federated metrics ``fed_<name>``: each ``val_*`` averaged over the
  workers weighted by their ``val_examples``, every other metric weighted by
  the update's training examples, ``val_examples`` summed;
* the fairness figures of the headline metric (``val_accuracy``, else
  ``val_loss``): ``<metric>_worst``, ``_median``, ``_best``, ``_spread``
  (best - worst, as a positive number) and ``worst_worker``.

The ``val_*`` metrics of round N's update describe the model of round N - 1
(the one the worker received and started from); docs/evaluation.md says so.
A relay hands its workers' federated metrics upstream as its own (``relayed``).
Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedsock import limits

#: Prefix of the metrics a worker measured on its validation split (never trained on).
VAL = "val_"
#: Prefix of the metrics a worker measured while training.
TRAIN = "train_"
#: The validation examples behind a worker's ``val_*`` metrics (their weight).
VAL_EXAMPLES = "val_examples"
#: Prefix of a federated (weighted-average) metric in a round's record.
FED = "fed_"
#: Headline metrics for the fairness figures, the first a round has.
HEADLINES = ("val_accuracy", "val_loss")


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of metric ``name`` is better (losses and errors)."""
    return any(w in name for w in ("loss", "error", "mse", "mae"))


@dataclass(frozen=True)
class WorkerEval:
    """One worker's metrics in one round: as sent, and the training examples of its update."""

    metrics: Mapping[str, float]
    examples: int


@dataclass
class WorkerMetrics:
    """The metrics of the accepted updates of the round being collected, by worker id.

    Kept apart from the round's weights: ``put`` when an update is accepted,
    ``take`` when its round closes (which forgets that round and older ones).
    """

    _rounds: dict[int, dict[int, WorkerEval]] = field(default_factory=dict)

    def put(self, round_: int, worker: int, examples: int, metrics: Mapping[str, float]) -> None:
        """Keep ``worker``'s metrics for ``round_`` (its accepted update's): finite values, at most
        ``KEPT_METRICS`` of them with names of at most ``KEPT_METRIC_NAME_BYTES``."""
        kept = sorted((k, float(v)) for k, v in metrics.items()
                      if len(k.encode()) <= limits.KEPT_METRIC_NAME_BYTES and math.isfinite(float(v)))
        finite = dict(kept[: limits.KEPT_METRICS])
        if finite:
            self._rounds.setdefault(round_, {})[worker] = WorkerEval(finite, int(examples))

    def get(self, round_: int, workers: tuple[int, ...]) -> dict[int, WorkerEval]:
        """The metrics of ``workers`` for ``round_`` (kept)."""
        held = self._rounds.get(round_, {})
        return {w: held[w] for w in workers if w in held}

    def take(self, round_: int, workers: tuple[int, ...]) -> dict[int, WorkerEval]:
        """The metrics of ``workers`` for closed round ``round_``; rounds up to it are forgotten."""
        out = self.get(round_, workers)
        for r in [r for r in self._rounds if r <= round_]:
            del self._rounds[r]
        return out


def _weighted(values: list[tuple[float, float]]) -> float | None:
    total = sum(w for _, w in values)
    if total <= 0:
        return None
    return sum(v * w for v, w in values) / total


def federate(per_worker: Mapping[str, WorkerEval]) -> dict[str, Any]:
    """The federated metrics and fairness figures of one round from its workers' values (by name).

    Returns:
        ``{}`` when no worker sent metrics; otherwise ``fed_<metric>`` for every
        metric any worker sent (``fed_val_examples``: their sum), and the
        fairness figures of the headline metric.
    """
    if not per_worker:
        return {}
    names = sorted({k for ev in per_worker.values() for k in ev.metrics})
    out: dict[str, Any] = {}
    for name in names:
        if name == VAL_EXAMPLES:
            out[FED + name] = float(sum(ev.metrics.get(name, 0.0) for ev in per_worker.values()))
            continue
        if name.startswith(VAL):
            pairs = [(ev.metrics[name], ev.metrics.get(VAL_EXAMPLES, 0.0))
                     for ev in per_worker.values() if name in ev.metrics]
        else:
            pairs = [(ev.metrics[name], float(ev.examples)) for ev in per_worker.values() if name in ev.metrics]
        mean = _weighted(pairs)
        if mean is not None:
            out[FED + name] = mean
    out.update(fairness(per_worker))
    return out


def relayed(per_worker: Mapping[str, WorkerEval]) -> dict[str, float]:
    """What a relay sends upstream as its own metrics: its workers' federated metrics under the
    workers' names (``val_examples`` their sum).

    The upstream weighs the relay's ``val_*`` by that sum and its other metrics by its
    ``num_examples`` (its workers' total), so a tree reports the flat federation's averages.
    """
    return {k.removeprefix(FED): float(v) for k, v in federate(per_worker).items() if k.startswith(FED)}


def fairness(per_worker: Mapping[str, WorkerEval]) -> dict[str, Any]:
    """Worst, median and best worker on the headline metric, and the spread between them."""
    for metric in HEADLINES:
        values = {n: ev.metrics[metric] for n, ev in per_worker.items()
                  if metric in ev.metrics and ev.metrics.get(VAL_EXAMPLES, 0.0) > 0}
        if not values:
            continue
        low = lower_is_better(metric)
        ranked = sorted(values.items(), key=lambda kv: (kv[1], kv[0]), reverse=low)  # worst first
        ordered = sorted(values.values())
        k = len(ordered)
        median = ordered[k // 2] if k % 2 else (ordered[k // 2 - 1] + ordered[k // 2]) / 2
        worst, best = ranked[0][1], ranked[-1][1]
        return {f"{metric}_worst": worst, f"{metric}_median": median, f"{metric}_best": best,
                f"{metric}_spread": abs(best - worst), "worst_worker": ranked[0][0]}
    return {}


def headline(row: Mapping[str, Any]) -> tuple[str, float] | None:
    """The accuracy a round is judged by: the holdout ``accuracy`` if the chief evaluates, else the
    federated validation accuracy (``fed_val_accuracy``); None if it has neither."""
    for key in ("accuracy", FED + "val_accuracy"):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, float(value)
    return None
