"""The chief: a TLS listener, one task per worker, and the round loop.

All round logic lives in ``RoundController``; this module moves bytes,
enforces timeouts, and writes outputs (metrics, checkpoints, final model).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import secrets
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from fedsock import limits, tls
from fedsock.aggregation import Strategy, Transform
from fedsock.checkpoint import atomic_write
from fedsock.chief.admission import FailureLimiter, PreAuthCounts
from fedsock.chief.config import ChiefConfig
from fedsock.chief.display import make_display
from fedsock.chief.intake import check_update
from fedsock.chief.monitor import Monitor
from fedsock.chief.outputs import Outputs
from fedsock.chief.registry import Full, Joined, NameInUse, WorkerRegistry
from fedsock.chief.relay import Relay
from fedsock.chief.rounds import Accepted, Duplicate, NotSelected, RoundController, RoundResult, Stale
from fedsock.chief.secure import Outcome, SecureAggregation
from fedsock.chief.sendslots import SendSlots
from fedsock.chief.session import Session
from fedsock.chief.staging import StagingBudget
from fedsock.chief.tokens import TokenStore
from fedsock.errors import ConfigError, ErrorCode, RemoteProtocolError
from fedsock.protocol import (
    Auth,
    ConnectionClosed,
    Done,
    Error,
    Global,
    Heartbeat,
    Hello,
    Plan,
    Update,
    Welcome,
    check_name,
    verify_reconnect_proof,
)
from fedsock.protocol.connection import message_bytes
from fedsock.protocol.messages import Challenge
from fedsock.protocol.secagg import SecAggKeys, SecAggMasked, SecAggReveal, SecAggShares
from fedsock.protocol.tensors import check_signature

log = logging.getLogger("fedsock.chief")
T = TypeVar("T")
#: Most weights messages (Global, Done) being written at once. Each takes an
#: I/O thread and the kernel buffers of its connection, so this bounds the
#: chief's threads and memory when a round ends for a thousand workers at once.
MAX_CONCURRENT_SENDS = 16
#: Threads that send weights messages (TLS and copies, off the event loop; updates are read on it).
IO_THREADS = 64


@dataclass(frozen=True)
class RunSummary:
    """What a finished chief run produced."""

    rounds: int
    final_metrics: dict[str, float]
    state_dir: str
    stopped: bool = False  # ended by SIGTERM/SIGINT before the last round


def _take_socket(transport: asyncio.Transport) -> socket.socket:
    """The admitted connection's socket, taken over from its (paused) transport, non-blocking."""
    ts = transport.get_extra_info("socket")
    sock = socket.socket(ts.family, ts.type, ts.proto, fileno=os.dup(ts.fileno()))
    transport.abort()  # closes the transport's descriptor only; the connection lives on in ours
    sock.setblocking(False)
    return sock


class _Admission(asyncio.Protocol):
    """Holds a fresh TCP connection still (no bytes read) until the chief has
    admitted it and starts TLS on it; reading early would swallow the
    ClientHello."""

    def __init__(self, chief: Chief) -> None:
        self.chief = chief

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self.chief._accept(transport))

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class Chief:
    """The federated averaging server.

    Args:
        config: settings; keyword arguments override its fields.
        transform: server transform on the combined delta; overrides the
            strategy's.
        strategy: a ``fedsock.aggregation.Strategy`` (reducer, transform,
            FedProx ``mu``), e.g. ``Strategy(median(), fedadam())``, or the
            ``--strategy`` text (``"fedadam"``); default: the config's.

    Raises:
        ConfigError: invalid settings, or ``min_workers`` below what the
            strategy needs per round.
    """

    def __init__(self, config: ChiefConfig | None = None, *, transform: Transform | None = None,
                 strategy: Strategy | str | None = None, **overrides: Any) -> None:
        if isinstance(strategy, str):  # the --strategy text, like the CLI's
            overrides["strategy"], strategy = strategy, None
        self.config = replace(config or ChiefConfig(), **overrides)
        self.config.validate()
        if strategy is not None and self.config.dp:
            raise ConfigError("with dp_clip, give the strategy as its --strategy text (e.g. 'fedadam'): "
                              "the chief then swaps in the differential-privacy reducer itself")
        self.strategy = strategy or self.config.build_strategy()
        if self.config.secure_agg and self.strategy.name.split(":")[0] not in (
                "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
            raise ConfigError(f"strategy {self.strategy.name} cannot be combined with secure aggregation: "
                              "it needs every worker's own update, and the chief sees only their sum")
        if self.config.min_workers < self.strategy.min_updates:
            raise ConfigError(f"strategy {self.strategy.name} needs at least {self.strategy.min_updates} "
                              "updates per round; set min_workers to that or more")
        self.controller = RoundController(
            rounds=self.config.rounds,
            # secure aggregation cannot start an attempt with fewer workers than its threshold
            min_workers=max(self.config.min_workers, self.config.secagg_threshold if self.config.secure_agg else 0),
            round_timeout=self.config.round_timeout,
            transform=transform or self.strategy.transform,
            reducer=self.strategy.reducer,
            fraction=self.config.fraction,
            seed=self.config.seed,
            dp_clip=self.config.dp_clip,
        )
        self.outputs = Outputs(self.config)
        self.port: int | None = None
        self.registry: WorkerRegistry[Session] = WorkerRegistry(self.config.idle_timeout)
        self._sessions = self.registry.live  # worker id -> its live connection
        self._conn_ids = itertools.count(1)
        self._preauth = PreAuthCounts()
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_examples: int = getattr(self.config, "max_examples", limits.MAX_EXAMPLES)
        self._failures = FailureLimiter()
        self._refusal_logged: dict[str, float] = {}
        self._tokens = TokenStore(self.config.state_dir)
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._round_bytes_in = 0
        self._last_metrics: dict[str, float] = {}
        self.display = make_display(self.config.progress)
        self.monitor = Monitor(self.config.min_workers, self.config.upstream)
        self.relay: Relay | None = None
        self._staging = StagingBudget()
        self._send_slots = SendSlots(MAX_CONCURRENT_SENDS)
        self._secure = SecureAggregation(self.config, self.controller) if self.config.secure_agg else None
        self._round_extra: dict[str, Any] = {}
        self._round_bytes_out = 0  # besides the Global/Done: secure aggregation's messages
        self._io = concurrent.futures.ThreadPoolExecutor(IO_THREADS, thread_name_prefix="fedsock-io")

    # --- entry points -----------------------------------------------------

    def run(self) -> RunSummary:
        """Serve until the last round is done (blocking)."""
        return asyncio.run(self.serve())

    async def serve(self) -> RunSummary:
        """Serve until the last round is done."""
        cfg, ctrl = self.config, self.controller
        self.identity = tls.ensure_identity(cfg.state_dir, [h for h in (cfg.advertise, cfg.host) if h],
                                            cert_path=cfg.cert, key_path=cfg.key)
        self._ssl = tls.server_context(self.identity.cert_path, self.identity.key_path, cfg.ca)
        if cfg.upstream is not None:
            self.relay = await Relay.connect(cfg.upstream, cfg.upstream_token, cfg.upstream_name,
                                             reconnect_timeout=max(300.0, cfg.round_timeout))
            self.config = self.outputs.config = cfg = self.relay.start(cfg, ctrl, self.outputs)
        model = self.outputs.prepare_model()
        # a relay's state lives upstream: it starts from the upstream's model, never a checkpoint
        resumed = self.outputs.resume(ctrl, model.specs if model else None) if self.relay is None else None
        if resumed is None and model is not None:
            ctrl.set_model(model.specs, model.weights)
        self.registry.expect(resumed or (), time.monotonic())  # expect them back: they are reconnecting
        self.outputs.start_tensorboard()  # before listening: chief.addr means ready
        # Plain TCP first: admission is decided before TLS costs anything (see _Admission).
        server = await asyncio.get_running_loop().create_server(lambda: _Admission(self), cfg.host, cfg.port)
        self.port = server.sockets[0].getsockname()[1]
        local = cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        self._announce()  # before chief.addr: whoever waits for the address finds the join command logged
        # atomically: a reader never sees an empty or half-written address
        atomic_write(cfg.state_dir / "chief.addr", f"{local}:{self.port}\n".encode())
        await asyncio.to_thread(self.outputs.announce_privacy)
        self.display.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not in the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        try:
            async with server:
                work = asyncio.create_task(self._train())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not work.done():
                    work.cancel()
                    log.warning("stopping on a signal after round %d; starting again on %s resumes there",
                                ctrl.round, cfg.state_dir)
                    await asyncio.gather(*(s.send_error(ErrorCode.SHUTDOWN, "the chief is stopping; reconnect later",
                                                        timeout=1.0)
                                           for s in list(self._sessions.values())))
                else:
                    work.result()
        finally:
            for s in list(self._sessions.values()):
                s.abort()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in handlers:
                t.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            self._show()
            self.display.stop()
            with contextlib.suppress(Exception):  # the last metrics line, if its fsync is still under way
                self.outputs.sync_metrics()
            if self.relay is not None:
                self.relay.close()
            if self.outputs.tensorboard is not None:
                self.outputs.tensorboard.close()
            self._io.shutdown(wait=False)
        return RunSummary(ctrl.round, self._last_metrics, str(cfg.state_dir), stopped=stop.is_set())

    async def _train(self) -> None:
        ctrl = self.controller
        if ctrl.finished:
            log.info("the run already finished (round %d of %d); handing out the final model",
                     ctrl.round, ctrl.rounds)
            self._done.set()
            await self._finish(min_wait=3 * self.config.done_grace)
        else:
            await self._round_loop()
            await self._finish()

    async def _close_round(self, now: float) -> RoundResult:
        """Close the open round here, or (relay) through the upstream chief."""
        if self.relay is None:
            return self.controller.close(now)
        return await self.relay.close_round(self.controller)

    async def _checkpoint(self) -> None:
        if self.relay is None:  # a relay resumes from its upstream, not from checkpoints
            await asyncio.to_thread(self.outputs.checkpoint, self.controller.snapshot(), self._member_names())

    def _show(self) -> None:
        """Hand the display a fresh snapshot."""
        self.display.update(self.monitor.snapshot(self.controller, len(self._sessions), self._round_bytes_in))

    def _announce(self) -> None:
        cfg, ident = self.config, self.identity
        host = cfg.advertise or (cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "CHIEF_HOST")
        log.info("fedsock chief listening on %s:%s (TLS 1.3, state dir %s)", cfg.host, self.port, cfg.state_dir)
        log.info("certificate sha256 %s%s", ident.token.fingerprint.hex(), " (new)" if ident.created else "")
        log.info("join token (also in %s): %s", cfg.state_dir / "token", ident.token)
        log.info("start a worker with:\n  python worker.py --chief %s:%s --token %s --data ./shard",
                 host, self.port, ident.token)

    def _member_names(self) -> list[str]:
        return self.registry.names(self.controller.members)

    def _label(self, worker: int) -> str:
        return self.registry.label(worker)

    def _who(self, workers: set[int] | tuple[int, ...]) -> str:
        return self.registry.who(workers)

    # --- connections ------------------------------------------------------

    async def _accept(self, raw: asyncio.Transport) -> None:
        """One TCP connection: admission, TLS, handshake, then the worker's session."""
        peer = raw.get_extra_info("peername")
        address, label = (peer[0], f"{peer[0]}:{peer[1]}") if peer else ("?", "?")
        # Admission before TLS: refusing costs one accept() and a close, nothing more.
        refusal = self._preauth.refusal(address)
        if refusal is None and self._failures.blocked(address, time.monotonic()):
            refusal = f"over {limits.MAX_AUTH_FAILURES_PER_MINUTE} failed authentications a minute"
        if refusal is not None:
            self._log_refusal(address, refusal)
            raw.abort()
            return
        self._preauth.enter(address)
        authenticated = False
        sock = _take_socket(raw)
        try:
            tsock = await asyncio.wait_for(self._start_tls(sock), self.config.handshake_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure here is the peer's or the network's
            timeout = isinstance(exc, TimeoutError | asyncio.TimeoutError)
            log.info("%s: TLS handshake failed: %s", label,
                     "no TLS handshake within the time limit" if timeout else tls.describe_tls_failure(exc))
            if timeout:  # holding a slot without a handshake counts as a failed authentication
                self._failures.failed(address, time.monotonic())
            sock.close()  # a TLS alert, if any, went out with the failed handshake
            self._preauth.leave(address)
            return
        except asyncio.CancelledError:
            sock.close()
            self._preauth.leave(address)
            return
        s = Session(tsock, label, self._io)
        s.keepalive_s = self.config.heartbeat_interval
        try:
            try:
                joined = await asyncio.wait_for(self._handshake(s), self.config.handshake_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                self._failures.failed(address, time.monotonic())  # a handshake timeout is a failed authentication
                raise
            self._preauth.leave(address)
            authenticated = True
            if joined:
                await self._welcome(s)
                await self._serve_worker(s)
        except Exception as exc:
            if s.replaced:  # its end was logged when it was replaced
                log.debug("%s: old connection ended (%r)", s.label, exc)
            elif isinstance(exc, RemoteProtocolError):
                log.warning("%s: %s [%s]", s.label, exc, exc.code)
                await s.send_error(exc.code, str(exc))
            elif isinstance(exc, asyncio.TimeoutError | TimeoutError):
                log.warning("%s: silent for too long, dropping the connection", s.label)
                await s.send_error("timeout", "no message within the time limit")
            elif isinstance(exc, ConnectionError | OSError):
                log.info("%s: connection lost (%s)", s.label, exc or type(exc).__name__)
            else:  # a bug here must cost one connection, not the chief
                log.exception("%s: internal error; dropping the connection", s.label)
                await s.send_error("internal", "internal error on the chief; see its log")
        except asyncio.CancelledError:  # the chief is stopping
            s.abort()
        finally:
            if not authenticated:
                self._preauth.leave(address)
            wid = s.worker_id
            self.monitor.connection_ended(s)
            if wid is not None and self.registry.leave(wid, s):
                self.controller.leave(wid)
                if self._secure is not None:
                    self._secure.left(wid)
                self._wake.set()
            await s.close()

    async def _start_tls(self, sock: socket.socket) -> ssl.SSLSocket:
        """The server side of the TLS handshake on the event loop (the socket is non-blocking)."""
        tsock = self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    tsock.do_handshake()
                    return tsock
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as want:
                    write = isinstance(want, ssl.SSLWantWriteError)
                    ready: asyncio.Future[None] = loop.create_future()
                    fd = tsock.fileno()

                    def wake(ready: asyncio.Future[None] = ready) -> None:
                        if not ready.done():
                            ready.set_result(None)

                    (loop.add_writer if write else loop.add_reader)(fd, wake)
                    try:
                        await ready
                    finally:
                        (loop.remove_writer if write else loop.remove_reader)(fd)
        except BaseException:
            tsock.close()
            raise

    async def _handshake(self, s: Session) -> bool:
        """Hello -> Challenge -> Auth. Returns True if the worker is in."""
        hello = await self._handshake_event(s, Hello)
        if hello is None:
            return False
        s.name = check_name(hello.name)  # Hello's decoder checked it too: a name reaches logs only checked
        nonce = secrets.token_bytes(limits.NONCE_BYTES)
        await s.send(Challenge(nonce), timeout=self.config.handshake_timeout)
        auth = await self._handshake_event(s, Auth)
        if auth is None:
            return False
        refusal = self._check_identity(s, nonce, auth.mac)
        if refusal is not None:
            log.warning("authentication failed for %r from %s: %s", s.name, s.peer, refusal)
            self._failures.failed(s.address, time.monotonic())
            await s.send_error("auth_failed", f"authentication failed: {refusal}")
            return False
        if s.conn.status_query:  # read-only: answer and hang up; it never joins
            await s.send(self.monitor.status(self.controller, self._sessions), timeout=self.config.handshake_timeout)
            log.info("answered a status query from %r (%s)", s.name, s.peer)
            return False
        secret = self.registry.reconnect_secret(s.name)
        proven = (auth.resume is not None and secret is not None
                  and verify_reconnect_proof(secret, nonce, s.name, auth.resume))
        s.conn_id = next(self._conn_ids)
        verdict = self.registry.join(s.name, hello.instance, s, proven, time.monotonic())
        if isinstance(verdict, NameInUse):  # not the address's fault: it counts as nothing against it
            log.info("refused %r from %s: the name is held by a running worker for %.0f s more",
                     s.name, s.peer, verdict.wait_s)
            await s.send_error(ErrorCode.NAME_IN_USE, verdict.message)
            return False
        if isinstance(verdict, Full):
            await s.send_error("busy", verdict.message)
            return False
        assert isinstance(verdict, Joined)
        s.worker_id, s.reconnect_secret = verdict.worker, verdict.secret
        if verdict.replaced is not None:
            verdict.replaced.replaced = True  # from now on its events are ignored and its end is not logged
            log.info("%s reconnected from %s; its old connection (%s) is replaced", s.label, s.peer,
                     verdict.replaced.peer)
            self._spawn(self._evict(verdict.replaced))
        self.monitor.joined(verdict.worker, s.name)
        log.info("%s joined from %s", s.label, s.peer)
        return True

    def _check_identity(self, s: Session, nonce: bytes, mac: bytes) -> str | None:
        """Why this worker may not join (None: it may).

        With mutual TLS the identity is the client certificate's common name;
        otherwise a per-worker token's secret, or the shared join secret, must
        have produced ``mac``.
        """
        token = self.identity.token
        if self.config.ca is not None:
            cn = tls.peer_identity(s.sock)
            if cn != s.name:
                return f"the client certificate is for {cn!r}, but the worker calls itself {s.name!r}"
            return None
        entry = self._tokens.lookup(s.name)
        if entry is not None:
            if entry.revoked:
                return f"the token of worker {s.name!r} was revoked"
            secret = entry.secret
        elif self.config.worker_tokens_only:
            return f"this chief admits only per-worker tokens, and {s.name!r} has none ('fedsock token create')"
        else:
            secret = token.secret
        if not tls.verify_mac(secret, nonce, token.fingerprint, s.name, mac):
            return "wrong join token"
        return None

    def _log_refusal(self, address: str, why: str) -> None:
        now = time.monotonic()
        if now - self._refusal_logged.get(address, -1e9) > 10:  # a flood must not flood the log
            self._refusal_logged[address] = now
            log.warning("refusing connections from %s: %s", address, why)

    async def _drop_revoked(self) -> None:
        """Close the live connections of workers whose token was revoked."""
        revoked = self._tokens.revoked()
        for wid, s in list(self._sessions.items()):
            if s.name in revoked:
                log.warning("%s: its token was revoked; dropping it", self._label(wid))
                await s.send_error("auth_failed", "authentication failed: your token was revoked")
                s.abort()
                self.controller.leave(wid)

    async def _welcome(self, s: Session) -> None:
        """Welcome with plan, model and global weights; Done right after if the run is over."""
        assert s.worker_id is not None
        ctrl, m = self.controller, self.outputs.model_info
        # a relay hands on its upstream's FedProx mu, as it does the rest of the upstream's plan
        mu = self.relay.client.plan.mu if self.relay is not None else self.strategy.mu
        plan = Plan(self.config.rounds, self.config.sync_every, self.config.batch_size, mu,
                    secure_agg=self.config.secure_agg, dp_clip=self.config.dp_clip,
                    dp_noise=self.config.dp_noise)
        welcome = Welcome(
            worker_id=s.worker_id, round=ctrl.round, plan=plan,
            tensors=(ctrl.specs or ()) if ctrl.has_model else (),
            model=m.config if m else None, compile=m.compile if m else None,
            has_weights=ctrl.has_model, compress=self.config.compress,
            reconnect_secret=s.reconnect_secret,
        )
        weights = ctrl.weights if ctrl.weights is not None else []
        await self._send_weights(s, welcome, weights)
        if self._done.is_set():
            assert ctrl.specs is not None
            await self._send_weights(s, Done(ctrl.round, ctrl.specs), weights)
            self.registry.done(s.worker_id)
        elif ctrl.has_model:
            ctrl.join(s.worker_id)
            # Open the round now if this worker completes the quorum, before its first message is
            # read: with --fraction, what arrives for a round that is not open yet joins its sample.
            ctrl.open_if_ready(time.monotonic())
            self._wake.set()

    async def _evict(self, old: Session) -> None:
        await old.send_error(ErrorCode.NAME_IN_USE, "replaced by a newer connection of this worker")
        old.abort()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_weights(self, s: Session, msg: Welcome | Global | Done, weights: list[np.ndarray]) -> int:
        """A weights message outside a round's fan-out, within the send caps and a deadline."""
        async with self._send_slots.hold(s.address, s.worker_id):
            return await s.send(msg, weights, timeout=self.config.idle_timeout)

    async def _handshake_event(self, s: Session, kind: type[T]) -> T | None:
        """The next handshake message, or None if the peer hung up or gave up."""
        ev = await s.next_event(self.config.handshake_timeout)
        if isinstance(ev, Error):
            log.info("%s gave up during the handshake: %s [%s]", s.label, ev.message, ev.code)
            return None
        if isinstance(ev, ConnectionClosed):
            return None
        assert isinstance(ev, kind), ev  # the state table allows nothing else here
        return ev

    async def _serve_worker(self, s: Session) -> None:
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
                    log.warning("%s gave up: %s [%s]", s.label, ev.message, ev.code)
                    return
                if isinstance(ev, SecAggKeys | SecAggShares | SecAggReveal | SecAggMasked):
                    await self._on_secagg(s, ev)
                    continue
                assert isinstance(ev, Update), ev
                if self._secure is not None and ev.round != 0:
                    raise RemoteProtocolError("this chief runs secure aggregation: send SecAggKeys, not a plain "
                                              "Update", code="out_of_order")
                check_update(ev.tensors, ev.num_examples, self.config.compress, self._max_examples)
                header_bytes = s.conn.last_frame_bytes
                # A connection cut inside the chunks raises here: the partial
                # update is discarded, never half-averaged.
                if self.controller.specs is not None and not self._done.is_set():  # before staging: model size only
                    check_signature(self.controller.specs, ev.tensors)
                # Staged once, folded only when complete and checked (see staging.py).
                async with self._staging.hold(sum(t.wire_nbytes for t in ev.tensors)) as slot:
                    weights, chunk_bytes = await s.read_weights(ev.tensors, self.config.idle_timeout, slot)
                    self._round_bytes_in += header_bytes + chunk_bytes
                    if not self._done.is_set():  # after Done, late updates are moot
                        await self._on_update(s, ev, weights)
                    del weights
        finally:
            heartbeat.cancel()

    async def _on_update(self, s: Session, upd: Update, weights: list[np.ndarray]) -> None:
        ctrl, wid = self.controller, s.worker_id
        assert wid is not None
        if upd.round == 0:  # an initial model proposal (bring your own model)
            if self.relay is not None:
                await self.relay.propose_initial(ctrl, self.outputs, upd.tensors, weights)
            if ctrl.propose_initial(upd.tensors, weights):
                log.info("round 0: adopted the weights of %s as the initial model (%d tensors)",
                         s.label, len(weights))
                await self._checkpoint()  # a restarted chief must not forget it
            ctrl.join(wid)
            ctrl.open_if_ready(time.monotonic())  # as in _welcome
            self._wake.set()
            assert ctrl.weights is not None and ctrl.specs is not None
            await self._send_weights(s, Global(ctrl.round, ctrl.specs), ctrl.weights)
            return
        verdict = ctrl.submit(wid, upd.round, upd.num_examples, upd.tensors, weights, s.conn_id)
        if isinstance(verdict, Accepted):
            log.debug("%s: update for round %d (%d examples)", s.label, upd.round, upd.num_examples)
            self._wake.set()
        elif isinstance(verdict, Duplicate):
            log.info("%s re-sent its round %d update after reconnecting; the first copy counts",
                     s.label, upd.round)
        elif isinstance(verdict, NotSelected):
            log.debug("%s: not sampled for round %d; it waits", s.label, upd.round)
            self.registry.hold(wid)
        else:
            log.info("%s: late update for round %d dropped (collecting round %d)",
                     s.label, verdict.round, verdict.current)
            self.monitor.late_update()
            self._show()
            await self._answer_stale(s, wid)

    async def _answer_stale(self, s: Session, wid: int) -> None:
        """The newest model for a worker that sent something for a closed round (once per round)."""
        ctrl = self.controller
        if not ctrl.is_selected(wid):
            self.registry.hold(wid)
        elif self.registry.allow_stale_reply(wid, ctrl.collecting):
            assert ctrl.weights is not None and ctrl.specs is not None
            await self._send_weights(s, Global(ctrl.round, ctrl.specs), ctrl.weights)

    async def _on_secagg(self, s: Session, ev: SecAggKeys | SecAggShares | SecAggReveal | SecAggMasked) -> None:
        """Route a secure-aggregation message; a masked update is summed, never kept."""
        sec, wid = self._secure, s.worker_id
        assert wid is not None
        if sec is None:
            raise RemoteProtocolError("this chief does not run secure aggregation", code="out_of_order")
        if isinstance(ev, SecAggMasked):
            header_bytes = s.conn.last_frame_bytes
            ours = not self._done.is_set() and sec.check_masked(wid, ev.round, ev.attempt, ev.tensors)
            async with self._staging.hold(sum(t.wire_nbytes for t in ev.tensors)) as slot:
                masked, chunk_bytes = await s.read_weights(ev.tensors, self.config.idle_timeout, slot)
                self._round_bytes_in += header_bytes + chunk_bytes
                if ours:
                    sec.add_masked(wid, ev.round, ev.attempt, masked)
                del masked
            return
        self._round_bytes_in += s.conn.last_frame_bytes
        if isinstance(ev, SecAggShares):
            sec.on_shares(wid, ev)
        elif isinstance(ev, SecAggReveal):
            sec.on_reveal(wid, ev)
        elif self._done.is_set():
            return
        else:
            verdict = sec.on_keys(wid, ev, s.conn_id)
            if isinstance(verdict, NotSelected):
                self.registry.hold(wid)
            elif isinstance(verdict, Stale):
                log.info("%s: keys for round %d, which is closed; sending round %d", s.label, ev.round,
                         self.controller.round)
                await self._answer_stale(s, wid)
            self._wake.set()

    async def _secure_close(self) -> RoundResult | None:
        """Run the secure-aggregation attempt; the closed round, or None if it must start over."""
        sec, ctrl = self._secure, self.controller
        assert sec is not None

        async def send(wid: int, msg: Any) -> bool:
            s = self._sessions.get(wid)
            if s is None:
                return False
            try:
                self._round_bytes_out += await s.send(msg, timeout=self.config.idle_timeout)
                return True
            except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the round
                log.info("%s: could not send %s (%s)", s.label, type(msg).__name__, exc or type(exc).__name__)
                s.abort()
                return False

        outcome: Outcome | None = await sec.run(send, lambda w: w in self._sessions)
        if outcome is None:
            return None
        for wid in sec.waiting_for_model() & set(self._sessions):
            self.registry.hold(wid)
        self._round_extra = {"secure_agg": {"attempt": outcome.attempt, "dropped": len(outcome.dropped),
                                            "unmask_s": round(outcome.unmask_s, 4)}}
        return ctrl.close(time.monotonic(), combined=(outcome.average, outcome.workers, outcome.weight))

    async def _heartbeats(self, s: Session) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval / 2)
            if time.monotonic() - s.last_sent >= interval and not s.conn.we_finished:
                with contextlib.suppress(Exception):
                    await s.send(Heartbeat(), timeout=self.config.idle_timeout)

    # --- rounds -----------------------------------------------------------

    async def _round_loop(self) -> None:
        ctrl = self.controller
        last_log = 0.0
        while not ctrl.finished:
            now = time.monotonic()
            self._show()
            if not ctrl.open_if_ready(now):
                if now - last_log > 10:
                    last_log = now
                    log.info("waiting for workers: %d of %d connected (%s)%s", len(ctrl.members),
                             ctrl.min_workers, self._who(ctrl.members),
                             "" if ctrl.has_model else "; no model yet: the first worker's becomes round 0")
                await self._sleep_until_woken(5.0)
                continue
            if ctrl.should_close(now):
                if self._secure is None:
                    await self._publish(await self._close_round(now))
                elif (result := await self._secure_close()) is not None:
                    await self._publish(result)
                continue
            if ctrl.past_deadline_without_quorum(now):
                log.warning(
                    "round %d: %d of %d required updates by the deadline (from: %s; still training: %s);"
                    " retrying: the round stays open %g s more and keeps its updates",
                    ctrl.collecting, len(ctrl.submitted), ctrl.min_workers,
                    self._who(tuple(ctrl.submitted)), self._who(ctrl.expected()), ctrl.round_timeout)
                ctrl.extend(now)
            await self._sleep_until_woken(ctrl.seconds_left(now) or 5.0)

    async def _sleep_until_woken(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.01))
        self._wake.clear()

    async def _publish(self, result: RoundResult) -> None:
        """Hand out the new model; it is complete at the workers once evaluated, recorded and checkpointed."""
        ctrl = self.controller
        seconds = time.monotonic() - result.opened_at
        assert ctrl.specs is not None
        final = ctrl.finished
        if final:
            self._done.set()
        await self._drop_revoked()
        # Who gets the new model now: everyone at the end; otherwise those who
        # submitted or wait, if sampled for the next round.
        targets = self.registry.recipients(result.workers, ctrl.is_selected, final)
        msg = Done(result.round, ctrl.specs) if final else Global(result.round, ctrl.specs)
        sessions = [self._sessions[w] for w in targets]
        bytes_out = message_bytes(msg, result.weights) * len(sessions) + self._round_bytes_out
        self._round_bytes_out = 0
        names = [self.registry.name_of(w) for w in result.workers]
        snapshot = ctrl.snapshot() if self.relay is None else None  # a relay resumes from its upstream
        members = self._member_names()
        extra, self._round_extra = self._round_extra, {}
        # Record and checkpoint before anyone has the new model, so a restart never resumes
        # behind what workers hold nor repeats a metrics line. The model streams out meanwhile
        # (and while it is evaluated), but its last bytes wait for that: a worker holds the new
        # model only once all of it has arrived.
        release = threading.Event()
        sends = asyncio.gather(*(self._send_quietly(s, msg, result.weights, release) for s in sessions))

        bytes_in, self._round_bytes_in = self._round_bytes_in, 0

        def persist() -> tuple[dict[str, float], dict[str, Any]]:  # evaluation and fsyncs: off the event loop
            metrics = self.outputs.evaluate(result.weights)
            row = self.outputs.record_round(result, seconds, bytes_in, bytes_out, metrics, names,
                                            extra, checkpointed=snapshot is not None)
            if snapshot is not None:
                self.outputs.checkpoint(snapshot, members, row)
            release.set()  # from here, not after a hop back to the event loop: the sends wait for it
            return metrics, row

        try:
            metrics, row = await asyncio.to_thread(persist)
            self._last_metrics = metrics
        except BaseException:
            for s in sessions:  # not recorded: the model must not reach anyone
                s.abort()
            await asyncio.gather(sends, return_exceptions=True)
            raise
        self.monitor.round_done(result, row)
        self.display.round_done(row)
        self._show()
        sent = await sends
        if final:
            for s, n in zip(sessions, sent):
                if n and s.worker_id is not None:
                    self.registry.done(s.worker_id)

    async def _send_quietly(self, s: Session, msg: Global | Done, weights: list[np.ndarray],
                            release: threading.Event | None = None) -> int:
        try:
            async with self._send_slots.hold(s.address, s.worker_id):
                send = asyncio.ensure_future(s.send(msg, weights, release, timeout=None))  # bounded below
                try:
                    while release is not None and not release.is_set() and not send.done():
                        await asyncio.wait({send}, timeout=0.02)  # the wait for release is not the peer's time
                    return await asyncio.wait_for(send, self.config.idle_timeout)
                finally:
                    send.cancel()  # if still running: we were cancelled
        except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the round
            # A half-sent weights message leaves the connection unusable: drop it.
            log.info("%s: could not send %s (%s); dropping the connection", s.label,
                     type(msg).__name__, exc or type(exc).__name__)
            s.abort()
            return 0

    async def _finish(self, min_wait: float = 0.0) -> None:
        """Save the final model; keep handing out Done while workers hang up
        (at most ``done_grace`` s, at least ``min_wait`` s for reconnecting ones)."""
        ctrl = self.controller
        assert ctrl.specs is not None and ctrl.weights is not None
        self.outputs.save_final(ctrl.specs, ctrl.weights)
        start = time.monotonic()
        while True:
            now = time.monotonic()
            waited = now - start
            # workers that dropped out recently (e.g. reconnecting) still deserve their Done
            pending = self.registry.owed_done(start - self.config.idle_timeout)
            if waited >= max(min_wait, self.config.done_grace):
                if pending:
                    log.warning("gave up waiting for %s to reconnect for the final model", self._who(pending))
                break
            if waited >= min_wait and not self._sessions and not pending:
                break
            await asyncio.sleep(0.05)
        log.info("training finished after %d rounds; final model in %s", ctrl.round, self.config.state_dir)
