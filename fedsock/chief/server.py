"""The chief: a TLS listener, one task per worker, and the round loop.

All round logic lives in ``RoundController``; this module moves bytes,
enforces timeouts and writes outputs (metrics, checkpoints, final model).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from fedsock import limits, tls
from fedsock.aggregation import Strategy, Transform
from fedsock.chief.config import ChiefConfig
from fedsock.chief.outputs import Outputs
from fedsock.chief.rounds import Accepted, RoundController, RoundResult
from fedsock.chief.session import Session
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol import (
    Auth,
    Challenge,
    ConnectionClosed,
    Done,
    Error,
    Global,
    Heartbeat,
    Hello,
    Plan,
    Update,
    Welcome,
)

log = logging.getLogger("fedsock.chief")
T = TypeVar("T")


@dataclass(frozen=True)
class RunSummary:
    """What a finished chief run produced."""

    rounds: int
    final_metrics: dict[str, float]
    state_dir: str


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
        self.strategy = strategy or self.config.build_strategy()
        if self.config.min_workers < self.strategy.min_updates:
            raise ConfigError(f"strategy {self.strategy.name} needs at least {self.strategy.min_updates} "
                              "updates per round; set min_workers to that or more")
        self.controller = RoundController(
            rounds=self.config.rounds,
            min_workers=self.config.min_workers,
            round_timeout=self.config.round_timeout,
            transform=transform or self.strategy.transform,
            reducer=self.strategy.reducer,
        )
        self.outputs = Outputs(self.config)
        self.port: int | None = None
        self._sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._unauthenticated = 0
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self._round_bytes_in = 0
        self._last_metrics: dict[str, float] = {}

    # --- entry points -----------------------------------------------------

    def run(self) -> RunSummary:
        """Serve until the last round is done (blocking)."""
        return asyncio.run(self.serve())

    async def serve(self) -> RunSummary:
        """Serve until the last round is done."""
        cfg = self.config
        identity = tls.ensure_identity(cfg.state_dir, [h for h in (cfg.advertise, cfg.host) if h])
        self.identity = identity
        model = self.outputs.prepare_model()
        if model is not None:
            self.controller.set_model(model.specs, model.weights)
        server = await asyncio.start_server(
            self._accept, cfg.host, cfg.port,
            ssl=tls.server_context(identity.cert_path, identity.key_path),
            ssl_handshake_timeout=cfg.handshake_timeout,
        )
        self.port = server.sockets[0].getsockname()[1]
        local = cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        (cfg.state_dir / "chief.addr").write_text(f"{local}:{self.port}\n")
        self._announce(identity)
        try:
            async with server:
                await self._round_loop()
                await self._finish()
        finally:
            for s in list(self._sessions.values()):
                await s.close()
        return RunSummary(self.controller.round, self._last_metrics, str(cfg.state_dir))

    def _announce(self, identity: tls.ChiefIdentity) -> None:
        cfg = self.config
        host = cfg.advertise or (cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "CHIEF_HOST")
        log.info("fedsock chief listening on %s:%s (TLS 1.3, state dir %s)",
                 cfg.host, self.port, cfg.state_dir)
        log.info("certificate sha256 %s%s", identity.token.fingerprint.hex(),
                 " (new)" if identity.created else "")
        log.info("join token (also in %s): %s", cfg.state_dir / "token", identity.token)
        log.info("start a worker with:\n  python worker.py --chief %s:%s --token %s --data ./shard",
                 host, self.port, identity.token)

    # --- connections ------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        session = Session(reader, writer, f"{peer[0]}:{peer[1]}" if peer else "?")
        if self._unauthenticated >= limits.MAX_UNAUTHENTICATED:
            log.warning("refusing %s: too many connections", session.peer)
            await session.send_error("busy", "the chief is at capacity; retry later")
            await session.close()
            return
        self._unauthenticated += 1
        authenticated = False
        try:
            joined = await asyncio.wait_for(self._handshake(session), self.config.handshake_timeout)
            self._unauthenticated -= 1
            authenticated = True
            if joined:
                await self._welcome(session)
                await self._serve_worker(session)
        except RemoteProtocolError as exc:
            log.warning("%s: %s [%s]", session.label, exc, exc.code)
            await session.send_error(exc.code, str(exc))
        except (asyncio.TimeoutError, TimeoutError):
            log.warning("%s: silent for too long, disconnecting", session.label)
            await session.send_error("timeout", "no message within the time limit")
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection lost (%s)", session.label, exc)
        except Exception:  # a bug here must cost one connection, not the chief
            log.exception("%s: internal error; dropping the connection", session.label)
            await session.send_error("internal", "internal error on the chief; see its log")
        finally:
            if not authenticated:
                self._unauthenticated -= 1
            if session.worker_id is not None:
                self._sessions.pop(session.worker_id, None)
                self.controller.leave(session.worker_id)
                self._wake.set()
            await session.close()

    async def _handshake(self, s: Session) -> bool:
        """Hello -> Challenge -> Auth -> Welcome. Returns True if the worker is in."""
        hello = await self._handshake_event(s, Hello)
        if hello is None:
            return False
        s.name = hello.name
        nonce = secrets.token_bytes(limits.NONCE_BYTES)
        await s.send(Challenge(nonce))
        auth = await self._handshake_event(s, Auth)
        if auth is None:
            return False
        token = self.identity.token
        if not tls.verify_mac(token.secret, nonce, token.fingerprint, s.name, auth.mac):
            log.warning("authentication failed for %r from %s (wrong token?)", s.name, s.peer)
            await s.send_error("auth_failed", "authentication failed: wrong join token")
            return False
        if self._done.is_set():
            await s.send_error("shutdown", "training is over; the chief is shutting down")
            return False
        if len(self._sessions) >= limits.MAX_WORKERS:
            await s.send_error("busy", f"the chief already serves {limits.MAX_WORKERS} workers")
            return False
        s.worker_id = next(self._ids)
        self._sessions[s.worker_id] = s
        log.info("%s joined", s.label)
        return True

    async def _welcome(self, s: Session) -> None:
        """Send Welcome with the plan, the model and the global weights (bounded by the idle timeout)."""
        assert s.worker_id is not None
        ctrl = self.controller
        plan = Plan(self.config.rounds, self.config.sync_every, self.config.batch_size, self.strategy.mu)
        m = self.outputs.model_info
        welcome = Welcome(
            worker_id=s.worker_id, round=ctrl.round, plan=plan,
            tensors=ctrl.specs or () if ctrl.has_model else (),
            model=m.config if m else None, compile=m.compile if m else None,
            has_weights=ctrl.has_model,
        )
        await asyncio.wait_for(s.send(welcome, ctrl.weights if ctrl.has_model else ()),
                               self.config.idle_timeout)
        if ctrl.has_model:
            ctrl.join(s.worker_id)
            self._wake.set()

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
                if isinstance(ev, Heartbeat):
                    continue
                if isinstance(ev, ConnectionClosed):
                    log.info("%s disconnected", s.label)
                    return
                if isinstance(ev, Error):
                    log.warning("%s gave up: %s [%s]", s.label, ev.message, ev.code)
                    return
                assert isinstance(ev, Update), ev
                header_bytes = s.conn.last_frame_bytes
                weights, chunk_bytes = await s.read_weights(ev.tensors, self.config.idle_timeout)
                self._round_bytes_in += header_bytes + chunk_bytes
                if self._done.is_set():
                    continue  # training is over; the worker has Done waiting
                await self._on_update(s, ev, weights)
        finally:
            heartbeat.cancel()

    async def _on_update(self, s: Session, upd: Update, weights: list[np.ndarray]) -> None:
        ctrl = self.controller
        assert s.worker_id is not None
        if upd.round == 0:  # an initial model proposal (bring your own model)
            if ctrl.propose_initial(upd.tensors, weights):
                log.info("round 0: adopted the weights of %s as the initial model (%d tensors)",
                         s.label, len(weights))
                self.outputs.checkpoint(ctrl, metrics_line=0)
            ctrl.join(s.worker_id)
            self._wake.set()
            assert ctrl.weights is not None and ctrl.specs is not None
            await s.send(Global(ctrl.round, ctrl.specs), ctrl.weights)
            return
        verdict = ctrl.submit(s.worker_id, upd.round, upd.num_examples, upd.tensors, weights)
        if isinstance(verdict, Accepted):
            log.debug("%s: update for round %d (%d examples)", s.label, upd.round, upd.num_examples)
            self._wake.set()
            return
        log.info("%s: late update for round %d dropped (now collecting round %d); sending round %d",
                 s.label, verdict.round, verdict.current, ctrl.round)
        assert ctrl.weights is not None and ctrl.specs is not None
        await s.send(Global(ctrl.round, ctrl.specs), ctrl.weights)

    async def _heartbeats(self, s: Session) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval / 2)
            if time.monotonic() - s.last_sent >= interval and not s.conn.we_finished:
                with contextlib.suppress(Exception):
                    await s.send(Heartbeat())

    # --- rounds -----------------------------------------------------------

    async def _round_loop(self) -> None:
        ctrl = self.controller
        last_log = 0.0
        while not ctrl.finished:
            now = time.monotonic()
            if not ctrl.open_if_ready(now):
                if now - last_log > 10:
                    last_log = now
                    log.info("waiting for workers: %d of %d connected%s", len(ctrl.members),
                             ctrl.min_workers,
                             "" if ctrl.has_model else " (no model yet: the first worker's becomes round 0)")
                await self._sleep_until_woken(5.0)
                continue
            if ctrl.should_close(now):
                await self._publish(ctrl.close(now))
                continue
            left = ctrl.seconds_left(now)
            if left == 0 and now - last_log > 10:
                last_log = now
                log.warning("round %d past its deadline with %d of %d updates needed; still waiting",
                            ctrl.collecting, len(ctrl.submitted), ctrl.min_workers)
            await self._sleep_until_woken(left if left else 5.0)

    async def _sleep_until_woken(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.01))
        self._wake.clear()

    async def _publish(self, result: RoundResult) -> None:
        ctrl = self.controller
        seconds = time.monotonic() - result.opened_at
        assert ctrl.specs is not None
        final = ctrl.finished
        if final:
            self._done.set()
        # Checkpoint before anyone sees the new model, so a restart never
        # resumes behind what workers already hold.
        self.outputs.checkpoint(ctrl, metrics_line=result.round)
        msg = Done(result.round, ctrl.specs) if final else Global(result.round, ctrl.specs)
        targets = [self._sessions[w] for w in (list(self._sessions) if final else result.workers)
                   if w in self._sessions]
        sent = await asyncio.gather(*(self._send_quietly(s, msg, result.weights) for s in targets))
        bytes_in, bytes_out = self._round_bytes_in, sum(sent)
        self._round_bytes_in = 0
        metrics = await asyncio.to_thread(self.outputs.evaluate, result.weights)
        self._last_metrics = metrics
        self.outputs.record_round(result, seconds, bytes_in, bytes_out, metrics)

    async def _send_quietly(self, s: Session, msg: Global | Done, weights: list[np.ndarray]) -> int:
        try:
            return await asyncio.wait_for(s.send(msg, weights), self.config.idle_timeout)
        except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the round
            # A half-sent weights message leaves the connection unusable: drop it.
            log.info("%s: could not send %s (%s); dropping the connection", s.label,
                     type(msg).__name__, exc or type(exc).__name__)
            s.writer.transport.abort()
            return 0

    async def _finish(self) -> None:
        ctrl = self.controller
        assert ctrl.specs is not None and ctrl.weights is not None
        self.outputs.save_final(ctrl.specs, ctrl.weights)
        # Give workers a moment to read Done and hang up on their own.
        deadline = time.monotonic() + self.config.done_grace
        while self._sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("training finished after %d rounds; final model in %s", ctrl.round, self.config.state_dir)
