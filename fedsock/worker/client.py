"""``fedsock.Client``: the numpy-level worker, for any training loop.

Blocking sockets over TLS 1.3, the chief pinned by certificate fingerprint.
A background thread sends heartbeats while the caller trains; every read and
write happens under one lock, so the TLS socket is never used by two threads
at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedsock import limits, tls
from fedsock.errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    ConnectionLost,  # defined in fedsock.errors, still importable from here
    ConnectionTruncated,
    FedsockError,
    PeerError,
    RemoteProtocolError,
)
from fedsock.protocol import (
    NEED_DATA,
    Auth,
    Challenge,
    Chunk,
    Connection,
    ConnectionClosed,
    Done,
    EndOfMessage,
    Error,
    Event,
    Global,
    Heartbeat,
    Hello,
    Message,
    Plan,
    Role,
    TensorAssembler,
    TensorSpec,
    Update,
    Welcome,
    check_signature,
    iter_chunks,
    specs_of,
)
from fedsock.protocol.compression import parse_compression
from fedsock.protocol.secagg import SecAggAbort, SecAggInbox, SecAggMessage, SecAggRoster, SecAggUnmask
from fedsock.secagg.fixedpoint import RangeError
from fedsock.secagg.worker import WorkerRound
from fedsock.worker.compress import UpdateEncoder
from fedsock.worker.privacy import clip_for_plan
from fedsock.worker.secure import masked_update

log = logging.getLogger("fedsock.worker")


def _tls_fatal(exc: ssl.SSLError) -> bool:
    """Whether a TLS failure will not go away by retrying (certificates, versions, not TLS);
    a torn or reset connection (e.g. a chief being restarted) is worth retrying."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return False
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    text = str(exc).lower()
    return any(w in text for w in ("alert", "certificate", "version", "unsupported protocol", "no protocols"))


def _check_validity(cert: Path) -> None:
    """Refuse to start with a client certificate that is expired or not yet valid."""
    import datetime

    from cryptography import x509

    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {cert}: {exc}") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > c.not_valid_after_utc:
        raise ConfigError(f"the client certificate {cert} expired on {c.not_valid_after_utc:%Y-%m-%d}; "
                          "ask for a new one ('fedsock certs client')")
    if now < c.not_valid_before_utc:
        raise ConfigError(f"the client certificate {cert} is not valid before {c.not_valid_before_utc:%Y-%m-%d}")


def _common_name(cert: Path) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        c = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {cert}: {exc}") from None
    names = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


READ_BYTES = limits.READ_BYTES


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port).

    Raises:
        ConfigError: no port, or not a number.
    """
    if isinstance(address, tuple):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bad chief address {address!r}: use HOST:PORT, e.g. 1.2.3.4:7777")
    return host.strip("[]"), int(port)


def token_from(token: str | tls.JoinToken | None) -> tls.JoinToken:
    """The join token given, or ``$FEDSOCK_TOKEN``.

    Raises:
        ConfigError: none given, or not a token.
    """
    tok = _token_from(token)
    assert tok is not None
    return tok


def _token_from(token: str | tls.JoinToken | None, optional: bool = False) -> tls.JoinToken | None:
    """The join token given, or ``$FEDSOCK_TOKEN``; None if there is none and it is ``optional``."""
    if isinstance(token, tls.JoinToken):
        return token
    text = token or os.environ.get("FEDSOCK_TOKEN")
    if not text and optional:
        return None
    if not text:
        raise ConfigError(
            "no join token: pass --token (or token=...) or set FEDSOCK_TOKEN; the chief prints it "
            "at start and stores it in <state-dir>/token"
        )
    return tls.JoinToken.parse(text)


class Client:
    """A worker's connection to the chief.

    Connecting, authenticating and receiving ``Welcome`` happen in the
    constructor (with retries for ``connect_timeout`` seconds).

    Args:
        address: ``"host:port"`` of the chief.
        token: join token; default ``$FEDSOCK_TOKEN``.
        name: how the chief's logs call this worker (default: host name + pid).
        names: tensor names to send (default: the chief's, or ``t0, t1, ...``).
        connect_timeout: seconds to keep retrying an unreachable chief.
        idle_timeout: seconds of silence from the chief before giving up.
        heartbeat_interval: seconds between heartbeats while idle.
        reconnect_timeout: after a lost connection (chief restarted, link
            cut, chief silent for ``idle_timeout``), seconds to keep trying to
            reconnect, with exponential backoff and jitter; 0 disables it.
        ca, cert, key: mutual TLS with an organisation's PKI: verify the
            chief against CA file ``ca`` (and its host name) instead of the
            token's pinned fingerprint, and present client certificate
            ``cert``/``key``; the identity is the certificate's common name,
            and no token is needed.
        save_updates: directory in which to keep a copy of every update sent
            (``round-NNNNNN.npz``: the tensors and ``num_examples``), to
            audit what left this machine.

    Raises:
        ConfigError: bad address or token.
        ConnectError: chief not reachable within ``connect_timeout``.
        AuthenticationError: wrong token, or the chief's certificate is not
            the pinned one.
    """

    def __init__(self, address: str | tuple[str, int], token: str | tls.JoinToken | None = None,
                 name: str | None = None, *, names: Sequence[str] | None = None,
                 connect_timeout: float = 60.0, idle_timeout: float = limits.IDLE_TIMEOUT_S,
                 heartbeat_interval: float = limits.HEARTBEAT_INTERVAL_S,
                 reconnect_timeout: float = 300.0,
                 save_updates: str | os.PathLike[str] | None = None,
                 ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
                 key: str | os.PathLike[str] | None = None) -> None:
        self.address = parse_address(address)
        self._token = _token_from(token, optional=ca is not None)
        self._tls = (Path(ca), Path(cert), Path(key)) if ca and cert and key else None
        if ca is not None and self._tls is None:
            raise ConfigError("mutual TLS needs ca, cert and key together")
        own = self._token.name if self._token else (_common_name(Path(cert)) if cert else None)
        if cert is not None:
            _check_validity(Path(cert))
        if name is not None and own is not None and name != own:
            raise ConfigError(f"the {'token' if self._token and self._token.name else 'certificate'} is for "
                              f"worker {own!r}, not {name!r}; drop --name or use the matching credentials")
        self.name = name or own or f"{socket.gethostname()}-{os.getpid()}"
        #: Sent in every Hello of this Client: the chief tells its reconnects from another worker's.
        self.instance = os.urandom(limits.INSTANCE_ID_BYTES)
        self._names = list(names) if names is not None else None
        self._idle_timeout = idle_timeout
        self._hb_interval = heartbeat_interval
        self._reconnect_timeout = reconnect_timeout
        self.reconnects = 0
        self._save_updates = Path(save_updates) if save_updates is not None else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_sent = time.monotonic()
        self.finished = False
        self.weights: list[np.ndarray] | None = None
        self._model_buf: np.ndarray | None = None  # the memory behind self.weights
        self._global_specs: tuple[TensorSpec, ...] = ()
        self.round = 0
        self._encoder: UpdateEncoder | None = None
        self._rbuf = memoryview(bytearray(READ_BYTES))
        with self._lock:
            self.welcome = self._connect(connect_timeout)
        self.plan: Plan = self.welcome.plan
        self.worker_id = self.welcome.worker_id
        self._hb = threading.Thread(target=self._heartbeat_loop, name="fedsock-heartbeat", daemon=True)
        self._hb.start()

    # --- public API -------------------------------------------------------

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
            return self.weights
        if weights is None:
            raise ConfigError("the chief has no model yet: pass your initial weights to join()")
        return self._exchange(Update(0, 0, self._specs(weights)), weights)

    def sync(self, weights: Sequence[np.ndarray], num_examples: int,
             metrics: dict[str, float] | None = None) -> list[np.ndarray]:
        """Send weights trained on ``num_examples`` examples; block until the average returns.

        After the last round this returns the final weights and sets
        ``finished``; later calls return them again without talking to the chief.
        """
        if self.finished:
            assert self.weights is not None
            return self.weights
        if self.weights is None:
            raise FedsockError("call join() before sync()")
        weights = clip_for_plan(weights, self.weights, self.plan)  # differential privacy (no-op without)
        upd = Update(self.round + 1, int(num_examples), self._specs(weights), dict(metrics or {}))
        if self._save_updates is not None:
            self._save_updates.mkdir(parents=True, exist_ok=True)
            np.savez(self._save_updates / f"round-{upd.round:06d}.npz",
                     num_examples=np.int64(upd.num_examples),
                     **{f"w{i:04d}": np.asarray(w) for i, w in enumerate(weights)})
        if self.plan.secure_agg:
            return self._secure_exchange(weights, upd)
        comp = parse_compression(self.welcome.compress)
        if comp.mode != "none" and self._global_specs:  # deltas from the global model we hold
            if self._encoder is None or self._encoder.comp != comp:
                self._encoder = UpdateEncoder(comp)
            specs, payloads = self._encoder.encode(weights, self.weights, upd.tensors)
            return self._exchange(replace(upd, tensors=specs), payloads)
        return self._exchange(upd, weights)

    def close(self, reason: str | None = None) -> None:
        """Hang up; with ``reason``, tell the chief why first."""
        self._stop.set()
        with self._lock:
            if reason and not self._conn.we_finished and not self.finished:
                try:
                    self._send(Error(code="shutdown", message=reason))
                except (OSError, FedsockError):
                    pass
            try:
                self._sock.close()
            except OSError:
                pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- connection -------------------------------------------------------

    def _connect(self, timeout: float) -> Welcome:
        """Connect, pin, authenticate; retry transient failures with backoff and jitter.

        Refused or reset connections, a chief that dies mid-handshake or says
        it is busy are retried until ``timeout``; a wrong certificate, a
        rejected token or a peer that does not speak TLS 1.3 are not.
        """
        host, port = self.address
        deadline = time.monotonic() + timeout
        delay, last = limits.RECONNECT_BACKOFF_START_S, "no attempt"
        ctx = tls.mutual_client_context(*self._tls) if self._tls else tls.client_context()
        while True:
            try:
                self._sock = self._open(ctx, host, port, timeout)
                self._conn = Connection(Role.WORKER)
                return self._handshake_locked()
            except ssl.SSLError as exc:
                if _tls_fatal(exc):
                    raise ConnectError(
                        f"TLS handshake with {host}:{port} failed: {tls.describe_tls_failure(exc)}"
                    ) from None
                last = str(exc)
            except (OSError, ConnectionLost) as exc:
                last = str(exc) or type(exc).__name__
                if self._tls is not None and isinstance(exc, ConnectionLost) and "handshake" in last:
                    # asyncio servers close without a TLS alert when they refuse a client certificate
                    last += ("; with mutual TLS this means the chief refused this worker's certificate "
                             "(not signed by the chief's CA?); the chief's log says why")
            with contextlib.suppress(AttributeError, OSError):
                self._sock.close()
            if time.monotonic() + delay > deadline:
                raise ConnectError(
                    f"could not reach the chief at {host}:{port} within {timeout:g} s ({last}); "
                    "is it running, and is the port open?"
                )
            log.info("chief at %s:%s not reachable (%s); retrying in %.1f s", host, port, last, delay)
            time.sleep(delay)
            delay = min(delay * 2, limits.RECONNECT_BACKOFF_MAX_S) * random.uniform(0.8, 1.2)

    def _open(self, ctx: ssl.SSLContext, host: str, port: int, timeout: float) -> ssl.SSLSocket:
        raw = socket.create_connection((host, port), timeout=min(10.0, max(timeout, 1.0)))
        try:
            sock = ctx.wrap_socket(raw, server_hostname=host)
            if self._tls is None:
                assert self._token is not None
                tls.check_pinned(sock, self._token.fingerprint)
        except BaseException:
            raw.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _handshake_locked(self) -> Welcome:
        self._send(Hello(name=self.name, instance=self.instance))
        ev = self._expect(Challenge)
        assert isinstance(ev, Challenge)
        if self._token is not None:
            mac = tls.auth_mac(self._token.secret, ev.nonce, self._token.fingerprint, self.name)
        else:  # mutual TLS: the certificate is the credential; the mac is not checked
            mac = bytes(32)
        self._send(Auth(mac))
        try:
            welcome = self._expect(Welcome)
        except PeerError as exc:
            if exc.code == "auth_failed":
                raise AuthenticationError(
                    f"authentication failed: the chief rejected the join token ({exc.text})"
                ) from None
            raise
        assert isinstance(welcome, Welcome)
        self.round = welcome.round
        if welcome.has_weights:
            self.weights = self._read_weights(welcome.tensors)
            self._global_specs = welcome.tensors
        else:
            self._read_weights(())
        return welcome

    def _exchange(self, upd: Update, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Send ``upd`` and wait for the model; across reconnects if the link drops."""
        with self._lock:
            while True:
                try:
                    self._send(upd, weights)
                except OSError as exc:
                    # The chief may have sent Done and hung up; read what is left.
                    log.info("send failed (%s); reading what the chief sent", exc)
                try:
                    return self._await_global()
                except ConnectionLost as exc:
                    if self._reconnect_timeout <= 0:
                        raise
                    self._reconnect(str(exc))
                if (model := self._moved_on(upd.round)) is not None:
                    return model
                log.info("re-sending the update for round %d", upd.round)

    def _secure_exchange(self, weights: Sequence[np.ndarray], upd: Update) -> list[np.ndarray]:
        """Secure aggregation of ``upd``: keys, shares, masked update, reveal; then the new model.

        An attempt the chief abandons (too few workers left) starts over with
        fresh keys; a lost connection reconnects and starts over, unless the
        round closed meanwhile.
        """
        names = [s.name for s in upd.tensors]
        with self._lock:
            while True:
                sa, keys = WorkerRound.start(upd.round)
                try:
                    self._send(keys)
                    while True:
                        ev = self._await_model_or(SecAggAbort, SecAggRoster, SecAggInbox, SecAggUnmask)
                        if isinstance(ev, list):  # the round's model
                            return ev
                        if isinstance(ev, SecAggAbort):
                            log.info("secure aggregation attempt %d of round %d abandoned by the chief (%s); "
                                     "starting over", ev.attempt, ev.round, ev.reason)
                            break
                        if isinstance(ev, SecAggRoster):
                            self._send(sa.on_roster(ev))
                        elif isinstance(ev, SecAggInbox):
                            sa.on_inbox(ev)
                            try:
                                msg, arrays = masked_update(sa, weights, upd.num_examples, self.plan, names)
                            except RangeError as exc:
                                self._send_quietly(Error(code="invalid_weights", message=str(exc)))
                                raise FedsockError(f"cannot take part in secure aggregation: {exc}") from None
                            self._send(msg, arrays)
                        else:
                            self._send(sa.on_unmask(ev))
                except RemoteProtocolError as exc:
                    self._send_quietly(Error(code=exc.code, message=str(exc)))
                    raise
                except (ConnectionLost, OSError) as exc:
                    if self._reconnect_timeout <= 0:
                        raise ConnectionLost(str(exc)) from None
                    self._reconnect(str(exc))
                    if (model := self._moved_on(upd.round)) is not None:
                        return model
                    log.info("starting secure aggregation of round %d again", upd.round)

    def _moved_on(self, round_: int) -> list[np.ndarray] | None:
        """After a reconnect: the model to continue from if round ``round_`` closed meanwhile
        (or the run ended: then Done follows); None if the update is still wanted."""
        if self.round >= self.plan.rounds:
            return self._await_global()
        if self.weights is not None and self.round != round_ - 1:
            log.info("round %d closed meanwhile; continuing from the chief's round %d", round_, self.round)
            return self.weights
        return None

    def _reconnect(self, reason: str) -> None:
        """Connect and authenticate again (same name, so the chief knows us)."""
        log.warning("connection to the chief lost (%s); reconnecting for up to %g s",
                    reason, self._reconnect_timeout)
        with contextlib.suppress(OSError):
            self._sock.close()
        self.welcome = self._connect(self._reconnect_timeout)
        self.reconnects += 1
        log.info("reconnected as worker %d; the chief is at round %d", self.welcome.worker_id, self.round)

    def _await_global(self) -> list[np.ndarray]:
        model = self._await_model_or()
        assert isinstance(model, list)
        return model

    def _await_model_or(self, *kinds: type) -> Any:
        """The next model (a Global or Done, read in: a list of arrays), or the next event of
        one of ``kinds``; heartbeats are skipped, anything else is an error."""
        while True:
            ev = self._next_event()
            if isinstance(ev, Heartbeat):
                continue
            if isinstance(ev, (Global, Done)):
                return self._take_model(ev)
            if isinstance(ev, ConnectionClosed):
                raise ConnectionLost("the chief closed the connection")
            if kinds and isinstance(ev, kinds):
                return ev
            raise FedsockError(f"unexpected {type(ev).__name__} from the chief")

    def _take_model(self, ev: Global | Done) -> list[np.ndarray]:
        """Read the weights that follow a Global or Done; they are the model from now on."""
        self.weights = self._read_weights(ev.tensors, reuse=True)
        self._global_specs = ev.tensors
        self.round = ev.round
        if isinstance(ev, Done):
            self.finished = True
        return self.weights

    def _read_weights(self, specs: Sequence[TensorSpec], reuse: bool = False) -> list[np.ndarray]:
        """The arrays of a weights message; with ``reuse``, in the memory of the model we hold
        if nothing else holds any of it (fresh memory costs a page fault per page)."""
        total = sum(s.wire_nbytes for s in specs)
        buf = self._spare_model_buffer(total) if reuse else None
        if buf is None:
            buf = np.empty(total, np.uint8)
        self._model_buf = buf
        asm = TensorAssembler(specs, buf)
        silent_since = time.monotonic()
        while True:
            direct = self._conn.direct_chunk()
            if isinstance(direct, tuple):  # the chunk's data is decrypted straight into place
                self._read_into(asm.target(*direct))
                silent_since = time.monotonic()
                continue
            if direct is not None:  # a chunk's header may follow: read no further than it
                silent_since = self._feed(self._rbuf[:direct], silent_since)
                continue
            ev = self._next_event()
            if isinstance(ev, Chunk):
                asm.add(ev)
            elif isinstance(ev, EndOfMessage):
                return asm.arrays()
            else:
                raise FedsockError(f"unexpected {type(ev).__name__} inside a weights message")

    def _spare_model_buffer(self, nbytes: int) -> np.ndarray | None:
        """The buffer behind ``self.weights``, taken back (``self.weights`` becomes None) if it
        is big enough and no one else holds the list, an array of it or a view of the buffer."""
        buf, held = self._model_buf, self.weights
        if buf is None or held is None or buf.size < nbytes:
            return None
        # our own references: the attributes, these locals, the calls' arguments; each array is a view of buf
        if (sys.getrefcount(held) != 3 or sys.getrefcount(buf) != 3 + len(held)
                or any(sys.getrefcount(held[i]) != 2 for i in range(len(held)))):
            return None
        self.weights = None  # if the transfer fails, no half-written model is left behind
        return buf

    def _read_into(self, dest: memoryview) -> None:
        """The data of a chunk started with ``direct_chunk``, read into ``dest``."""
        got = self._conn.take_chunk_data(dest)
        silent_since = time.monotonic()
        while got < len(dest):
            n = self._recv_into(dest[got:], silent_since)
            if n is None:
                continue
            if n == 0:
                self._conn.receive_data(b"")  # the next event reports the truncation
                return
            got += n
            self._conn.chunk_data_received(n)
            silent_since = time.monotonic()

    def _expect(self, kind: type) -> Event:
        while True:
            ev = self._next_event()
            if isinstance(ev, kind):
                return ev
            if isinstance(ev, ConnectionClosed):
                raise ConnectionLost("the chief closed the connection during the handshake")
            raise FedsockError(f"expected {kind.__name__}, got {type(ev).__name__}")

    def _next_event(self) -> Event:
        """Next event; heartbeats go out while we wait. Raises PeerError on Error."""
        silent_since = time.monotonic()
        while True:
            try:
                ev = self._conn.next_event()
            except ConnectionTruncated as exc:  # a cut link or a killed chief: reconnect
                raise ConnectionLost(str(exc)) from None
            except RemoteProtocolError as exc:
                self._send_quietly(Error(code=exc.code, message=str(exc)))
                raise
            if ev is not NEED_DATA:
                if isinstance(ev, Error):
                    if ev.code in ("shutdown", "timeout", "busy"):
                        raise ConnectionLost(f"the chief hung up: {ev.message}")
                    raise PeerError(ev.code, ev.message)
                return ev
            silent_since = self._feed(self._rbuf, silent_since)

    def _feed(self, view: memoryview, silent_since: float) -> float:
        """One read (into ``view``) fed to the Connection; returns when the chief was last heard."""
        n = self._recv_into(view, silent_since)
        if n is None:
            return silent_since
        self._conn.receive_data(view[:n] if n else b"")
        return time.monotonic()

    def _recv_into(self, view: memoryview, silent_since: float) -> int | None:
        """One read into ``view``: bytes read (0: end of stream), or None after a heartbeat
        interval of silence (a heartbeat went out)."""
        self._sock.settimeout(self._hb_interval)
        try:
            return self._sock.recv_into(view)
        except TimeoutError:
            if time.monotonic() - silent_since > self._idle_timeout:
                raise ConnectionLost(f"the chief has been silent for {self._idle_timeout:g} s") from None
            if self._conn.phase.value == "established" and not self._conn.we_finished:
                self._send_quietly(Heartbeat())
            return None
        except ssl.SSLError as exc:
            if not _tls_fatal(exc):
                raise ConnectionLost(f"connection to the chief lost: {exc}") from None
            # TLS 1.3 reports a rejected client certificate only at the first read.
            why = tls.describe_tls_failure(exc)
            if self._tls is not None and "certificate" in why:
                raise ConnectError(f"the chief refused this worker's certificate: {why}") from None
            raise ConnectError(f"the chief ended the TLS session: {why}") from None
        except OSError as exc:
            raise ConnectionLost(f"connection to the chief lost: {exc}") from None

    def _send(self, msg: Message | SecAggMessage, arrays: Sequence[np.ndarray] = ()) -> None:
        self._sock.settimeout(self._idle_timeout)
        self._sock.sendall(self._conn.send(msg))
        for chunk in iter_chunks(arrays):
            for part in self._conn.send_parts(chunk):  # the tensor bytes go out without a copy
                self._sock.sendall(part)
        self._last_sent = time.monotonic()

    def _send_quietly(self, msg: Message) -> None:
        try:
            self._send(msg)
        except (OSError, FedsockError):
            pass

    def _specs(self, weights: Sequence[np.ndarray]) -> tuple[TensorSpec, ...]:
        names = self._names
        if names is None and len(self._global_specs) == len(weights):
            names = [s.name for s in self._global_specs]
        return specs_of([np.asarray(w) for w in weights], names)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self._hb_interval / 2):
            if time.monotonic() - self._last_sent < self._hb_interval:
                continue
            if not self._lock.acquire(blocking=False):
                continue  # a sync is under way; it sends its own heartbeats
            try:
                if not self._conn.we_finished and not self.finished:
                    self._send(Heartbeat())
            except (OSError, FedsockError):
                pass
            finally:
                self._lock.release()
