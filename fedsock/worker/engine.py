"""The worker's round logic without I/O: an event in, what to do next out.

``WorkerEngine`` knows the model this worker holds, the chief's round and
plan, and the sync in progress (a plain update, or a secure-aggregation
attempt). The caller (``Client``) starts a sync, then feeds it what the
channel reports: each message from the chief, the model it read after a
``Global``/``Done``, a lost connection, the ``Welcome`` of a reconnect. Each
call returns the actions to carry out, in order (model: h11, where the
caller does the I/O and the state machine decides):

- ``Send(msg, arrays)``: send this message (and the chunks of ``arrays``);
- ``ReadModel(msg)``: read the weights that follow ``msg``, then call
  ``model_read``;
- ``ReadEval(msg)``: read the weights of an ``EvalRequest`` into scratch
  memory, evaluate them (never train on them, never keep them), then call
  ``evaluated``;
- ``Deliver(model)``: the sync is over, return ``model`` to the caller;
- ``Reconnect(reason)``: connect again, then call ``reconnected``;
- ``Fail(error, notify)``: send ``notify`` (an Error, if any) and raise ``error``.

After a reconnect the engine decides between sending the update again and
continuing from the chief's newer model, when the round closed meanwhile.
After a ``Done`` whose ``report`` asks for it, ``final_report`` sends the
final evaluation once (never with secure aggregation: then the chief must
not see per-worker values).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsock import limits
from fedsock.errors import ErrorCode, FedsockError, PeerError, RemoteProtocolError
from fedsock.protocol import (
    Ack,
    ConnectionClosed,
    Done,
    Error,
    EvalRequest,
    EvalResult,
    Event,
    Global,
    Heartbeat,
    Plan,
    TensorSpec,
    Update,
    Welcome,
    check_signature,
)
from fedsock.protocol.connection import AnyMessage
from fedsock.protocol.secagg import SecAggAbort, SecAggInbox, SecAggRoster, SecAggUnmask
from fedsock.secagg.fixedpoint import RangeError
from fedsock.secagg.worker import WorkerRound
from fedsock.transport.errors import TRANSIENT_CODES, ConnectionLost
from fedsock.worker.reconnect import hinted_wait
from fedsock.worker.secure import masked_update

log = logging.getLogger("fedsock.worker")


@dataclass(frozen=True)
class Send:
    """Send ``msg``, followed by the chunks of ``arrays``."""

    msg: AnyMessage
    arrays: Sequence[np.ndarray] = ()


@dataclass(frozen=True)
class ReadModel:
    """Read the weights that follow ``msg`` (a Global or Done), then call ``WorkerEngine.model_read``."""

    msg: Global | Done


@dataclass(frozen=True)
class ReadEval:
    """Read the weights that follow ``msg`` into scratch memory, evaluate them on the validation
    split, then call ``WorkerEngine.evaluated`` with the metrics."""

    msg: EvalRequest


@dataclass(frozen=True)
class Deliver:
    """The sync is over: ``model`` is the global model to continue from."""

    model: list[np.ndarray]


@dataclass(frozen=True)
class Reconnect:
    """The connection is gone: wait ``wait`` seconds (the chief's hint), connect again, then call
    ``WorkerEngine.reconnected``.

    ``announced``: the chief said it stops (Error ``shutdown``), so it will be back: keep trying even
    while nothing listens at its address (``--gone-timeout`` does not apply).
    """

    reason: str
    announced: bool = False
    wait: float = 0.0


@dataclass(frozen=True)
class Fail:
    """Send ``notify`` (if any) without waiting for it to arrive, then raise ``error``."""

    error: FedsockError
    notify: Error | None = None


Action = Send | ReadModel | ReadEval | Deliver | Reconnect | Fail

#: What an EvalResult carries: validation metrics (``val_*``), after Done also ``personalized_val_*``.
_HELD, _FINAL = ("val_",), ("val_", "personalized_val_")


@dataclass
class _Sync:
    """The sync in progress: the update, and for secure aggregation the current attempt."""

    update: Update
    wire: Sequence[np.ndarray]  # plain: what follows the Update; secure: the weights to mask
    secure: bool
    attempt: WorkerRound | None = None
    #: Attempts whose keys were sent, newest last, none answered by a roster yet: a roster may carry
    #: the keys of any of them (an Abort and fresh keys crossed), at most ``limits.SECAGG_PENDING_KEYS``.
    sent: list[WorkerRound] = field(default_factory=list)


def _log_excluded(sa: WorkerRound) -> None:
    """A neighbour's key or shares did not check out: it is left out, and the chief is told."""
    for peer, why in sorted(sa.excluded.items()):
        log.warning("secure aggregation round %d attempt %d: leaving worker %d out (%s); the chief is told "
                    "and starts the attempt over without it", sa.round, sa.attempt, peer, why)


class WorkerEngine:
    """The state of a worker between the chief's messages.

    Args:
        welcome: the chief's first ``Welcome``.
        model: the weights read after it (None: the chief has no model yet).
        reconnect: whether a lost connection is retried (else it is raised).
    """

    def __init__(self, welcome: Welcome, model: list[np.ndarray] | None, reconnect: bool = True) -> None:
        self.plan: Plan = welcome.plan
        self.round = welcome.round
        self.model = model
        self.specs: tuple[TensorSpec, ...] = welcome.tensors if model is not None else ()
        self.finished = False
        self.reconnect = reconnect
        #: The chief's Done asked for a final EvalResult, not sent yet (``final_report``).
        self.report_due = False
        self._sync: _Sync | None = None

    @property
    def busy(self) -> bool:
        """A sync is in progress."""
        return self._sync is not None

    # --- starting a sync ----------------------------------------------------

    def start_plain(self, update: Update, wire: Sequence[np.ndarray]) -> list[Action]:
        """Send ``update`` with the tensors ``wire``, then wait for the round's model."""
        self._sync = _Sync(update, wire, secure=False)
        return [Send(update, wire)]

    def start_secure(self, update: Update, weights: Sequence[np.ndarray]) -> list[Action]:
        """Take part in secure aggregation of round ``update.round`` with ``weights``."""
        self._sync = _Sync(update, weights, secure=True)
        return self._new_attempt()

    def _new_attempt(self) -> list[Action]:
        sync = self._sync
        assert sync is not None
        sync.attempt, keys = WorkerRound.start(sync.update.round)
        sync.sent = [*sync.sent, sync.attempt][-limits.SECAGG_PENDING_KEYS:]
        return [Send(keys)]

    def _for_roster(self, sync: _Sync, roster: SecAggRoster) -> WorkerRound:
        """The attempt whose keys ``roster`` carries for this worker (the newest if none: it raises)."""
        assert sync.attempt is not None
        me = [p for p in roster.peers if p.id == roster.you]
        for sa in reversed(sync.sent):
            if me and sa.carried_by(me[0]):
                if sa is not sync.attempt:
                    log.info("secure aggregation of round %d: the roster of attempt %d carries keys sent before "
                             "the chief's last Abort reached this worker; answering with those", roster.round,
                             roster.attempt)
                sync.attempt = sa
                break
        sync.sent = []  # keys a roster was answered with are never used again, nor the others
        return sync.attempt

    # --- what the channel reports -----------------------------------------

    def receive(self, ev: Event) -> list[Action]:
        """The chief's next event during a sync."""
        if isinstance(ev, Heartbeat):
            return []
        if isinstance(ev, Ack):  # informational: the Global (or Done) still decides
            if ev.sampled:
                log.debug("the chief accepted the update for round %d (%d held, waiting for %d)",
                          ev.round, ev.held, ev.waiting)
            else:
                log.info("not sampled for round %d: the update was set aside; waiting for a round that "
                         "samples this worker", ev.round)
            return []
        if isinstance(ev, (Global, Done)):
            return [ReadModel(ev)]
        if isinstance(ev, EvalRequest):
            return self._eval_request(ev)
        if isinstance(ev, ConnectionClosed):
            return self.lost("the chief closed the connection")
        if isinstance(ev, Error):
            if ev.code in TRANSIENT_CODES:
                return self.lost(f"the chief hung up: {ev.message}", announced=ev.code == "shutdown",
                                 wait=hinted_wait(ev.retry_after_ms))
            return [Fail(PeerError(ev.code, ev.message))]
        sync = self._sync
        if sync is not None and sync.secure and isinstance(ev, (SecAggAbort, SecAggRoster, SecAggInbox, SecAggUnmask)):
            try:
                return self._secure_step(sync, ev)
            except RemoteProtocolError as exc:
                return [Fail(exc, Error(code=exc.code, message=str(exc)))]
        return [Fail(FedsockError(f"unexpected {type(ev).__name__} from the chief"))]

    def _secure_step(self, sync: _Sync, ev: SecAggAbort | SecAggRoster | SecAggInbox | SecAggUnmask) -> list[Action]:
        sa = sync.attempt
        assert sa is not None
        if isinstance(ev, SecAggAbort):
            log.info("secure aggregation attempt %d of round %d abandoned by the chief (%s); starting over",
                     ev.attempt, ev.round, ev.reason)
            return self._new_attempt()
        if isinstance(ev, SecAggRoster):
            sa = self._for_roster(sync, ev)
            shares = sa.on_roster(ev)
            _log_excluded(sa)
            return [Send(shares)]
        if isinstance(ev, SecAggUnmask):
            return [Send(sa.on_unmask(ev))]
        before = set(sa.excluded)
        sa.on_inbox(ev)
        if set(sa.excluded) - before:
            _log_excluded(sa)
        names = [s.name for s in sync.update.tensors]
        try:
            msg, arrays = masked_update(sa, sync.wire, sync.update.num_examples, self.plan, names,
                                        sync.update.metrics)
        except RangeError as exc:
            return [Fail(FedsockError(f"cannot take part in secure aggregation: {exc}"),
                         Error(code="invalid_weights", message=str(exc)))]
        return [Send(msg, arrays)]

    def _eval_request(self, ev: EvalRequest) -> list[Action]:
        """Only the model's own shape is read (so no more memory than a model of it takes)."""
        try:
            if not self.specs:
                raise RemoteProtocolError("this worker holds no model yet", code=ErrorCode.OUT_OF_ORDER)
            check_signature(self.specs, ev.tensors)
        except RemoteProtocolError as exc:
            why = f"EvalRequest for round {ev.round} does not fit the model: {exc}"
            return [Fail(FedsockError(why), Error(code=exc.code, message=why))]
        return [ReadEval(ev)]

    def evaluated(self, msg: EvalRequest, metrics: Mapping[str, float]) -> list[Action]:
        """The weights of ``msg`` were evaluated: answer with their validation metrics only."""
        return [Send(EvalResult(msg.round, self._shared(metrics, _HELD)))]

    def final_report(self, metrics: Mapping[str, float]) -> list[Action]:
        """The final evaluation (``val_*``, ``personalized_val_*``) for the chief, if its Done asked and
        it was not sent yet; nothing otherwise."""
        if not self.report_due:
            return []
        self.report_due = False
        return [Send(EvalResult(self.round, self._shared(metrics, _FINAL), final=True))]

    def _shared(self, metrics: Mapping[str, float], prefixes: tuple[str, ...]) -> dict[str, float]:
        """What of ``metrics`` leaves this worker: none with secure aggregation (the chief sees sums only)."""
        if self.plan.secure_agg:
            log.warning("the chief asked for this worker's evaluation although its plan has secure aggregation; "
                        "answering without values")
            return {}
        return {k: float(v) for k, v in metrics.items() if k.startswith(prefixes)}

    def model_read(self, msg: Global | Done, model: list[np.ndarray]) -> list[Action]:
        """The weights after ``msg`` have been read: they are the model from now on, unless ``msg``
        is a Global of a round before the one this sync is for (a repeat of a model this worker
        already holds: the chief answered both a stale message of an earlier connection and its
        round's fan-out); then the sync goes on."""
        sync = self._sync
        if isinstance(msg, Global) and sync is not None and msg.round < sync.update.round:
            log.info("the chief sent the model of round %d again; still waiting for round %d",
                     msg.round, sync.update.round)
            if self.model is None:  # its memory held the one just read (see Client._read_model)
                self.model, self.specs = model, msg.tensors
            return []
        self.model = model
        self.specs = msg.tensors
        self.round = msg.round
        if isinstance(msg, Done):
            self.finished = True
            self.report_due = msg.report is not None
        self._sync = None
        return [Deliver(model)]

    def drop_model(self) -> None:
        """The memory of the model we hold is about to be overwritten: hold none until the next
        one arrives (if that fails, no half-written model is left behind)."""
        self.model = None

    def lost(self, reason: str, announced: bool = False, wait: float = 0.0) -> list[Action]:
        """The connection broke during a sync (``announced``: the chief said it stops and will be back;
        ``wait``: seconds the chief asked us to wait first)."""
        if not self.reconnect:
            return [Fail(ConnectionLost(reason))]
        return [Reconnect(reason, announced, wait)]

    def reconnected(self, welcome: Welcome, model: list[np.ndarray] | None) -> list[Action]:
        """The ``Welcome`` (and its model) of a new connection: resume the sync in progress.

        Returns nothing to do if the run is over (the chief sends Done next); the model to
        continue from if the round of the update closed meanwhile; else the update again
        (for secure aggregation: a fresh attempt).
        """
        self.plan = welcome.plan
        self.round = welcome.round
        if model is not None:
            self.model, self.specs = model, welcome.tensors
        sync = self._sync
        if sync is None:
            return []
        if self.round >= self.plan.rounds:
            return []
        if self.model is not None and self.round != sync.update.round - 1:
            log.info("round %d closed meanwhile; continuing from the chief's round %d",
                     sync.update.round, self.round)
            self._sync = None
            return [Deliver(self.model)]
        if sync.secure:
            log.info("starting secure aggregation of round %d again", sync.update.round)
            return self._new_attempt()
        log.info("re-sending the update for round %d", sync.update.round)
        return [Send(sync.update, sync.wire)]
