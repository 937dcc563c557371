"""Round bookkeeping without I/O: who is in, who submitted, when a round closes.

The chief's network code asks ``RoundController`` what to do and does it;
nothing here touches a socket or a clock of its own (``now`` is passed in),
and nothing knows the wire, differential privacy or secure aggregation:
updates arrive decoded, a norm bound comes in as the ``prefold`` hook, and a
contribution combined elsewhere is ``reserve``d and closed with
``close_with``. How a round is closed is the job of a closer
(``fedsock.chief.closers``).
Rounds are numbered from 1; round 0 is the initial global model.

Worker ids are stable identities: a worker that reconnects keeps its id, so
an update it re-sends after a dropped connection is recognised as the same
contribution and never counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsock.aggregation import (
    BufferPool,
    ModelHolds,
    Reducer,
    Transform,
    finish_round_with_holds,
    init_accumulator,
    weighted_mean,
)
from fedsock.chief.deadlines import RoundClock
from fedsock.chief.outcomes import Accepted, Duplicate, NotSelected, RoundResult, Snapshot, Stale, Verdict
from fedsock.errors import RemoteProtocolError
from fedsock.protocol import TensorSpec, check_signature, first_nonfinite

__all__ = ["Accepted", "Duplicate", "NotSelected", "RoundController", "RoundResult", "Snapshot", "Stale", "Verdict"]

#: Applied to an accepted update before it is folded: (weights, global weights) -> weights to fold.
Prefold = Callable[[Sequence[np.ndarray], list[np.ndarray]], Sequence[np.ndarray]]
#: Turns an update as received into full weights (checking them): (specs, arrays, global weights) -> weights.
Decode = Callable[[Sequence[TensorSpec], Sequence[np.ndarray], list[np.ndarray]], Sequence[np.ndarray]]


@dataclass
class RoundController(RoundClock):
    """Global model, round counter and the open round's accumulator.

    Args:
        rounds: rounds to train before ``Done``.
        min_workers: updates needed to close a round (and workers needed
            before training starts).
        round_timeout: seconds after a round opens at which it closes if it
            has ``min_workers`` updates; without them it is extended by the
            same time again (and the chief says why).
        transform: server transform applied to the combined delta.
        reducer: how updates are combined within a round.
        fraction: share of the connected workers sampled per round (1.0 = all).
        seed: seed of the sampling generator.
        decode: turns each update as received into full weights (compressed
            deltas), raising RemoteProtocolError for bad ones.
        prefold: applied to each accepted update before it is folded, e.g.
            differential privacy's norm bound; it raises
            RemoteProtocolError to refuse the update.
        holds: the uses of the global model under way (sends, a checkpoint,
            an evaluation): whoever reads ``weights`` outside this object
            ``acquire``s them first and ``release``s them when done. A round
            closes into the current model's own buffers only when it has no
            use under way; spent buffers are reused from ``holds.pool``.
    """

    rounds: int
    min_workers: int
    round_timeout: float
    transform: Transform
    reducer: Reducer = field(default_factory=weighted_mean)
    fraction: float = 1.0
    seed: int = 0
    decode: Decode | None = None
    prefold: Prefold | None = None
    specs: tuple[TensorSpec, ...] | None = None
    weights: list[np.ndarray] | None = None
    round: int = 0
    transform_state: Any = None
    members: set[int] = field(default_factory=set)
    selected: frozenset[int] | None = None
    #: Who the open round waits for (with sampling, ``selected`` instead): the members when it
    #: opened or joined before it had ``min_workers`` updates, and who had submitted by then. A worker that
    #: joins later is not waited for; it takes part from the next round.
    participants: frozenset[int] = frozenset()
    holds: ModelHolds = field(default_factory=lambda: ModelHolds(BufferPool()))
    rng: np.random.Generator = field(init=False)
    _acc: Any = None
    _combined: list[np.ndarray] | None = None
    _submitted: dict[int, tuple[int, int]] = field(default_factory=dict)
    _opened_at: float | None = None
    _deadline: float | None = None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @property
    def has_model(self) -> bool:
        return self.weights is not None

    def set_model(self, specs: tuple[TensorSpec, ...], weights: Sequence[np.ndarray]) -> None:
        """Adopt ``weights`` as round-0 global model (from ``--model`` or the first worker)."""
        self.specs = specs
        self.weights = [np.array(w) for w in weights]
        self._adopt()
        self.transform_state = self.transform.init(self.weights)

    def restore(self, round_: int, specs: tuple[TensorSpec, ...], weights: Sequence[np.ndarray],
                transform_state: Any, rng_state: dict[str, Any] | None) -> None:
        """Resume from a checkpoint taken after ``round_``."""
        self.specs = specs
        self.weights = [np.array(w) for w in weights]
        self._adopt()
        self.transform_state = transform_state
        self.round = round_
        if rng_state is not None:
            self.rng.bit_generator.state = rng_state

    def _adopt(self) -> None:
        """``weights`` become ``holds``' current model; its pool keeps at most a float64 sum and one
        spare model (what a round can take from it), so a model held at a close costs no memory for good."""
        assert self.weights is not None
        self.holds.adopt(self.weights)
        self.holds.pool.max_bytes = sum(8 * w.size + w.nbytes for w in self.weights)

    def snapshot(self) -> Snapshot:
        """What a checkpoint needs; its weights are the current model's arrays, which a later
        round may overwrite unless the snapshot's user holds them (``holds.acquire``)."""
        assert self.specs is not None and self.weights is not None
        return Snapshot(self.round, self.specs, list(self.weights), self.transform_state,
                        dict(self.rng.bit_generator.state))

    def propose_initial(self, specs: tuple[TensorSpec, ...], weights: Sequence[np.ndarray]) -> bool:
        """A worker's weights for round 0 (bring-your-own-model).

        Returns:
            True if they became the global model, False if one existed
            (after checking they match it).

        Raises:
            RemoteProtocolError: they do not match the existing model, or
                hold NaN/Inf.
        """
        self.check(specs, weights)
        if self.has_model:
            return False
        self.set_model(specs, weights)
        return True

    def check(self, specs: Sequence[TensorSpec], weights: Sequence[np.ndarray]) -> None:
        """Raises RemoteProtocolError if ``weights`` do not fit the model or hold NaN/Inf."""
        if self.specs is not None:
            check_signature(self.specs, specs)
        bad = first_nonfinite(weights, specs)
        if bad is not None:
            raise RemoteProtocolError(
                f"tensor {bad!r} contains NaN or Inf; the update was not averaged in",
                code="invalid_weights",
            )


    def join(self, worker: int) -> None:
        """``worker`` holds the global model and may submit from now on. It takes part in the open
        round only while that round has fewer than ``min_workers`` updates (workers that start
        together are all in the first round); otherwise from the next round."""
        self.members.add(worker)
        if self._opened_at is not None and len(self._submitted) < self.min_workers:
            self.participants |= {worker}

    def leave(self, worker: int) -> None:
        """``worker`` disconnected; an update it already submitted still counts."""
        self.members.discard(worker)


    @property
    def finished(self) -> bool:
        return self.round >= self.rounds

    @property
    def collecting(self) -> int:
        """Number of the round being collected."""
        return self.round + 1

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def opened_at(self) -> float | None:
        """When the round being collected opened (None: not open yet)."""
        return self._opened_at

    @property
    def submitted(self) -> dict[int, int]:
        """Worker id -> examples, for the open round."""
        return {w: n for w, (n, _) in self._submitted.items()}

    def is_selected(self, worker: int) -> bool:
        """Whether ``worker`` takes part in the open round (always, without sampling)."""
        return self.selected is None or worker in self.selected

    def open_if_ready(self, now: float) -> bool:
        """Open the next round once ``min_workers`` hold the model; True if it is open.

        Updates are accepted before that (a fast worker may finish its local
        steps while others are still joining); the round just cannot close.
        """
        if self._opened_at is None and self.has_model and not self.finished:
            if len(self.members) >= self.min_workers:
                self._open(now)
        return self._opened_at is not None

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._deadline = now + self.round_timeout
        self.participants = frozenset(self.members) | frozenset(self._submitted)
        if self.fraction < 1.0:
            pool = sorted(self.members)
            k = min(len(pool), max(self.min_workers, math.ceil(self.fraction * len(pool))))
            picked = self.rng.choice(len(pool), size=k, replace=False) if pool else np.zeros(0, int)
            self.selected = frozenset(pool[int(i)] for i in picked) | frozenset(self._submitted)
        else:
            self.selected = None

    def submit(self, worker: int, round_: int, num_examples: int, specs: Sequence[TensorSpec],
               weights: Sequence[np.ndarray], connection: int = 0) -> Verdict:
        """Fold a worker's update into the round being collected.

        Args:
            specs, weights: the update as received; ``decode`` (if given)
                turns encoded ones into full weights.
            connection: identifies the connection it came on; a re-send on a
                new connection is a ``Duplicate``, a second send on the same
                one is an error.

        Raises:
            RemoteProtocolError: no model yet, wrong signature, NaN/Inf, zero
                examples, an update for a future round, a second update in
                one round on the same connection, or one that ``decode`` or
                ``prefold`` refuses.
        """
        if not self.has_model:
            raise RemoteProtocolError(
                "there is no global model yet: propose initial weights with an Update for round 0",
                code="out_of_order",
            )
        if round_ > self.collecting and not self.finished:
            raise RemoteProtocolError(
                f"update for round {round_}, but round {self.collecting} is being collected",
                code="bad_message",
            )
        self.check(specs, weights)  # bad weights are an error even when they arrive late
        if self.decode is not None:
            assert self.weights is not None
            weights = self.decode(specs, weights, self.weights)
        if round_ <= self.round or self.finished:
            return Stale(round_, self.collecting)
        if worker in self._submitted:
            if self._submitted[worker][1] != connection:
                return Duplicate()
            raise RemoteProtocolError(
                f"second update for round {round_} from the same worker", code="bad_message"
            )
        if num_examples <= 0:
            raise RemoteProtocolError("update with num_examples = 0", code="bad_message")
        if self._opened_at is not None and not self.is_selected(worker):
            return NotSelected()
        if self.prefold is not None:
            assert self.weights is not None
            weights = self.prefold(weights, self.weights)
        self._acc = self.reducer.add(self._ensure_acc(), weights, num_examples)
        self._submitted[worker] = (num_examples, connection)
        return Accepted()

    def reserve(self, worker: int, round_: int, connection: int = 0) -> Verdict:
        """A worker takes part in the open round with a contribution combined elsewhere.

        Like ``submit`` without weights (secure aggregation sums the masked
        updates itself; the round then closes with ``close_with``).

        Raises:
            RemoteProtocolError: no model yet, or a future round.
        """
        if not self.has_model:
            raise RemoteProtocolError("there is no global model yet: a round combined outside the chief "
                                      "needs --model", code="out_of_order")
        if round_ > self.collecting and not self.finished:
            raise RemoteProtocolError(f"round {round_}, but round {self.collecting} is being collected",
                                      code="bad_message")
        if round_ <= self.round or self.finished:
            return Stale(round_, self.collecting)
        if worker in self._submitted and self._submitted[worker][1] != connection:
            self._submitted[worker] = (0, connection)
            return Duplicate()
        if self._opened_at is not None and not self.is_selected(worker):
            return NotSelected()
        self._submitted[worker] = (0, connection)
        return Accepted()

    def withdraw(self, worker: int) -> None:
        """Forget ``worker``'s reservation (its connection broke before its contribution was taken)."""
        self._submitted.pop(worker, None)

    def restart(self, now: float) -> None:
        """Start the open round's collection again (a failed attempt to combine it): a new
        deadline, nobody reserved."""
        self._submitted = {}
        self._deadline = now + self.round_timeout

    def _ensure_acc(self) -> Any:
        if self._acc is None:
            assert self.weights is not None
            self._acc = init_accumulator(self.reducer, [w.shape for w in self.weights], self.holds.pool)
        return self._acc

    def expected(self) -> set[int]:
        """Workers whose update the open round still waits for (members since it opened, and sampled)."""
        pool = self.members & (self.participants if self.selected is None else self.selected)
        return pool - self._submitted.keys()

    def _result(self) -> list[np.ndarray]:
        """The reducer's result for the open round, computed once (it may spend the accumulator)."""
        assert self._acc is not None
        if self._combined is None:
            self._combined = self.reducer.result(self._acc)  # may reuse the accumulator's buffers: it is spent
        return self._combined

    def combined(self) -> tuple[list[np.ndarray], int]:
        """The open round's combined updates (in the model's dtypes) and their total examples.

        A relay sends these upstream instead of applying them itself. They are
        copies: a later ``close`` or ``adopt`` still works.
        """
        assert self._acc is not None and self.weights is not None
        combined = self._result()
        examples = sum(n for n, _ in self._submitted.values())
        return [np.asarray(m).astype(w.dtype) for m, w in zip(combined, self.weights)], examples

    def close(self, now: float) -> RoundResult:
        """Combine the open round with the reducer into the new global model; the next round opens at ``now``."""
        assert self.weights is not None and self._opened_at is not None and self._acc is not None
        workers = tuple(sorted(self._submitted))
        examples = sum(n for n, _ in self._submitted.values())
        # The accumulator's result is spent (nothing reads it after this); the new model goes into
        # the old one's buffers when no send, checkpoint or evaluation of it is under way, else into
        # pooled ones: fresh memory would cost a page fault per page every round.
        done = finish_round_with_holds(self.holds, self.weights, self._result(), self.transform,
                                       self.transform_state, spent=True)
        self.weights, self.transform_state = done.weights, done.state
        self.round += 1
        return self._next(now, workers, examples)

    def close_with(self, now: float, average: Sequence[np.ndarray], workers: tuple[int, ...],
                   examples: int) -> RoundResult:
        """Close the open round with updates combined outside (secure aggregation): ``average`` replaces
        the reducer's result, then the server transform applies as usual."""
        assert self.weights is not None and self._opened_at is not None
        # The delta is taken in float64, as the average is decoded; ``average`` is the caller's to spend.
        done = finish_round_with_holds(self.holds, self.weights, [np.asarray(m, dtype=np.float64) for m in average],
                                       self.transform, self.transform_state, spent=True)
        self.weights, self.transform_state = done.weights, done.state
        self.round += 1
        return self._next(now, workers, examples)

    def adopt(self, now: float, round_: int, weights: Sequence[np.ndarray]) -> RoundResult:
        """Close the open round with a model computed elsewhere from its updates (a relay's
        upstream): it becomes the global model, and the round number follows the upstream's."""
        assert self.weights is not None and self._opened_at is not None
        workers = tuple(sorted(self._submitted))
        examples = sum(n for n, _ in self._submitted.values())
        self.weights = [np.asarray(a).astype(w.dtype) for a, w in zip(weights, self.weights)]
        self._adopt()
        self.round = round_
        return self._next(now, workers, examples)

    def _next(self, now: float, workers: tuple[int, ...], examples: int) -> RoundResult:
        assert self.weights is not None and self._opened_at is not None
        result = RoundResult(
            self.round, self.weights, workers, examples, self._opened_at,
            tuple(sorted(self.selected)) if self.selected is not None else None,
        )
        self._acc, self._submitted, self._combined = None, {}, None
        self._opened_at = self._deadline = None
        self.selected = None
        if not self.finished:
            self._open(now)
        return result
