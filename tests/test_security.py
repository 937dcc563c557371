"""A chief on the public internet: hostile clients, identities, mutual TLS, TLS versions.

The hostile suite runs against a live chief that trains two honest workers
at the same time; every attack must end in a clear error or a closed
connection within a bound, and the honest workers must keep finishing rounds.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fedsock
from fedsock import limits, tls
from fedsock.errors import AuthenticationError, ConnectError, PeerError
from fedsock.protocol import (
    NEED_DATA,
    Auth,
    Challenge,
    Connection,
    ConnectionClosed,
    EndOfMessage,
    Error,
    Global,
    Hello,
    Kind,
    Role,
    Update,
    Welcome,
    frames,
    iter_chunks,
    specs_of,
)
from tests.conftest import ROOT, env, start_chief
from tests.test_bad_input import SHAPES, Honest

pytestmark = pytest.mark.integration
BOUND = 10.0  # seconds within which every hostile connection must be answered or closed


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    chief = start_chief(tmp, "--rounds", "1000000", "--min-workers", "2", "--round-timeout", "2",
                        "--handshake-timeout", "2")
    honest = [Honest(chief.address, chief.token, name=f"honest-{i}") for i in range(2)]
    for h in honest:
        h.start()
    assert all(h.progresses(30) for h in honest), chief.output()
    yield chief, honest
    last = max(h.client.round for h in honest) + 3  # both stop after the same round
    for h in honest:
        h.stop_after = last
    for h in honest:
        h.join(30)
        assert not h.is_alive() and h.error is None, h.error
        h.client.close()
    chief.proc.kill()
    chief.proc.wait()


def still_training(honest) -> None:
    assert all(h.progresses(20) for h in honest), "the honest workers stopped finishing rounds"


class Raw:
    """A hand-driven TLS client speaking the protocol, for attacks."""

    def __init__(self, address: str, token: str) -> None:
        host, port = address.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=BOUND)
        self.sock = tls.client_context().wrap_socket(raw)
        self.token = tls.JoinToken.parse(token)
        tls.check_pinned(self.sock, self.token.fingerprint)
        self.conn = Connection(Role.WORKER)

    def send(self, msg, arrays=()) -> None:
        self.sock.sendall(self.conn.send(msg) + b"".join(self.conn.send(c) for c in iter_chunks(arrays)))

    def next(self):
        while True:
            ev = self.conn.next_event()
            if ev is not NEED_DATA:
                return ev
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError):
                data = b""
            self.conn.receive_data(data)

    def until(self, kind):
        while True:
            ev = self.next()
            if isinstance(ev, (kind, ConnectionClosed, Error)):
                return ev

    def join(self, name: str, mac: bytes | None = None) -> tuple[bytes, bytes]:
        self.send(Hello(name=name, instance=os.urandom(16)))
        nonce = self.until(Challenge).nonce
        mac = mac or tls.auth_mac(self.token.secret, nonce, self.token.fingerprint, name)
        self.send(Auth(mac))
        ev = self.until(Welcome)
        if isinstance(ev, Welcome):
            self.welcome = ev
            assert isinstance(self.until(EndOfMessage), EndOfMessage)
        return nonce, mac

    def error(self) -> Error | None:
        """Read until an Error or the end; within BOUND seconds."""
        t0 = time.monotonic()
        while True:
            ev = self.next()
            assert time.monotonic() - t0 < BOUND
            if isinstance(ev, Error):
                return ev
            if isinstance(ev, ConnectionClosed):
                return None


def closed_within(sock: socket.socket, bound: float = BOUND) -> float:
    sock.settimeout(bound)
    t0 = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    return time.monotonic() - t0


def test_tls_client_that_never_says_hello(live):
    chief, honest = live
    r = Raw(chief.address, chief.token)
    t0 = time.monotonic()
    err = r.error()
    assert err is not None and err.code == "timeout" and time.monotonic() - t0 < 2 + 3
    still_training(honest)


def test_two_hundred_idle_connections(live):
    """From another address (127.0.0.2): the flood's handshake timeouts count against it, not 127.0.0.1."""
    chief, honest = live
    host, port = chief.address.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=BOUND, source_address=("127.0.0.2", 0))
             for _ in range(200)]
    still_training(honest)  # the flood does not stop training
    t0 = time.monotonic()
    for s in socks:
        closed_within(s)
        s.close()
    assert time.monotonic() - t0 < 2 + BOUND  # all closed: over the cap at once, the rest at the TLS deadline
    assert "refusing connections from 127.0.0.2: too many connections still in the handshake from this " \
           f"address (at most {limits.MAX_UNAUTHENTICATED_PER_ADDRESS})" in chief.output()
    with fedsock.Client(chief.address, token=chief.token, name="after-flood") as c:  # admission recovered
        assert c.join() is not None
    still_training(honest)


def test_frame_announcing_more_than_the_limit(live):
    chief, honest = live
    r = Raw(chief.address, chief.token)
    r.sock.sendall(frames.encode_header(Kind.HELLO, 2**32 - 1))  # the largest a header can announce
    assert r.error().code == "frame_too_large"
    r = Raw(chief.address, chief.token)
    r.join("huge-announcer")
    spec = {"name": "t", "dtype": "float64", "shape": [2**20, 2**17]}  # 2^40 bytes of weights
    body = frames.pack_body({"round": 1, "num_examples": 1, "metrics": {}, "tensors": [spec]})
    r.sock.sendall(frames.encode_header(Kind.UPDATE, len(body)) + body)
    assert r.error().code == "limit_exceeded"
    still_training(honest)


def test_truncated_frame_then_hang_up(live):
    chief, honest = live
    r = Raw(chief.address, chief.token)
    r.join("truncator")
    w = [np.zeros(s, np.float32) for s in SHAPES]
    data = r.conn.send(Update(1, 5, specs_of(w))) + b"".join(r.conn.send(c) for c in iter_chunks(w))
    r.sock.sendall(data[: len(data) - 7])
    r.sock.close()
    time.sleep(0.5)
    assert "(truncator)" in chief.output()
    still_training(honest)


def test_replayed_auth_is_refused(live):
    chief, honest = live
    first = Raw(chief.address, chief.token)
    _, mac = first.join("replayer")
    first.sock.close()
    second = Raw(chief.address, chief.token)
    second.send(Hello(name="replayer", instance=os.urandom(16)))
    second.until(Challenge)
    second.send(Auth(mac))  # valid for the first connection's nonce only
    err = second.error()
    assert err is not None and err.code == "auth_failed"
    still_training(honest)


def test_future_round_and_double_update(live):
    chief, honest = live
    r = Raw(chief.address, chief.token)
    r.join("future")
    w = [np.zeros(s, np.float32) for s in SHAPES]
    r.send(Update(10**9, 5, specs_of(w)), w)
    err = r.error()
    assert err.code == "bad_message" and "being collected" in err.message
    with fedsock.Client(chief.address, token=chief.token, name="twice", reconnect_timeout=0) as c:
        g = c.join()
        outcomes = []
        for attempt in range(5):  # the honest workers may close the round between the two sends: then try again
            r2 = Raw(chief.address, chief.token)
            r2.join(f"twice{attempt}")
            upd = Update(r2.welcome.round + 1, 5, specs_of(g))
            r2.send(upd, g)
            r2.send(upd, g)  # the same update again, same connection
            ev = r2.until((Error, Global))
            outcomes.append(ev)
            if isinstance(ev, (Error, ConnectionClosed)):
                break
            # a Global: the round closed first, so both updates were stale; the chief answered with its model
            assert ev.round >= upd.round, ev
            r2.sock.close()
    err = outcomes[-1]
    assert isinstance(err, Error), outcomes
    assert err.code == "bad_message" and "second update" in err.message, err
    still_training(honest)


def test_dtype_mismatch(live):
    chief, honest = live
    with fedsock.Client(chief.address, token=chief.token, name="float64") as c:
        g = c.join()
        with pytest.raises(PeerError) as ei:
            c.sync([g[0].astype(np.float64), g[1]], 5)
    assert ei.value.code == "signature_mismatch" and "float64" in str(ei.value) and "float32" in str(ei.value)
    still_training(honest)


def test_chief_memory_stays_bounded(live):
    chief, honest = live
    status = Path(f"/proc/{chief.proc.pid}/status").read_text()
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    assert peak_kib < 300 * 1024, f"chief peak RSS {peak_kib / 1024:.0f} MiB"


# --- identities --------------------------------------------------------------


def fedsock_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedsock", *args], capture_output=True, text=True, env=env(),
                          timeout=60)


def test_per_worker_tokens_and_revocation(tmp_path):
    chief = start_chief(tmp_path, "--rounds", "1000", "--min-workers", "1", "--round-timeout", "1")
    try:
        state = str(chief.state_dir)
        out = fedsock_cli("token", "create", "alice", "--state-dir", state)
        assert out.returncode == 0, out.stderr
        alice_token = out.stdout.strip().splitlines()[-1]
        assert alice_token.endswith(".alice")
        alice = fedsock.Client(chief.address, token=alice_token, reconnect_timeout=0)
        assert alice.name == "alice"
        w = alice.join([np.zeros(3, np.float32)])
        # the shared token cannot impersonate a worker that has its own token
        with pytest.raises(AuthenticationError):
            fedsock.Client(chief.address, token=chief.token, name="alice", connect_timeout=5)
        listing = fedsock_cli("token", "list", "--state-dir", state).stdout
        assert "alice" in listing and "active" in listing and alice_token.split(".")[2] not in listing
        assert fedsock_cli("token", "revoke", "alice", "--state-dir", state).returncode == 0
        with pytest.raises(AuthenticationError, match="revoked"):  # new connections: at once
            fedsock.Client(chief.address, token=alice_token, connect_timeout=5)
        with pytest.raises(PeerError) as ei:  # the live one: when the next round closes
            for _ in range(5):
                w = alice.sync([w[0] + 1], 1)
        assert ei.value.code == "auth_failed" and "revoked" in str(ei.value)
        log = chief.output()
        assert alice_token.split(".")[2] not in log and "worker 1 (alice)" in log
    finally:
        chief.proc.kill()


def test_worker_tokens_only_refuses_the_shared_token(tmp_path):
    chief = start_chief(tmp_path, "--rounds", "1", "--worker-tokens-only")
    try:
        with pytest.raises(AuthenticationError, match="only per-worker tokens"):
            fedsock.Client(chief.address, token=chief.token, name="bob", connect_timeout=5)
    finally:
        chief.proc.kill()


def test_auth_failures_are_rate_limited_per_address(tmp_path):
    chief = start_chief(tmp_path, "--rounds", "1")
    try:
        good = tls.JoinToken.parse(chief.token)
        bad = tls.JoinToken(good.fingerprint, b"\x05" * 32)
        for _ in range(limits.MAX_AUTH_FAILURES_PER_MINUTE):
            with pytest.raises(AuthenticationError):
                fedsock.Client(chief.address, token=bad, name="guesser", connect_timeout=5)
        with pytest.raises(ConnectError):  # closed before TLS now, even with the right token
            fedsock.Client(chief.address, token=chief.token, name="guesser", connect_timeout=1)
        assert "failed authentications a minute" in chief.output()
    finally:
        chief.proc.kill()


# --- mutual TLS ---------------------------------------------------------------


@pytest.fixture
def pki(tmp_path):
    from fedsock import certs

    pki = tmp_path / "pki"
    for args in (["certs", "ca", "--out", str(pki)],
                 ["certs", "server", "--out", str(pki), "--host", "127.0.0.1", "--host", "localhost"],
                 ["certs", "client", "--out", str(pki), "--name", "hospital-a"]):
        out = fedsock_cli(*args)
        assert out.returncode == 0, out.stderr
    other = tmp_path / "other"
    certs.make_ca(other, name="someone else")
    certs.make_client(other, other, "intruder")
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    certs.make_client(pki, tmp_path / "expired", "old-timer", days=1, start=past)
    return pki, other, tmp_path / "expired"


def test_mutual_tls(tmp_path, pki):
    pki, other, expired = pki
    chief = start_chief(tmp_path, "--rounds", "1000", "--min-workers", "1", "--cert", str(pki / "server.crt"),
                        "--key", str(pki / "server.key"), "--ca", str(pki / "ca.crt"))
    try:
        c = fedsock.Client(chief.address, ca=pki / "ca.crt", cert=pki / "hospital-a.crt", key=pki / "hospital-a.key")
        assert c.name == "hospital-a"  # the identity is the certificate's subject
        w = c.join([np.zeros(2, np.float32)])
        np.testing.assert_allclose(c.sync([w[0] + 1], 3)[0], 1.0)
        c.close()
        with pytest.raises(ConnectError, match="refused this worker's certificate"):
            fedsock.Client(chief.address, ca=pki / "ca.crt", cert=other / "intruder.crt", key=other / "intruder.key",
                           connect_timeout=5)
        with pytest.raises(fedsock.ConfigError, match="expired"):  # refused before it even connects
            fedsock.Client(chief.address, ca=pki / "ca.crt", cert=expired / "old-timer.crt",
                           key=expired / "old-timer.key", connect_timeout=5)
        # ... and the chief refuses an expired certificate too, saying so
        ctx = tls.mutual_client_context(pki / "ca.crt", expired / "old-timer.crt", expired / "old-timer.key")
        host, port = chief.address.rsplit(":", 1)
        s = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=5), server_hostname="127.0.0.1")
        assert closed_within(s) < BOUND
        time.sleep(0.3)
        assert "a certificate has expired" in chief.output()
        with pytest.raises(ConnectError, match="certificate"):  # the chief is not signed by this CA
            fedsock.Client(chief.address, ca=other / "ca.crt", cert=pki / "hospital-a.crt",
                           key=pki / "hospital-a.key", connect_timeout=5)
        # no client certificate at all: the chief closes and says why in its log
        s = tls.client_context().wrap_socket(socket.create_connection((host, int(port)), timeout=5))
        assert closed_within(s) < BOUND
        time.sleep(0.3)
        assert "presented no client certificate" in chief.output()
    finally:
        chief.proc.kill()


# --- TLS versions and certificates ---------------------------------------------


def test_tls_below_1_3_is_refused_both_ways(tmp_path):
    chief = start_chief(tmp_path, "--rounds", "1")
    try:
        host, port = chief.address.rsplit(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=5))
        time.sleep(0.3)
        assert "does not speak TLS 1.3" in chief.output()
    finally:
        chief.proc.kill()
    # and a worker refuses a server that offers only TLS 1.2
    ident = tls.ensure_identity(tmp_path / "old", ["127.0.0.1"])
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.maximum_version = ssl.TLSVersion.TLSv1_2
    sctx.load_cert_chain(ident.cert_path, ident.key_path)
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        try:
            sctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            pass
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    with pytest.raises(ConnectError, match="TLS 1.3"):
        fedsock.Client(f"127.0.0.1:{srv.getsockname()[1]}", token=str(ident.token), connect_timeout=5)
    srv.close()


def test_expired_pinned_certificate_is_refused(tmp_path):
    from fedsock import certs

    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    certs.make_ca(tmp_path / "pki")
    crt = certs.make_server(tmp_path / "pki", tmp_path / "pki", ["127.0.0.1"], days=1, start=past)
    chief = start_chief(tmp_path, "--rounds", "1", "--cert", str(crt), "--key", str(crt.with_suffix(".key")))
    try:
        with pytest.raises(AuthenticationError, match="expired"):
            fedsock.Client(chief.address, token=chief.token, connect_timeout=5)
    finally:
        chief.proc.kill()


def test_no_pickle_loads_anywhere():
    offenders = []
    for path in (ROOT / "fedsock").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"import pickle|pickle\.load|allow_pickle\s*=\s*True|cloudpickle|dill", line):
                offenders.append(f"{path}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_atheris_fuzz_run_is_clean(tmp_path):
    import shutil

    work = tmp_path / "corpus"
    shutil.copytree(ROOT / "fuzz" / "corpus", work)
    out = subprocess.run([sys.executable, str(ROOT / "fuzz" / "fuzz.py"), "protocol", str(work),
                          "-max_total_time=8", "-print_final_stats=1"], capture_output=True, text=True,
                         env=dict(env(), PYTHONPATH=str(ROOT)), timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = int(re.search(r"stat::number_of_executed_units:\s+(\d+)", out.stderr).group(1))
    assert runs > 500, out.stderr[-2000:]


def test_worker_refuses_unsafe_model_configs():
    import json

    import keras

    from fedsock.kerasutil import rebuild

    lam = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2)])
    with pytest.raises(fedsock.ConfigError, match="[Ll]ambda"):
        rebuild(lam.to_json(), None)
    evil = {"module": "os", "class_name": "system", "config": {"command": "echo pwned"}, "registered_name": None}
    with pytest.raises(fedsock.ConfigError):
        rebuild(json.dumps(evil), None)
