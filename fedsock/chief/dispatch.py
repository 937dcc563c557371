"""One worker's conversation with the chief, from Hello to its end.

``WorkerService`` runs each admitted connection: the handshake (to a
value), membership through the registry, the Welcome, then the worker's
messages, routed to the round controller or secure aggregation. Updates are
read on the event loop, staged once and folded only when complete (see
staging.py and docs/performance.md). A bad peer costs its own connection and
nothing else: its error is logged once and it gets an ``Error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from fedsock.chief.callbacks import ChiefCallback, WorkerJoined, WorkerLeft
from fedsock.chief.config import ChiefConfig
from fedsock.chief.evalrequests import EvalRequests
from fedsock.chief.evaluation import WorkerMetrics
from fedsock.chief.handshake import Admitted, Authenticator, Refused, StatusQuery, handshake
from fedsock.chief.intake import check_initial, check_update
from fedsock.chief.listener import Ticket
from fedsock.chief.monitor import Monitor
from fedsock.chief.outcomes import Accepted, Duplicate, NotSelected, Stale
from fedsock.chief.outputs import Outputs
from fedsock.chief.publish import Publisher
from fedsock.chief.registry import Full, Joined, NameInUse, WorkerRegistry
from fedsock.chief.relay import Relay
from fedsock.chief.rounds import RoundController
from fedsock.chief.secure import SecureAggregation
from fedsock.chief.staging import StagingBudget
from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol import (
    SECAGG_METRICS_FEATURE,
    Ack,
    ConnectionClosed,
    Error,
    EvalResult,
    Global,
    Heartbeat,
    Plan,
    Update,
    Welcome,
    loggable,
    required_features,
)
from fedsock.protocol.secagg import SecAggKeys, SecAggMasked, SecAggReveal, SecAggShares
from fedsock.protocol.tensors import check_signature
from fedsock.transport.aio import Session

log = logging.getLogger("fedsock.chief")
SecAggMessage = SecAggKeys | SecAggShares | SecAggReveal | SecAggMasked


class WorkerService:
    """Everything the chief does for one connection. Args are the chief's parts it works with."""

    def __init__(self, config: ChiefConfig, ctrl: RoundController, registry: WorkerRegistry[Session],
                 publisher: Publisher, monitor: Monitor, callbacks: ChiefCallback, outputs: Outputs,
                 secure: SecureAggregation | None, mu: float, checkpoint: Callable[[], Awaitable[None]]) -> None:
        self.config, self.ctrl, self.registry, self.publisher = config, ctrl, registry, publisher
        self.monitor, self.callbacks, self.outputs = monitor, callbacks, outputs
        self.secure, self.mu, self.checkpoint = secure, mu, checkpoint
        self.auth: Authenticator | None = None  # set once the chief has its identity
        self.relay: Relay | None = None
        #: --max-examples (a setting of its own once the settings declare it)
        self.max_examples = config.max_examples
        self.staging = StagingBudget()
        self.evaluation = WorkerMetrics()  # the metrics of accepted updates, per round and worker
        self.evals = EvalRequests(config, ctrl, registry, publisher)  # held workers' and the final evaluation
        self.wake = asyncio.Event()  # something the round loop waits for happened
        self.done = asyncio.Event()  # the run is over: Done for everyone
        #: Set while the chief stops (its state dir unwritable): what new connections are told (Error shutdown).
        self.stopping: str | None = None
        self._conn_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, s: Session, ticket: Ticket) -> None:
        """A connection whose TLS handshake is done, to its end."""
        cfg = self.config
        assert self.auth is not None
        try:
            try:
                outcome = await asyncio.wait_for(handshake(s, self.auth, self.registry.reconnect_secret,
                                                           cfg.handshake_timeout), cfg.handshake_timeout)
            except TimeoutError:
                ticket.failed()  # a handshake timeout is a failed authentication
                raise
            # A connection that does not become a member keeps its pre-authentication slot until it
            # is closed (its Error's drain included), so refused ones cannot pile up past the cap.
            if isinstance(outcome, Refused):
                if outcome.why is not None:
                    log.warning("authentication failed for %r from %s: %s", s.name, s.peer, outcome.why)
                    ticket.failed()
                elif outcome.code is None:  # it gave up before Auth: no free retries either
                    ticket.failed()
                if outcome.code is not None:
                    await s.send_error(outcome.code, outcome.message)
            elif isinstance(outcome, StatusQuery):  # read-only: answer and hang up; it never joins
                await s.send(self.monitor.status(self.ctrl, self.registry.live, outcome.full),
                             timeout=cfg.handshake_timeout)
                log.info("answered a status query from %r (%s)", s.name, s.peer)
            elif self.stopping is not None:  # a worker whose model was cut off learns that the chief will be back
                await s.send_error(ErrorCode.SHUTDOWN, self.stopping)
            elif self._missing_features(s):
                await s.send_error(ErrorCode.UNSUPPORTED_FEATURE, self._missing_features(s))
            elif await self._join(s, outcome):
                ticket.authenticated()
                await self._welcome(s)
                await self._serve(s)
        except Exception as exc:
            await self._failed(s, exc)
        except asyncio.CancelledError:  # the chief is stopping
            s.abort()
        finally:
            await self._ended(s)

    async def _failed(self, s: Session, exc: Exception) -> None:
        if isinstance(exc, TimeoutError | ConnectionError) and s.worker_id is not None and not s.replaced:
            self.registry.done_unconfirmed(s.worker_id)  # a Done on it may not have got through
        if s.replaced:  # its end was logged when it was replaced
            log.debug("%s: old connection ended (%r)", s.label, exc)
        elif isinstance(exc, RemoteProtocolError):
            log.warning("%s: %s [%s]", s.label, exc, exc.code)
            await s.send_error(exc.code, str(exc))
        elif isinstance(exc, TimeoutError):
            log.warning("%s: %s, dropping the connection", s.label, str(exc) or "silent for too long")
            await s.send_error(ErrorCode.TIMEOUT, str(exc) or "no message within the time limit")
        elif isinstance(exc, ConnectionError | OSError):
            log.info("%s: connection lost (%s)", s.label, exc or type(exc).__name__)
        else:  # a bug here must cost one connection, not the chief
            log.error("%s: internal error; dropping the connection", s.label, exc_info=exc)
            await s.send_error(ErrorCode.INTERNAL, "internal error on the chief; see its log")

    async def _ended(self, s: Session) -> None:
        wid = s.worker_id
        if wid is not None:
            self.callbacks.on_worker_left(WorkerLeft(wid, s.name, s.bytes_in, s.bytes_out, s.last_received,
                                                     replaced=s.replaced))
            self.evals.left(s)
            if self.registry.leave(wid, s, time.monotonic()):
                self.ctrl.leave(wid)
                if self.secure is not None:
                    self.secure.left(wid)
                self.wake.set()
        await s.close()

    async def _join(self, s: Session, who: Admitted) -> bool:
        s.conn_id = next(self._conn_ids)
        verdict = self.registry.join(who.name, who.instance, s, who.proven, time.monotonic())
        if isinstance(verdict, NameInUse):  # not the address's fault: it counts as nothing against it
            log.info("refused %r from %s: the name is held by a running worker for %.0f s more",
                     s.name, s.peer, verdict.wait_s)
            await s.send_error(ErrorCode.NAME_IN_USE, verdict.message)
            return False
        if isinstance(verdict, Full):
            await s.send_error(ErrorCode.BUSY, verdict.message)
            return False
        assert isinstance(verdict, Joined)
        s.worker_id, s.reconnect_secret = verdict.worker, verdict.secret
        if verdict.replaced is not None:
            verdict.replaced.replaced = True  # from now on its events are ignored and its end is not logged
            log.info("%s reconnected from %s; its old connection (%s) is replaced", s.label, s.peer,
                     verdict.replaced.peer)
            self._spawn(self._evict(verdict.replaced))
        if self.secure is not None:
            self.secure.joined(verdict.worker)
        self.callbacks.on_worker_joined(WorkerJoined(verdict.worker, s.name, s.peer))
        log.info("%s joined from %s", s.label, s.peer)
        return True

    async def _evict(self, old: Session) -> None:
        await old.send_error(ErrorCode.NAME_IN_USE, "replaced by a newer connection of this worker")
        old.abort()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drop_revoked(self) -> None:
        """Close the live connections of workers whose token was revoked."""
        assert self.auth is not None
        revoked = self.auth.revoked()
        for wid, s in list(self.registry.live.items()):
            if s.name in revoked:
                log.warning("%s: its token was revoked; dropping it", s.label)
                await s.send_error(ErrorCode.AUTH_FAILED, "authentication failed: your token was revoked")
                s.abort()
                self.ctrl.leave(wid)

    async def _welcome(self, s: Session) -> None:
        """Welcome with plan, model and global weights; Done right after if the run is over."""
        assert s.worker_id is not None
        ctrl, m, cfg = self.ctrl, self.outputs.model_info, self.config
        # a relay hands on its upstream's FedProx mu, as it does the rest of the upstream's plan
        mu = self.relay.client.plan.mu if self.relay is not None else self.mu
        plan = Plan(cfg.rounds, cfg.sync_every, cfg.batch_size, mu, secure_agg=cfg.secure_agg,
                    dp_clip=cfg.dp_clip, dp_noise=cfg.dp_noise, heartbeat_interval=cfg.heartbeat_interval,
                    idle_timeout=cfg.idle_timeout, round_timeout=cfg.round_timeout, min_workers=cfg.min_workers)
        welcome = Welcome(
            worker_id=s.worker_id, round=ctrl.round, plan=plan,
            tensors=(ctrl.specs or ()) if ctrl.has_model else (),
            model=m.config if m else None, compile=m.compile if m else None,
            has_weights=ctrl.has_model, compress=cfg.compress, reconnect_secret=s.reconnect_secret,
            requires=required_features(plan),
        )
        weights = ctrl.weights if ctrl.weights is not None else []
        await self.publisher.send_weights(s, welcome, weights)
        if self.done.is_set():
            assert ctrl.specs is not None
            await self.publisher.send_weights(s, self.evals.done_for(s, ctrl.round, ctrl.specs), ctrl.weights or [])
            self.registry.done(s.worker_id)
        elif ctrl.has_model:
            ctrl.join(s.worker_id)
            # Open the round now if this worker completes the quorum, before its first message is
            # read: with --fraction, what arrives for a round that is not open yet joins its sample.
            ctrl.open_if_ready(time.monotonic())
            self.wake.set()

    async def _serve(self, s: Session) -> None:
        heartbeat = asyncio.create_task(self._heartbeats(s))
        try:
            while True:
                ev = await s.next_event(self.config.idle_timeout)
                if s.replaced:  # a newer connection speaks for this worker now
                    return
                if isinstance(ev, Heartbeat):
                    continue
                if isinstance(ev, ConnectionClosed):
                    log.info("%s disconnected", s.label)
                    return
                if isinstance(ev, Error):
                    log.warning("%s gave up: %s [%s]", s.label, loggable(ev.message), loggable(ev.code))
                    return
                if isinstance(ev, SecAggMessage):
                    await self._on_secagg(s, ev)
                    continue
                if isinstance(ev, EvalResult):
                    self.evals.on_result(s, ev)
                    continue
                assert isinstance(ev, Update), ev
                await self._read_update(s, ev)
        finally:
            heartbeat.cancel()

    async def _read_update(self, s: Session, ev: Update) -> None:
        if self.secure is not None and ev.round != 0:
            raise RemoteProtocolError("this chief runs secure aggregation: send SecAggKeys, not a plain "
                                      "Update", code=ErrorCode.OUT_OF_ORDER)
        check_update(ev.tensors, ev.num_examples, self.config.compress, self.max_examples)
        header_bytes = s.conn.last_frame_bytes
        # A connection cut inside the chunks raises here: the partial update is discarded, never half-averaged.
        if self.ctrl.specs is not None and not self.done.is_set():  # before staging: model size only
            check_signature(self.ctrl.specs, ev.tensors)
        # Staged once, folded only when complete and checked (see staging.py).
        async with self.staging.hold(sum(t.wire_nbytes for t in ev.tensors)) as slot:
            weights, chunk_bytes = await s.read_weights(ev.tensors, self.config.idle_timeout, slot)
            self.publisher.bytes_in += header_bytes + chunk_bytes
            if not self.done.is_set():  # after Done, late updates are moot
                await self._on_update(s, ev, weights)
            del weights

    async def _on_update(self, s: Session, upd: Update, weights: list[np.ndarray]) -> None:
        ctrl, wid = self.ctrl, s.worker_id
        assert wid is not None
        if upd.round == 0:  # an initial model proposal (bring your own model)
            check_initial(upd.tensors)
            if self.relay is not None:
                await self.relay.propose_initial(ctrl, self.outputs, upd.tensors, weights)
            if ctrl.propose_initial(upd.tensors, weights):
                log.info("round 0: adopted the weights of %s as the initial model (%d tensors)",
                         s.label, len(weights))
                await self.checkpoint()  # a restarted chief must not forget it
            ctrl.join(wid)
            ctrl.open_if_ready(time.monotonic())  # as in _welcome
            self.wake.set()
            assert ctrl.weights is not None and ctrl.specs is not None
            await self.publisher.send_weights(s, Global(ctrl.round, ctrl.specs), ctrl.weights)
            return
        verdict = ctrl.submit(wid, upd.round, upd.num_examples, upd.tensors, weights, s.conn_id)
        if isinstance(verdict, Accepted):
            self.evaluation.put(upd.round, wid, upd.num_examples, upd.metrics)
            log.debug("%s: update for round %d (%d examples)", s.label, upd.round, upd.num_examples)
            self.wake.set()  # first: the round may close now, without waiting for the Ack to go out
            await self._ack(s, upd.round, sampled=True)
        elif isinstance(verdict, Duplicate):
            log.info("%s re-sent its round %d update after reconnecting; the first copy counts",
                     s.label, upd.round)
        elif isinstance(verdict, NotSelected):
            log.debug("%s: not sampled for round %d; it waits", s.label, upd.round)
            self.registry.hold(wid)
            await self._ack(s, upd.round, sampled=False)
            self.evals.on_held(s)
        else:
            log.info("%s: late update for round %d dropped (collecting round %d)",
                     s.label, verdict.round, verdict.current)
            self.monitor.late_update()
            self.wake.set()  # the display shows it
            await self._answer_stale(s, wid)

    def _missing_features(self, s: Session) -> str:
        """Why a worker whose Hello listed its features cannot train with this chief ("": it can)."""
        cfg = self.config
        need = required_features(Plan(cfg.rounds, 1, 1, secure_agg=cfg.secure_agg, dp_clip=cfg.dp_clip))
        missing = [f for f in need if s.conn.features is not None and f not in s.conn.features]
        if not missing:
            return ""
        return (f"this chief's plan requires {', '.join(missing)}, which the worker says it does not implement "
                "(its Hello's features); use a worker that does")

    async def _ack(self, s: Session, round_: int, sampled: bool) -> None:
        """Tell a worker whose Hello asked for it what became of its update (protocol.md 7.4)."""
        if s.conn.acks and not s.conn.we_finished:  # not after our Error (the chief stopping)
            ctrl = self.ctrl
            waiting = len(ctrl.expected()) if ctrl.is_open else 0
            await s.send(Ack(round_, sampled, len(ctrl.submitted), waiting), timeout=self.config.send_timeout)

    async def _answer_stale(self, s: Session, wid: int) -> None:
        """The newest model for a worker that sent something for a closed round (once per round)."""
        ctrl = self.ctrl
        if not ctrl.is_selected(wid):
            self.registry.hold(wid)
            self.evals.on_held(s)
        elif self.registry.allow_stale_reply(wid, ctrl.collecting):
            assert ctrl.weights is not None and ctrl.specs is not None
            await self.publisher.send_weights(s, Global(ctrl.round, ctrl.specs), ctrl.weights)

    async def _on_secagg(self, s: Session, ev: SecAggMessage) -> None:
        """Route a secure-aggregation message; a masked update is summed, never kept."""
        sec, wid = self.secure, s.worker_id
        assert wid is not None
        if sec is None:
            raise RemoteProtocolError("this chief does not run secure aggregation", code=ErrorCode.OUT_OF_ORDER)
        if isinstance(ev, SecAggMasked):
            header_bytes = s.conn.last_frame_bytes
            ours = not self.done.is_set() and sec.check_masked(wid, ev.round, ev.attempt, ev.tensors, ev.excluded)
            async with self.staging.hold(sum(t.wire_nbytes for t in ev.tensors)) as slot:
                masked, chunk_bytes = await s.read_weights(ev.tensors, self.config.idle_timeout, slot)
                self.publisher.bytes_in += header_bytes + chunk_bytes
                if ours:
                    sec.add_masked(wid, ev.round, ev.attempt, masked)
                del masked
            return
        self.publisher.bytes_in += s.conn.last_frame_bytes
        if isinstance(ev, SecAggShares):
            sec.on_shares(wid, ev)
        elif isinstance(ev, SecAggReveal):
            sec.on_reveal(wid, ev)
        elif not self.done.is_set():
            verdict = sec.on_keys(wid, ev, s.conn_id, metrics=SECAGG_METRICS_FEATURE in (s.conn.features or ()))
            if isinstance(verdict, NotSelected):
                self.registry.hold(wid)
            elif isinstance(verdict, Stale):
                log.info("%s: keys for round %d, which is closed; sending round %d", s.label, ev.round,
                         self.ctrl.round)
                await self._answer_stale(s, wid)
            self.wake.set()

    async def send_secagg(self, wid: int, msg: Any) -> bool:
        """A secure-aggregation message to a worker (for ``SecureCloser``)."""
        return await self.publisher.send_small(self.registry.live.get(wid), msg)

    async def _heartbeats(self, s: Session) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval / 2)
            if time.monotonic() - s.last_sent >= interval and not s.conn.we_finished:
                with contextlib.suppress(Exception):
                    await s.send(Heartbeat(), timeout=self.config.send_timeout)
