"""What reacts to a chief run: ``ChiefCallback`` (Keras style) and the typed values it receives.

metrics.jsonl, checkpoints, TensorBoard, the live display and the status
counters are callbacks; ``fedsock.Chief(callbacks=[...])`` adds the user's
own after them. ``on_round_end`` runs before the round's model is released
to the workers (off the event loop, in order): a worker holds the new model
only once every callback has seen its round, so a restart never resumes
behind what the workers hold. An exception raised by a callback ends the run
(nothing half-recorded reaches a worker).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsock.chief.evaluation import WorkerEval, federate
from fedsock.chief.outcomes import Snapshot


@dataclass(frozen=True)
class RunInfo:
    """A chief run about to serve: where it writes, how far it is."""

    state_dir: Path
    rounds: int
    round: int  # rounds already done (resumed from a checkpoint, or a relay's upstream)
    port: int


@dataclass(frozen=True)
class WorkerJoined:
    worker: int
    name: str
    peer: str  # host:port


@dataclass(frozen=True)
class WorkerLeft:
    """A worker's connection ended (``replaced``: a newer connection of it took over)."""

    worker: int
    name: str
    bytes_in: int
    bytes_out: int
    last_received: float  # time.monotonic() of its last byte
    replaced: bool = False


@dataclass(frozen=True)
class RoundRecord:
    """One finished round.

    Attributes:
        round: its number (1-based).
        workers: ids of the workers whose updates it combined; ``names`` theirs.
        examples: their examples in all.
        seconds: from the round's opening to its close.
        bytes_in, bytes_out: bytes received and sent for it (model fan-out included).
        time: wall-clock time at its close.
        metrics: holdout metrics of the new model (Keras names), if the chief evaluates.
        sampled: with ``--fraction``, how many workers were sampled (and ``fraction``).
        extra: what its closer adds (e.g. ``secure_agg``).
        privacy: the differential-privacy fields (epsilon, ...), when DP is on.
        snapshot: the state to checkpoint; None when the chief keeps none (a relay).
        members: names of the workers holding the model when it closed.
        final: the run's last round.
        worker_metrics: the metrics each of its workers sent with its update, by worker name
            (``val_*`` on its validation split, ``train_*``); see ``fedsock.chief.evaluation``. Held
            workers (not sampled) that evaluated the round's starting model on request are among them.
        aggregate_metrics: federated metrics (``fed_*``) known only as sums, without any worker's
            own values (secure aggregation, docs/privacy.md).
        held_workers: the names in ``worker_metrics`` that are held workers' evaluations (no training).
        held_asked: how many held workers were asked to evaluate in this round (``--eval-every``).
    """

    round: int
    workers: tuple[int, ...]
    names: tuple[str, ...]
    examples: int
    seconds: float
    bytes_in: int
    bytes_out: int
    time: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    sampled: int | None = None
    fraction: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    privacy: Mapping[str, Any] = field(default_factory=dict)
    snapshot: Snapshot | None = None
    members: tuple[str, ...] = ()
    final: bool = False
    worker_metrics: Mapping[str, WorkerEval] = field(default_factory=dict)
    aggregate_metrics: Mapping[str, float] = field(default_factory=dict)
    held_workers: tuple[str, ...] = ()
    held_asked: int = 0

    def federated(self) -> dict[str, Any]:
        """The federated metrics (``fed_*``) and fairness figures of its workers' metrics."""
        return {**federate(self.worker_metrics), **self.aggregate_metrics}

    def row(self) -> dict[str, Any]:
        """Its metrics.jsonl line."""
        line: dict[str, Any] = {
            "round": self.round, "workers": len(self.workers), "examples": self.examples,
            "seconds": round(self.seconds, 4), "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "time": self.time, "participants": list(self.names), **self.metrics, **self.extra,
        }
        if self.sampled is not None:
            line["fraction"] = self.fraction
            line["sampled"] = self.sampled
        line.update(self.privacy)
        if self.worker_metrics or self.aggregate_metrics:
            line.update(self.federated())
            line["fed_model_round"] = self.round - 1  # the model its workers' val_* metrics describe
        if self.worker_metrics:
            line["per_worker"] = {n: dict(ev.metrics) for n, ev in sorted(self.worker_metrics.items())}
        if self.held_asked:
            line["held_asked"] = self.held_asked
            line["held_workers"] = list(self.held_workers)
        return line


class ChiefCallback:
    """Override what you need; every method does nothing by default."""

    def on_run_begin(self, run: RunInfo) -> None:
        """The chief listens (called on the event loop)."""

    def on_worker_joined(self, event: WorkerJoined) -> None:
        """A worker authenticated (called on the event loop)."""

    def on_worker_left(self, event: WorkerLeft) -> None:
        """A worker's connection ended (called on the event loop)."""

    def on_round_end(self, record: RoundRecord) -> None:
        """A round closed; its model reaches the workers after this returns (called on a thread)."""

    def on_run_end(self, rounds: int) -> None:
        """The run stopped after ``rounds`` rounds (finished, or stopped on a signal)."""


class CallbackList(ChiefCallback):
    """Calls each callback in order."""

    def __init__(self, callbacks: Iterable[ChiefCallback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_run_begin(self, run: RunInfo) -> None:
        for cb in self.callbacks:
            cb.on_run_begin(run)

    def on_worker_joined(self, event: WorkerJoined) -> None:
        for cb in self.callbacks:
            cb.on_worker_joined(event)

    def on_worker_left(self, event: WorkerLeft) -> None:
        for cb in self.callbacks:
            cb.on_worker_left(event)

    def on_round_end(self, record: RoundRecord) -> None:
        for cb in self.callbacks:
            cb.on_round_end(record)

    def on_run_end(self, rounds: int) -> None:
        """Every callback's ``on_run_end``, even if one raises (the first error is raised after)."""
        error: BaseException | None = None
        for cb in self.callbacks:
            try:
                cb.on_run_end(rounds)
            except Exception as exc:  # noqa: BLE001 - re-raised below once all have run
                error = error or exc
        if error is not None:
            raise error
