"""``fedsock.Client``: the numpy-level worker, for any training loop.

A thin layer over three parts: the blocking channel (``fedsock.transport``:
TLS 1.3, the chief pinned by certificate fingerprint, deadlines, the weights
reader), the ``WorkerEngine`` (what to send next, without I/O) and the
joining and reconnect policy (``fedsock.worker.joining``: backoff and jitter,
for ``connect_timeout`` or ``reconnect_timeout``). A background thread sends heartbeats while the caller
trains; every use of the channel happens under one lock, so the TLS socket is
never used by two threads at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsock import limits
from fedsock.errors import ClientClosed, ConfigError, FedsockError, RemoteProtocolError
from fedsock.protocol import (
    Done,
    Error,
    Global,
    Plan,
    TensorSpec,
    Update,
    Welcome,
    check_signature,
    specs_of,
)
from fedsock.protocol.compression import parse_compression
from fedsock.protocol.connection import AnyMessage
from fedsock.transport import tls
from fedsock.transport.channel import BlockingChannel
from fedsock.transport.credentials import Credentials, parse_address, token_from
from fedsock.transport.errors import ConnectionLost
from fedsock.worker.buffers import ModelMemory
from fedsock.worker.config import WorkerConfig, default_name
from fedsock.worker.engine import Action, Deliver, Fail, ReadEval, ReadModel, Reconnect, Send, WorkerEngine
from fedsock.worker.evaluation import Evaluation, MetricSharing
from fedsock.worker.joining import join_chief
from fedsock.worker.pipeline import Outgoing, UpdatePipeline, run_steps
from fedsock.worker.policy import WorkerPolicy
from fedsock.worker.reconnect import reconnect_note
from fedsock.worker.reporting import Reporting

__all__ = ["Client", "ConnectionLost", "parse_address", "token_from"]

log = logging.getLogger("fedsock.worker")
CLOSE_LOCK_WAIT_S = 0.1  #: seconds close() waits for the channel before it shuts the connection down under a call


class Client(Reporting):
    """A worker's connection to the chief.

    Connecting, authenticating and receiving ``Welcome`` happen in the
    constructor (with retries for ``connect_timeout`` seconds).

    Args:
        address: ``"host:port"`` of the chief.
        token: join token; default ``$FEDSOCK_TOKEN``.
        name: how the chief's logs call this worker (default: host name + pid).
        names: tensor names to send (default: the chief's, or ``t0, t1, ...``).
        connect_timeout: seconds to keep retrying an unreachable chief.
        idle_timeout: seconds of silence from the chief before giving up;
            also the deadline of each write, and how long a name held by
            another connection is waited for (the chief's idle timeout,
            normally the same) before ``NameInUse`` is raised.
        heartbeat_interval: seconds between heartbeats while idle.
        reconnect_timeout: after a lost connection (chief restarted, link
            cut, chief silent for ``idle_timeout``), seconds to keep trying to
            reconnect, with exponential backoff and jitter; 0 disables it.
        gone_timeout: give up reconnecting once nothing listened at the address this long (0: never; see config).
        ca, cert, key: mutual TLS with an organisation's PKI: verify the
            chief against CA file ``ca`` (and its host name) instead of the
            token's pinned fingerprint, and present client certificate
            ``cert``/``key``; the identity is the certificate's common name,
            and no token is needed.
        save_updates: directory in which to keep a copy of every update sent
            (``round-NNNNNN.npz``: the tensors and ``num_examples``), to
            audit what left this machine.
        max_model_bytes: refuse a Welcome whose weights take more.
        require_secure_agg, ..., min_sync_every: this worker's ``WorkerPolicy``;
            a plan that violates it is refused at every join, before any
            weights are read, and the chief told why (``policy_refused``).
        evaluate: weights -> their metrics on local validation data, with ``examples``; run on
            each model join/sync return, sent with the next sync as ``val_*`` (docs/evaluation.md).
            It also answers the chief's evaluation requests while this worker is held (not
            sampled), unless ``evaluator`` is set to something else.
        share_metrics: what of the metrics reaches the chief: ``"all"``, ``"aggregate-only"``
            (only inside a secure-aggregation sum) or ``"none"`` (docs/privacy.md); evaluation
            requests and the final report are answered only with ``"all"``.
        evaluations: say to the chief (Hello capability ``"eval"``) that this worker answers its
            evaluation requests and reports its final evaluation (see ``report``); default: if
            ``evaluate`` is given and ``share_metrics`` is ``"all"``.

    Raises:
        ConfigError: bad address or token.
        ConnectError: chief not reachable within ``connect_timeout``.
        AuthenticationError: wrong token, or the chief's certificate is not
            the pinned one.
        NameInUse: another running worker holds ``name`` (the message says
            to pick another ``--name``).
        PolicyRefused: the chief's plan violates this worker's policy.
    """

    def __init__(self, address: str | tuple[str, int], token: str | tls.JoinToken | None = None,
                 name: str | None = None, *, names: Sequence[str] | None = None,
                 connect_timeout: float = WorkerConfig.connect_timeout,
                 idle_timeout: float = WorkerConfig.idle_timeout,
                 heartbeat_interval: float = WorkerConfig.heartbeat_interval,
                 reconnect_timeout: float = WorkerConfig.reconnect_timeout,
                 gone_timeout: float = WorkerConfig.gone_timeout,
                 save_updates: str | os.PathLike[str] | None = None,
                 ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
                 key: str | os.PathLike[str] | None = None,
                 max_model_bytes: int = WorkerConfig.max_model_bytes,
                 require_secure_agg: bool = WorkerConfig.require_secure_agg,
                 require_dp_noise: float | None = WorkerConfig.require_dp_noise,
                 max_epsilon: float | None = WorkerConfig.max_epsilon,
                 epsilon_delta: float = WorkerConfig.epsilon_delta,
                 min_batch_size: int = WorkerConfig.min_batch_size,
                 min_sync_every: int = WorkerConfig.min_sync_every,
                 evaluate: Callable[[list[np.ndarray]], Mapping[str, float]] | None = None,
                 share_metrics: str = WorkerConfig.share_metrics,
                 evaluations: bool | None = None) -> None:
        self.address = parse_address(address)
        self._credentials = Credentials.resolve(token, ca, cert, key)
        own = self._credentials.own_name
        if name is not None and own is not None and name != own:
            kind = "token" if self._credentials.token is not None else "certificate"
            raise ConfigError(f"the {kind} is for worker {own!r}, not {name!r}; drop --name or use the "
                              "matching credentials")
        self.name = name or own or default_name()
        #: Sent in every Hello of this Client: the chief tells its reconnects from another worker's.
        self.instance = os.urandom(limits.INSTANCE_ID_BYTES)
        self._reconnect_secret: bytes | None = None  # from the chief's latest Welcome
        self._names = list(names) if names is not None else None
        #: ``--max-model-bytes``: the Welcome's weights and what a chief's model config may describe.
        self.max_model_bytes = max_model_bytes
        #: This worker's privacy policy, checked against the plan of every Welcome.
        self.policy = WorkerPolicy(require_secure_agg, require_dp_noise, max_epsilon, epsilon_delta,
                                   min_batch_size, min_sync_every)
        self._idle_timeout = idle_timeout
        self._hb_interval = heartbeat_interval
        self._reconnect_timeout = reconnect_timeout
        self._gone_timeout = gone_timeout
        self.reconnects = 0
        self.evaluation = Evaluation(evaluate)  # .last: the val_* metrics of the model last returned
        self.sharing = MetricSharing(share_metrics)
        #: weights -> metrics with ``examples``: answers the chief's evaluation requests (None: answered
        #: without values). ``FederatedCallback`` sets its own.
        self.evaluator = evaluate
        #: The final model's validation metrics (``val_*``), once the run is over: what ``report`` sends
        #: by default. ``evaluate`` fills it; so does ``FederatedCallback`` with validation data.
        self.final_metrics: dict[str, float] = {}
        if evaluations is None:
            evaluations = evaluate is not None and share_metrics == "all"
        self._evaluations = evaluations
        self._pipeline = UpdatePipeline(Path(save_updates) if save_updates is not None else None)
        self._memory = ModelMemory()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        with self._lock:
            self._channel, self.welcome, model = self._connect(connect_timeout, None)
        self._engine = WorkerEngine(self.welcome, model, reconnect=reconnect_timeout > 0)
        self.worker_id = self.welcome.worker_id
        self._say_sharing()
        if self.welcome.has_weights and self.welcome.round >= self.welcome.plan.rounds:
            with self._lock:
                self._take_final(model or [])
        self._hb = threading.Thread(target=self._heartbeat_loop, name="fedsock-heartbeat", daemon=True)
        self._hb.start()

    @classmethod
    def from_config(cls, config: WorkerConfig, **kwargs: Any) -> Client:
        """A client with ``config``'s settings; ``kwargs`` as the constructor's (e.g. ``names``)."""
        return cls(**config.client_arguments(), **kwargs)

    # --- public API -------------------------------------------------------

    @property
    def weights(self) -> list[np.ndarray] | None:
        """The global model this worker holds (None before the chief has one)."""
        return self._engine.model

    @property
    def round(self) -> int:
        """The chief's round of the model this worker holds."""
        return self._engine.round

    @property
    def finished(self) -> bool:
        """The chief has sent ``Done``: ``weights`` are the final model."""
        return self._engine.finished

    @property
    def plan(self) -> Plan:
        """The training plan of the chief's first ``Welcome``."""
        return self._engine.plan

    @plan.setter
    def plan(self, plan: Plan) -> None:
        self._engine.plan = plan

    @property
    def model_config(self) -> str | None:
        """Keras JSON config of the chief's model (None: bring your own)."""
        return self.welcome.model

    @property
    def compile_config(self) -> str | None:
        """Keras compile config (JSON) of the chief's model, if any."""
        return self.welcome.compile

    def join(self, weights: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Get the global model to start from.

        If the chief has a model, its weights are returned (and ``weights``,
        if given, must match their signature). Otherwise ``weights`` are
        proposed as the initial model; the first proposal wins.

        Raises:
            ConfigError: the chief has no model and no weights were given, or
                ``weights`` do not match the chief's model.
        """
        if self.weights is not None:
            if weights is not None:
                try:
                    check_signature(self.welcome.tensors, self._specs(weights))
                except RemoteProtocolError as exc:
                    raise ConfigError(f"local model does not match the chief's: {exc}") from None
            return self._evaluated(self.weights)
        if weights is None:
            raise ConfigError("the chief has no model yet: pass your initial weights to join()")
        with self._lock:
            model = self._drive(self._engine.start_plain(Update(0, 0, self._specs(weights)), weights), None, weights)
        return self._evaluated(model)

    def sync(self, weights: Sequence[np.ndarray], num_examples: int, metrics: dict[str, float] | None = None,
             *, reuse: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Send weights trained on ``num_examples`` examples; block until the average returns.

        After the last round this returns the final weights and sets
        ``finished``; later calls return them again without talking to the chief.

        Args:
            weights: the locally trained weights.
            num_examples: examples trained on since the last sync (FedAvg's weight).
            metrics: optional training metrics, sent as ``train_<name>`` (see ``evaluate``).
            reuse: a model an earlier ``join`` or ``sync`` of this Client returned that
                the caller no longer needs (e.g. after copying it into its model): the
                new model is read into its memory, which saves fresh memory each round
                (a page fault per page). Its arrays are overwritten; a list that still
                shares memory with ``weights`` is not reused.
        """
        if self.finished:
            assert self.weights is not None
            return self.weights
        if self.weights is None:
            raise FedsockError("call join() before sync()")
        base = self.weights
        self._say_sharing()
        sent = self.sharing.shared(self.plan.secure_agg, self.evaluation.outgoing(metrics or {}))
        out = Outgoing(Update(self.round + 1, int(num_examples), self._specs(weights), sent), weights)
        steps = self._pipeline.steps(self.plan, parse_compression(self.welcome.compress), base,
                                     bool(self._engine.specs))
        out = run_steps(steps, out)
        keep = [*weights, *out.tensors]
        start = self._engine.start_secure if self.plan.secure_agg else self._engine.start_plain
        with self._lock:
            model = self._drive(start(out.update, out.tensors), reuse, keep)
        return self._evaluated(model)

    def close(self, reason: str | None = None) -> None:
        """Hang up; with ``reason``, tell the chief why first. A final evaluation the chief asked for
        and ``report`` did not send goes out first (``final_metrics``).
        From another thread while ``join`` or ``sync`` waits, it returns at once; that call raises ``ClientClosed``.
        """
        if self.finished and self.report_due and not reason:
            self.report()
        self._stop.set()
        if not self._lock.acquire(timeout=CLOSE_LOCK_WAIT_S):  # a join or sync holds the channel
            self._channel.interrupt()
            if not self._lock.acquire(timeout=CLOSE_LOCK_WAIT_S):
                return  # it is between connections (reconnecting): it sees the close and stops there
        try:
            if reason and not self._channel.conn.we_finished and not self.finished:
                self._channel.send_quietly(Error(code="shutdown", message=reason))
            self._channel.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _drive(self, actions: list[Action], reuse: Sequence[np.ndarray] | None,
               keep: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Carry out the engine's actions until it delivers the model (the lock is held)."""
        todo = deque(actions)
        while True:
            if self._stop.is_set():  # close(), maybe from another thread while this call waited
                self._channel.close()
                raise ClientClosed("Client.close() was called (before or while this call waited for the chief)")
            if not todo:
                try:
                    todo.extend(self._engine.receive(self._channel.next_event()))
                except ConnectionLost as exc:
                    todo.extend(self._engine.lost(str(exc)))
                continue
            act = todo.popleft()
            if isinstance(act, Send):
                try:
                    self._send(act.msg, act.arrays)
                except TimeoutError as exc:
                    todo.extend(self._engine.lost(f"sending to the chief timed out ({exc})"))
                except OSError as exc:
                    # The chief may have sent Done and hung up; read what is left.
                    log.info("send failed (%s); reading what the chief sent", exc)
            elif isinstance(act, ReadModel):
                todo.extend(self._read_model(act.msg, reuse, keep))
            elif isinstance(act, ReadEval):
                todo.extend(self._answer_request(act))
            elif isinstance(act, Deliver):
                return act.model
            elif isinstance(act, Reconnect):
                todo.clear()
                todo.extend(self._reconnect(act.reason, act.announced, act.wait))
            elif isinstance(act, Fail):
                if act.notify is not None:
                    self._channel.send_quietly(act.notify)
                raise act.error

    def _read_model(self, msg: Global | Done, reuse: Sequence[np.ndarray] | None,
                    keep: Sequence[np.ndarray]) -> list[Action]:
        buf = self._memory.buffer_for(sum(s.wire_nbytes for s in msg.tensors), reuse, keep)
        if self._memory.shares(self._engine.model, buf):
            self._engine.drop_model()
        try:
            model = self._channel.read_weights(msg.tensors, buf)
        except ConnectionLost as exc:
            return self._engine.lost(str(exc))
        return self._engine.model_read(msg, model)

    def _send(self, msg: AnyMessage, arrays: Sequence[np.ndarray] = ()) -> None:
        """Every message this Client sends goes through here."""
        self._channel.send(msg, arrays)

    def _specs(self, weights: Sequence[np.ndarray]) -> tuple[TensorSpec, ...]:
        names = self._names
        specs = self._engine.specs
        if names is None and len(specs) == len(weights):
            names = [s.name for s in specs]
        return specs_of([np.asarray(w) for w in weights], names)

    def _reconnect(self, reason: str, announced: bool = False, wait: float = 0.0) -> list[Action]:
        """Connect and authenticate again (same name, so the chief knows us); resume the sync
        (``announced`` and ``wait``: see ``Reconnect``)."""
        gone = None if announced or not self._gone_timeout else self._gone_timeout
        self._channel.close()
        log.warning("%s", reconnect_note(reason, wait, self._reconnect_timeout, gone))
        if wait > 0 and self._stop.wait(wait):
            raise ConnectionLost("closed while waiting to reconnect")
        self._channel, self.welcome, model = self._connect(self._reconnect_timeout, gone)
        self.reconnects += 1
        log.info("reconnected as worker %d; the chief is at round %d", self.welcome.worker_id, self.welcome.round)
        return self._engine.reconnected(self.welcome, model)

    def _connect(self, timeout: float, gone: float | None) -> tuple[BlockingChannel, Welcome, list[np.ndarray] | None]:
        """Join the chief (``joining.join_chief``), retrying for ``timeout`` seconds (``gone``: see there)."""
        channel, welcome, model = join_chief(
            self.address, self._credentials, self.name, self.instance, self._reconnect_secret,
            timeout=timeout, idle_timeout=self._idle_timeout, heartbeat_interval=self._hb_interval,
            memory=self._memory, policy=self.policy, max_model_bytes=self.max_model_bytes,
            evaluations=self._evaluations, gone_timeout=gone, stop=self._stop)
        self._reconnect_secret = welcome.reconnect_secret or None
        return channel, welcome, model

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self._hb_interval / 2):
            if time.monotonic() - self._channel.last_sent < self._hb_interval:
                continue
            if not self._lock.acquire(blocking=False):
                continue  # a sync is under way; it sends its own heartbeats
            try:
                if not self.finished or self.report_due:  # the chief waits for the report: stay alive
                    self._channel.heartbeat()
            finally:
                self._lock.release()
