"""The chief's lifecycle: build the parts, listen, run the rounds, stop.

Each rule lives in one part (docs/architecture.md): admission in the
listener, identity and membership in the registry, a connection's
conversation in ``WorkerService``, rounds in ``RoundController`` and its
closer, the fan-out in ``Publisher``, and everything that reacts to a round
in the callbacks. ``Chief`` only wires them together and drives the run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fedsock import limits, tls
from fedsock.aggregation import Strategy, Transform, check_compatible, with_dp
from fedsock.checkpoint import atomic_write
from fedsock.chief.admission import reconnect_hints, shutdown_message
from fedsock.chief.callbacks import CallbackList, ChiefCallback, RunInfo
from fedsock.chief.closers import LocalCloser, RelayCloser, RoundCloser, SecureCloser
from fedsock.chief.config import ChiefConfig
from fedsock.chief.dispatch import WorkerService
from fedsock.chief.display import DisplayCallback, make_display
from fedsock.chief.handshake import Authenticator
from fedsock.chief.intake import decode_update, norm_bound
from fedsock.chief.listener import Listener
from fedsock.chief.monitor import Monitor
from fedsock.chief.notices import announce, log_already_finished, log_waiting
from fedsock.chief.outcomes import RoundResult
from fedsock.chief.outputs import Outputs, privacy_fields
from fedsock.chief.publish import Publisher, on_thread_holding, round_record
from fedsock.chief.records import Checkpoints, MetricsLog, write_failed
from fedsock.chief.registry import WorkerRegistry
from fedsock.chief.relay import Relay
from fedsock.chief.rounds import RoundController
from fedsock.chief.secure import SecureAggregation
from fedsock.chief.tensorboard import TensorBoard
from fedsock.errors import ErrorCode, StateWriteError
from fedsock.protocol import Global
from fedsock.statelock import StateDirLock
from fedsock.transport.aio import Session

log = logging.getLogger("fedsock.chief")
#: The longest pause between a worker's reconnection attempts (protocol 7.8): a worker whose
#: connection ended this long plus an idle timeout before the end may still come for its Done.
LONGEST_RECONNECT_PAUSE_S = limits.RECONNECT_BACKOFF_MAX_S * (1 + limits.RECONNECT_JITTER)
IO_THREADS = limits.IO_THREADS
STOP_GRACE_S = limits.STOP_GRACE_S


@dataclass(frozen=True)
class RunSummary:
    """What a finished chief run produced."""

    rounds: int
    final_metrics: dict[str, float]  # the last round's holdout metrics and federated ``fed_*`` (docs/evaluation.md)
    state_dir: str
    stopped: bool = False  # ended by SIGTERM/SIGINT before the last round


def build_strategy(config: ChiefConfig, strategy: Strategy | None) -> Strategy:
    """The run's strategy, checked against the config (DP, secure aggregation, min_workers) from what its
    reducer declares; with DP, a given strategy's reducer becomes the noised mean (``with_dp``)."""
    if strategy is None:
        return config.build_strategy()  # checked by config.validate()
    if config.dp:
        strategy = with_dp(strategy, config.dp_clip, config.dp_noise, secure_agg=config.secure_agg)
    check_compatible(strategy, secure_agg=config.secure_agg, dp=config.dp, min_workers=config.min_workers)
    return strategy


class Chief:
    """The federated averaging server.

    Args:
        config: settings; keyword arguments override its fields.
        transform: server transform on the combined delta; overrides the
            strategy's.
        strategy: a ``fedsock.aggregation.Strategy`` (reducer, transform,
            FedProx ``mu``), e.g. ``Strategy(median(), fedadam())``, or the
            ``--strategy`` text (``"fedadam"``); default: the config's.
        callbacks: ``ChiefCallback``s called after the built-in ones
            (metrics.jsonl, checkpoints, TensorBoard, status, display).

    Raises:
        ConfigError: invalid settings, or ``min_workers`` below what the
            strategy needs per round.
    """

    def __init__(self, config: ChiefConfig | None = None, *, transform: Transform | None = None,
                 strategy: Strategy | str | None = None, callbacks: Sequence[ChiefCallback] = (),
                 **overrides: Any) -> None:
        if isinstance(strategy, str):  # the --strategy text, like the CLI's
            overrides["strategy"], strategy = strategy, None
        self.config = cfg = replace(config or ChiefConfig(), **overrides)
        cfg.validate()
        self.strategy = build_strategy(cfg, strategy)
        self.controller = RoundController(
            rounds=cfg.rounds,
            # secure aggregation cannot start an attempt with fewer workers than its threshold
            min_workers=max(cfg.min_workers, cfg.secagg_threshold if cfg.secure_agg else 0),
            round_timeout=cfg.round_timeout, transform=transform or self.strategy.transform,
            reducer=self.strategy.reducer, fraction=cfg.fraction, seed=cfg.seed, decode=decode_update,
            prefold=norm_bound(cfg.dp_clip) if cfg.dp_clip > 0 else None,
        )
        self.outputs = Outputs(cfg)
        self.port: int | None = None
        self.listener: Listener | None = None  # once serving; its ``refused`` counts refused connections
        self.relay: Relay | None = None
        self.registry: WorkerRegistry[Session] = WorkerRegistry(cfg.idle_timeout)
        self.monitor = Monitor(cfg.min_workers, cfg.upstream)
        self.display = DisplayCallback(make_display(cfg.progress))
        self.metrics = MetricsLog(cfg.state_dir)
        self.checkpoints = Checkpoints(cfg.state_dir, cfg.keep_checkpoints, self.metrics)
        tensorboard = [TensorBoard(cfg.state_dir / "tensorboard")] if cfg.writes_tensorboard else []
        self.callbacks = CallbackList([self.metrics, self.checkpoints, *tensorboard, self.monitor, self.display,
                                       *callbacks])
        self.publisher = Publisher(cfg.send_timeout, self.callbacks, self.outputs.evaluate, self.controller.holds)
        secure = SecureAggregation(cfg, self.controller) if cfg.secure_agg else None
        self.service = WorkerService(cfg, self.controller, self.registry, self.publisher, self.monitor,
                                     self.callbacks, self.outputs, secure, self.strategy.mu, self._checkpoint)
        self._closer: RoundCloser = LocalCloser() if secure is None else SecureCloser(
            secure, self.service.send_secagg, lambda w: w in self.registry.live, self.registry.hold)
        self._last_metrics: dict[str, float] = {}
        self._holdout: dict[str, float] = {}  # the final model's holdout metrics, for final_evaluation.json
        self._publishing: asyncio.Future[None] | None = None  # the latest round's fan-out
        self._io = concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="fedsock-io")

    def run(self) -> RunSummary:
        """Serve until the last round is done (blocking).

        Raises:
            ConfigError: another chief holds the state dir (its PID is named).
        """
        with StateDirLock(self.config.state_dir):  # before anything in the state dir is touched
            return asyncio.run(self.serve())

    async def serve(self) -> RunSummary:
        """Serve until the last round is done."""
        cfg, ctrl = self.config, self.controller
        self.identity = tls.ensure_identity(cfg.state_dir, [h for h in (cfg.advertise, cfg.host) if h],
                                            cert_path=cfg.cert, key_path=cfg.key)
        # secure aggregation never admits the shared token: one holder could join as many Sybils as it likes
        # and recover an honest worker's update from the sum (docs/privacy.md)
        self.service.auth = Authenticator(self.identity.token, cfg.ca, cfg.state_dir,
                                          cfg.worker_tokens_only or cfg.secure_agg)
        if cfg.upstream is not None:
            self.relay = self.service.relay = await Relay.connect(
                cfg.upstream, cfg.upstream_token, cfg.upstream_name, reconnect_timeout=max(300.0, cfg.round_timeout))
            cfg = self.relay.start(cfg, ctrl, self.outputs)
            self.config = self.outputs.config = self.service.config = cfg
            self._closer = RelayCloser(self.relay, self.service.evaluation)
        model = self.outputs.prepare_model()
        if self.service.secure is not None:
            self.service.secure.announce_metrics(model.compile if model else None)
        # a relay's state lives upstream: it starts from the upstream's model, never a checkpoint
        resumed = self.checkpoints.resume(ctrl, model.specs if model else None) if self.relay is None else None
        if resumed is None and model is not None:
            ctrl.set_model(model.specs, model.weights)
        if ctrl.finished:  # before listening: every worker that joins gets Done right after its Welcome
            self.service.done.set()  # (the checkpoint's members had theirs from the chief that finished)
        else:
            self.registry.expect(resumed or (), time.monotonic())  # expect them back: they are reconnecting
        context = tls.server_context(self.identity.cert_path, self.identity.key_path, cfg.ca)
        self.listener = listener = Listener(context, cfg.handshake_timeout, self._io, cfg.heartbeat_interval,
                                            self.service.run)
        server = await listener.listen(cfg.host, cfg.port)
        self.port = server.sockets[0].getsockname()[1]
        local = cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        announce(cfg, self.port, self.identity)  # before chief.addr: whoever waits for it finds the command logged
        self.callbacks.on_run_begin(RunInfo(cfg.state_dir, ctrl.rounds, ctrl.round, self.port))
        try:  # atomically: a reader never sees an empty or half-written address
            atomic_write(cfg.state_dir / "chief.addr", f"{local}:{self.port}\n".encode())
        except OSError as exc:
            raise write_failed(str(cfg.state_dir / "chief.addr"), exc) from None
        await asyncio.to_thread(self.outputs.announce_privacy)
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            async with server:
                work = asyncio.create_task(self._train())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not work.done():
                    server.close()  # no new connections: a worker reconnecting now waits for the next chief
                    work.cancel()
                    if self._publishing is not None and not self._publishing.done():
                        # cut short, its sends would be aborted and the shutdown Error never reach anyone
                        await asyncio.wait({self._publishing}, timeout=STOP_GRACE_S)
                    log.warning("stopping on a signal after round %d; starting again on %s resumes there",
                                ctrl.round, cfg.state_dir)
                    live = list(self.registry.live.values())
                    self.service.stopping = "the chief is stopping; reconnect later"
                    # each worker is told when to come back, so that a restart is not met by all at once
                    await asyncio.gather(*(s.send_error(ErrorCode.SHUTDOWN, shutdown_message(ms), timeout=1.0,
                                                        retry_after_ms=ms)
                                           for s, ms in zip(live, reconnect_hints(len(live), random.Random()))))
                else:
                    try:
                        work.result()
                    except StateWriteError as exc:
                        await self._stop_for(exc)
                        raise
        finally:
            for s in list(self.registry.live.values()):
                s.abort()
            for _ in range(3):  # a connection accepted meanwhile has a task too: end it before the I/O threads
                handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
                if not handlers:
                    break
                for t in handlers:
                    t.cancel()
                await asyncio.gather(*handlers, return_exceptions=True)
            self._show()
            if listener.refused.before_tls or listener.refused.tls_failed:
                log.info("admission since the start: %s", listener.refused.describe())
            try:
                self.callbacks.on_run_end(ctrl.round)  # the display stops, the last metrics line is synced
            except Exception as exc:  # noqa: BLE001 - already stopping; the run's outcome is what counts
                log.warning("a callback failed at the end of the run: %s", exc)
            if self.relay is not None:
                self.relay.close()
            self._io.shutdown(wait=False)
        return RunSummary(ctrl.round, self._last_metrics, str(cfg.state_dir), stopped=stop.is_set())

    async def _stop_for(self, exc: StateWriteError) -> None:
        """The state dir cannot be written: tell every worker that the chief stops and will be back
        (Error shutdown, so they keep reconnecting), and for STOP_NOTICE_S tell the same to those
        that reconnect at once because their model was cut off (the round was never released)."""
        bye = (f"the chief cannot write its state dir ({exc.reason}) and stops; it resumes once restarted, "
               "keep reconnecting")
        self.service.stopping = bye
        told = list(self.registry.live.values())
        log.warning("the state dir cannot be written (%s): telling %d connected workers that the chief stops and "
                    "will be back; they keep reconnecting", exc.reason, len(told))
        await asyncio.gather(*(s.send_error(ErrorCode.SHUTDOWN, bye, timeout=1.0) for s in told))
        for s in told:  # their conversation is over (what was sent still arrives): nothing more goes out
            s.abort()
        await asyncio.sleep(limits.STOP_NOTICE_S)

    async def _train(self) -> None:
        ctrl = self.controller
        if ctrl.finished:
            log_already_finished(self.config, ctrl.round, ctrl.rounds)
            await self._finish(min_wait=3 * self.config.done_grace, conclude=False)
        else:
            await self._round_loop()
            await self._finish()

    async def _checkpoint(self) -> None:
        if self.relay is None:  # a relay resumes from its upstream, not from checkpoints
            snap, names = self.controller.snapshot(), self.registry.names(self.controller.members)
            await on_thread_holding(self.controller.holds, snap.weights,
                                    lambda: self.checkpoints.checkpoint(snap, names))

    def _show(self) -> None:
        """Hand the display a fresh snapshot."""
        self.display.update(self.monitor.snapshot(self.controller, len(self.registry.live), self.publisher.bytes_in))

    async def _round_loop(self) -> None:
        ctrl, who = self.controller, self.registry.who
        last_log = 0.0
        while not ctrl.finished:
            now = time.monotonic()
            self._show()
            if not ctrl.open_if_ready(now):
                if now - last_log > 10:
                    last_log = now
                    log_waiting(ctrl, who)
                await self._sleep_until_woken(5.0)
                continue
            if ctrl.should_close(now):
                if (result := await self._closer.close(ctrl, now)) is not None:
                    # shielded: a stop lets a recorded round's model reach the workers (see serve)
                    self._publishing = asyncio.ensure_future(self._publish(result))
                    await asyncio.shield(self._publishing)
                continue
            if ctrl.past_deadline_without_quorum(now):
                log.warning(
                    "round %d: %d of %d required updates by the deadline (from: %s; still training: %s);"
                    " retrying: the round stays open %g s more and keeps its updates",
                    ctrl.collecting, len(ctrl.submitted), ctrl.min_workers,
                    who(tuple(ctrl.submitted)), who(ctrl.expected()), ctrl.round_timeout)
                ctrl.extend(now)
            await self._sleep_until_woken(ctrl.seconds_left(now) or 5.0)

    async def _sleep_until_woken(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.service.wake.wait(), max(timeout, 0.01))
        self.service.wake.clear()

    async def _publish(self, result: RoundResult) -> None:
        """Hand out the new model; it is complete at the workers once evaluated, recorded and checkpointed."""
        ctrl, reg, cfg = self.controller, self.registry, self.config
        seconds = time.monotonic() - result.opened_at
        assert ctrl.specs is not None
        final = ctrl.finished
        if final:
            self.service.done.set()
        await self.service.drop_revoked()
        sessions = [reg.live[w] for w in reg.recipients(result.workers, ctrl.is_selected, final)]
        evals = self.service.evals
        msg = evals.done(result.round, ctrl.specs) if final else Global(result.round, ctrl.specs)
        fields = {"seconds": seconds, "names": [reg.name_of(w) for w in result.workers],
                  "members": reg.names(ctrl.members), "final": final, "fraction": cfg.fraction,
                  "snapshot": ctrl.snapshot() if self.relay is None else None,  # a relay resumes upstream
                  "privacy": privacy_fields(cfg, result.round) if cfg.dp else {}}
        trained = self.service.evaluation.take(result.round, result.workers)
        held, asked = evals.take(result.round)  # held workers' answers (docs/evaluation.md); a trained one wins
        per = {reg.name_of(w): ev for w, ev in {**held, **trained}.items()}
        held_names = tuple(sorted(reg.name_of(w) for w in held if w not in trained))
        if final:  # before the first Done is out: a worker may report as soon as it has read it
            evals.expect_final(sessions)
        record, sent = await self.publisher.publish(
            result, msg, sessions, lambda bytes_in, bytes_out, metrics: replace(round_record(
                result, bytes_in, bytes_out, metrics, **fields), worker_metrics=per, held_workers=held_names,
                held_asked=asked))
        fed = {k: v for k, v in record.federated().items() if isinstance(v, float)}
        self._last_metrics = {**record.metrics, **fed}  # holdout metrics, and the workers' federated ones
        self._show()
        if final:
            self._holdout = dict(record.metrics)
            for s, n in zip(sessions, sent):
                if n and s.worker_id is not None:
                    reg.done(s.worker_id)
        else:
            evals.ask_held()  # the new round's held workers, once its model is out

    async def _finish(self, min_wait: float = 0.0, conclude: bool = True) -> None:
        """Save the final model; keep handing out Done while workers hang up (at most ``done_grace`` s,
        at least ``min_wait`` s for reconnecting ones, and with ``conclude`` until the final reports
        are in or ``final_eval_timeout`` has passed); then write final_evaluation.json."""
        ctrl = self.controller
        assert ctrl.specs is not None and ctrl.weights is not None
        try:
            self.outputs.save_final(ctrl.specs, ctrl.weights)
        except OSError as exc:  # the last checkpoint holds the same model: a restarted chief hands it out
            raise write_failed(f"the final model to {self.config.state_dir}", exc, ctrl.round) from None
        start = time.monotonic()
        while True:
            waited = time.monotonic() - start
            # workers that dropped out recently (e.g. reconnecting) still deserve their Done
            pending = self.registry.owed_done(start - self.config.idle_timeout - LONGEST_RECONNECT_PAUSE_S)
            reports = conclude and self.service.evals.waiting(self.registry.live)
            if waited >= max(min_wait, self.config.done_grace) and not reports:
                if pending:
                    log.warning("gave up waiting for %s to reconnect for the final model", self.registry.who(pending))
                break
            if waited >= min_wait and not self.registry.live and not pending:
                break
            await asyncio.sleep(0.05)
        if conclude:
            self.service.evals.conclude(ctrl.round, self._holdout)
        log.info("training finished after %d rounds; final model in %s", ctrl.round, self.config.state_dir)
