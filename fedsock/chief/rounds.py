"""Round bookkeeping without I/O: who is in, who submitted, when a round closes.

The chief's network code asks ``RoundController`` what to do and does it;
nothing here touches a socket or a clock of its own (``now`` is passed in).
Rounds are numbered from 1; round 0 is the initial global model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsock.aggregation import Reducer, Transform, apply_delta, weighted_mean
from fedsock.errors import RemoteProtocolError
from fedsock.protocol import TensorSpec, check_signature, first_nonfinite


@dataclass(frozen=True)
class Accepted:
    """The update was folded into the current round."""


@dataclass(frozen=True)
class Stale:
    """The update is for a round that is already closed; it was dropped."""

    round: int
    current: int


@dataclass(frozen=True)
class RoundResult:
    """What closing a round produced."""

    round: int
    weights: list[np.ndarray]
    workers: tuple[int, ...]
    examples: int
    opened_at: float


@dataclass
class RoundController:
    """Global model, round counter and the open round's running sum.

    Args:
        rounds: rounds to train before ``Done``.
        min_workers: updates needed before a round may close at its deadline
            (and workers needed before training starts).
        round_timeout: seconds after a round opens at which it closes if it
            has ``min_workers`` updates.
        transform: server transform applied to the combined delta.
        reducer: how updates are combined within a round (default: the
            weighted mean as a running sum).
    """

    rounds: int
    min_workers: int
    round_timeout: float
    transform: Transform
    reducer: Reducer = field(default_factory=weighted_mean)
    specs: tuple[TensorSpec, ...] | None = None
    weights: list[np.ndarray] | None = None
    round: int = 0
    transform_state: object = None
    members: set[int] = field(default_factory=set)
    _acc: Any = None
    _submitted: dict[int, int] = field(default_factory=dict)
    _opened_at: float | None = None

    # --- model ------------------------------------------------------------

    @property
    def has_model(self) -> bool:
        return self.weights is not None

    def set_model(self, specs: tuple[TensorSpec, ...], weights: Sequence[np.ndarray]) -> None:
        """Adopt ``weights`` as round-0 global model (from ``--model`` or the first worker)."""
        self.specs = specs
        self.weights = [np.array(w) for w in weights]
        self.transform_state = self.transform.init(self.weights)

    def propose_initial(self, specs: tuple[TensorSpec, ...], weights: Sequence[np.ndarray]) -> bool:
        """A worker's weights for round 0 (bring-your-own-model).

        Returns:
            True if they became the global model, False if one existed
            (after checking they match it).

        Raises:
            RemoteProtocolError: they do not match the existing model, or
                hold NaN/Inf.
        """
        self._check(specs, weights)
        if self.has_model:
            return False
        self.set_model(specs, weights)
        return True

    def _check(self, specs: Sequence[TensorSpec], weights: Sequence[np.ndarray]) -> None:
        if self.specs is not None:
            check_signature(self.specs, specs)
        bad = first_nonfinite(weights, specs)
        if bad is not None:
            raise RemoteProtocolError(
                f"tensor {bad!r} contains NaN or Inf; the update was not averaged in",
                code="invalid_weights",
            )

    # --- membership ------------------------------------------------------

    def join(self, worker: int) -> None:
        """``worker`` holds the global model and may submit from now on."""
        self.members.add(worker)

    def leave(self, worker: int) -> None:
        """``worker`` disconnected; an update it already submitted still counts."""
        self.members.discard(worker)

    # --- rounds -----------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.round >= self.rounds

    @property
    def collecting(self) -> int:
        """Number of the round being collected."""
        return self.round + 1

    @property
    def submitted(self) -> dict[int, int]:
        """Worker id -> examples, for the open round."""
        return dict(self._submitted)

    def open_if_ready(self, now: float) -> bool:
        """Start the round's deadline clock once ``min_workers`` hold the model.

        Updates are accepted before that (a fast worker may finish its local
        steps while others are still joining); the round just cannot close.
        After the first round, each round opens when the previous one closes.

        Returns:
            True if the round being collected is open.
        """
        if self._opened_at is None and self.has_model and not self.finished:
            if self.round > 0 or len(self.members) >= self.min_workers:
                self._opened_at = now
        return self._opened_at is not None

    def _ensure_acc(self) -> Any:
        if self._acc is None:
            assert self.weights is not None
            self._acc = self.reducer.init([w.shape for w in self.weights])
        return self._acc

    def submit(
        self, worker: int, round_: int, num_examples: int, specs: Sequence[TensorSpec],
        weights: Sequence[np.ndarray],
    ) -> Accepted | Stale:
        """Fold a worker's update into the round being collected.

        Raises:
            RemoteProtocolError: wrong signature, NaN/Inf, zero examples, an
                update for a future round, or a second update in one round.
        """
        if not self.has_model:
            raise RemoteProtocolError(
                "there is no global model yet: propose initial weights with an Update for round 0",
                code="out_of_order",
            )
        if round_ <= self.round or self.finished:
            return Stale(round_, self.collecting)
        if round_ > self.collecting:
            raise RemoteProtocolError(
                f"update for round {round_}, but round {self.collecting} is being collected",
                code="bad_message",
            )
        if worker in self._submitted:
            raise RemoteProtocolError(
                f"second update for round {round_} from the same worker", code="bad_message"
            )
        if num_examples <= 0:
            raise RemoteProtocolError("update with num_examples = 0", code="bad_message")
        self._check(specs, weights)
        self._acc = self.reducer.add(self._ensure_acc(), weights, num_examples)
        self._submitted[worker] = num_examples
        return Accepted()

    def should_close(self, now: float) -> bool:
        """At least ``min_workers`` updates, and every member submitted or the deadline passed."""
        if self._opened_at is None or len(self._submitted) < self.min_workers:
            return False
        everyone = self.members <= self._submitted.keys()
        return everyone or now - self._opened_at >= self.round_timeout

    def seconds_left(self, now: float) -> float | None:
        """Seconds until the open round's deadline (None if no round is open)."""
        if self._opened_at is None:
            return None
        return max(0.0, self._opened_at + self.round_timeout - now)

    def close(self, now: float) -> RoundResult:
        """Aggregate the open round into the new global model; the next round opens at ``now``."""
        assert self._acc is not None and self.weights is not None
        combined = self.reducer.result(self._acc)
        delta = [m - np.asarray(w, np.float64) for m, w in zip(combined, self.weights)]
        delta, self.transform_state = self.transform.update(delta, self.transform_state, self.weights)
        self.weights = apply_delta(self.weights, delta)
        self.round += 1
        assert self._opened_at is not None
        result = RoundResult(
            self.round, self.weights, tuple(sorted(self._submitted)), sum(self._submitted.values()),
            self._opened_at,
        )
        self._acc, self._submitted = None, {}
        self._opened_at = now if not self.finished else None
        return result
