"""The worker's side of the identity rules, against a scripted chief over real TLS in a thread:
one instance id per Client, the reconnect proof on every reconnect, name_in_use retried until
the chief's idle timeout has passed and then a message that says to pick another --name."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import fedsock
from fedsock import limits
from fedsock.protocol import (
    NEED_DATA,
    Auth,
    Challenge,
    Connection,
    EndOfMessage,
    Error,
    Global,
    Hello,
    Plan,
    Role,
    Update,
    Welcome,
    iter_chunks,
    specs_of,
    verify_reconnect_proof,
)
from fedsock.transport import tls
from fedsock.transport.errors import NameInUse
from fedsock.worker import reconnect
from fedsock.worker.reconnect import Backoff
from tests.conftest import finish, start_worker

MODEL = [np.arange(6, dtype=np.float32).reshape(2, 3)]
SPECS = specs_of(MODEL, ["w"])
PLAN = Plan(rounds=5, sync_every=1, batch_size=1)


@dataclass
class Seen:
    """What the scripted chief saw on one connection."""

    hello: Hello
    nonce: bytes
    auth: Auth
    secret: bytes = b""  # the reconnect secret its Welcome carried


@dataclass
class ScriptedChief:
    """Accepts TLS connections; ``admit(index, seen)`` decides per connection: True = Welcome, then
    answer one Update with a Global and hang up; False = Error name_in_use."""

    tmp: str
    admit: Callable[[int, Seen], bool]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        from pathlib import Path

        ident = tls.ensure_identity(Path(self.tmp), ["127.0.0.1"])
        self.token = str(ident.token)
        self._ctx = tls.server_context(ident.cert_path, ident.key_path)
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._lsock.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._stop = True
        self._lsock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                raw, _ = self._lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_one, args=(raw,), daemon=True).start()

    def _serve_one(self, raw: socket.socket) -> None:
        try:
            with self._ctx.wrap_socket(raw, server_side=True) as sock:
                sock.settimeout(10)
                self._talk(sock)
        except (OSError, ssl.SSLError):
            pass

    def _talk(self, sock: ssl.SSLSocket) -> None:
        conn = Connection(Role.CHIEF)

        def next_event():  # type: ignore[no-untyped-def]
            while (ev := conn.next_event()) is NEED_DATA:
                conn.receive_data(sock.recv(65536))
            return ev

        hello = next_event()
        nonce = os.urandom(32)
        sock.sendall(conn.send(Challenge(nonce)))
        auth = next_event()
        seen = Seen(hello, nonce, auth)
        self.seen.append(seen)
        if not self.admit(len(self.seen) - 1, seen):
            sock.sendall(conn.send(Error(code="name_in_use", message=(
                f"the name {hello.name} is in use by another running worker; start this one with a "
                "different --name (or wait 1 s if that worker has stopped)"))))
            return
        seen.secret = os.urandom(limits.RECONNECT_SECRET_BYTES)
        sock.sendall(conn.send(Welcome(len(self.seen), 0, PLAN, SPECS, has_weights=True,
                                       reconnect_secret=seen.secret)))
        for chunk in iter_chunks(MODEL):
            sock.sendall(conn.send(chunk))
        upd = next_event()
        if not isinstance(upd, Update):  # the worker left
            return
        while not isinstance(next_event(), EndOfMessage):
            pass
        if len(self.seen) % 2:  # every other connection is cut before the answer
            return
        sock.sendall(conn.send(Global(upd.round, SPECS)))
        for chunk in iter_chunks([m + upd.round for m in MODEL]):
            sock.sendall(conn.send(chunk))


@pytest.fixture
def scripted(tmp_path):
    chiefs: list[ScriptedChief] = []

    def make(admit: Callable[[int, Seen], bool]) -> ScriptedChief:
        chiefs.append(ScriptedChief(str(tmp_path / f"chief{len(chiefs)}"), admit))
        return chiefs[-1]

    yield make
    for c in chiefs:
        c.close()


def test_one_instance_id_and_a_reconnect_proof_on_every_reconnect(scripted):
    chief = scripted(lambda i, seen: True)
    with fedsock.Client(chief.address, token=chief.token, name="w1", reconnect_timeout=20) as c:
        c.join()
        got = c.sync([m + 1 for m in MODEL], num_examples=3)  # connection 1 is cut; connection 2 answers
        np.testing.assert_array_equal(got[0], MODEL[0] + 1)
        assert c.reconnects == 1
    first, second = chief.seen[0], chief.seen[1]
    assert len(first.hello.instance) == limits.INSTANCE_ID_BYTES
    assert first.hello.instance == second.hello.instance == c.instance
    assert first.auth.resume is None  # nothing to prove on the first connection
    assert second.auth.resume is not None
    assert verify_reconnect_proof(first.secret, second.nonce, "w1", second.auth.resume)
    assert not verify_reconnect_proof(second.secret, second.nonce, "w1", second.auth.resume)


def test_two_clients_have_different_instance_ids(scripted):
    chief = scripted(lambda i, seen: True)
    with fedsock.Client(chief.address, token=chief.token, name="a") as a, \
            fedsock.Client(chief.address, token=chief.token, name="b") as b:
        assert a.instance != b.instance
    assert chief.seen[0].hello.instance != chief.seen[1].hello.instance


def test_name_in_use_is_retried_until_the_old_connection_would_have_timed_out(scripted, monkeypatch):
    monkeypatch.setattr(reconnect, "NAME_HOLD_MARGIN_S", 0.5)
    refusals = 3
    chief = scripted(lambda i, seen: i >= refusals)
    t0 = time.monotonic()
    # connect_timeout shorter than the hold: the refusals are retried beyond it
    with fedsock.Client(chief.address, token=chief.token, name="w1", connect_timeout=0.1, idle_timeout=5) as c:
        assert c.weights is not None
    assert len(chief.seen) == refusals + 1 and time.monotonic() - t0 < 5.5


def test_name_in_use_for_good_raises_with_what_to_do(scripted, monkeypatch):
    monkeypatch.setattr(reconnect, "NAME_HOLD_MARGIN_S", 0.5)
    chief = scripted(lambda i, seen: False)
    t0 = time.monotonic()
    with pytest.raises(NameInUse, match="different --name") as exc:
        fedsock.Client(chief.address, token=chief.token, name="w1", connect_timeout=0.1, idle_timeout=1.0)
    waited = time.monotonic() - t0
    assert 1.5 <= waited < 5, waited  # the idle timeout and the margin have passed
    assert isinstance(exc.value, fedsock.errors.FedsockError) and exc.value.code == "name_in_use"
    assert len(chief.seen) >= 3  # retried with backoff, not once


def test_backoff_gives_up_on_ordinary_failures_at_the_timeout():
    b = Backoff(now=0.0, timeout=2.0, name_hold=100.0, jitter=lambda lo, hi: 1.0)
    delays, now = [], 0.0
    while (d := b.retry_in(now)) is not None:
        delays.append(d)
        now += d
    assert delays == [0.25, 0.5, 1.0] and now <= 2.0


def test_backoff_starts_over_once_an_attempt_reached_the_chief():
    """Found by bench/chaos.py: a worker that had retried a restarting chief for 6 s got its Welcome,
    the link was cut while the model came, and the next attempt waited the grown pause (5.9 s): the
    run ended meanwhile and the worker retried a chief that was gone."""
    b = Backoff(now=0.0, timeout=60.0, name_hold=100.0, jitter=lambda lo, hi: 1.0)
    now = 0.0
    for _ in range(6):  # the chief is down
        now += b.retry_in(now)
    assert b.retry_in(now) == 5.0
    b.reached()  # a Welcome came, then the link was cut
    assert [b.retry_in(now), b.retry_in(now)] == [0.25, 0.5]


def test_backoff_keeps_retrying_a_held_name_until_the_hold_has_passed_since_the_first_refusal():
    b = Backoff(now=0.0, timeout=1.0, name_hold=10.0, jitter=lambda lo, hi: 1.0)
    assert b.retry_in(3.0, name_in_use=True) == 0.25  # past the connect timeout, within the hold
    now = 3.0
    while (d := b.retry_in(now, name_in_use=True)) is not None:
        now += d
    assert now == pytest.approx(3.0 + 10.0 + reconnect.NAME_HOLD_MARGIN_S)  # the last try ends the hold
    assert b.refused_for(now) == now - 3.0
    # an ordinary failure after the refusals has only the connect timeout
    assert Backoff(now=0.0, timeout=1.0, name_hold=10.0).retry_in(3.0) is None


def test_the_final_message_keeps_the_chiefs_advice_or_adds_it():
    says = "the name w1 is in use by another running worker; start this one with a different --name"
    assert reconnect.name_in_use_message(says, "w1", 65).startswith(says)
    assert "--name than 'w1'" in reconnect.name_in_use_message("in use", "w1", 65)


def test_worker_py_refused_for_good_prints_the_advice_without_a_traceback_and_exits_2(scripted, tmp_path, digits):
    chief = scripted(lambda i, seen: False)
    proc = start_worker(tmp_path, "w1", "--chief", chief.address, "--data", str(digits / "worker-0"),
                        "--name", "w1", "--idle-timeout", "1", "--heartbeat-interval", "0.5", "--connect-timeout", "1",
                        token=chief.token)
    code, out = finish(proc, timeout=60)
    assert code == 2, out
    assert "worker.py: error:" in out and "different --name" in out, out
    assert "Traceback" not in out, out
    assert len(chief.seen) >= 3 and {s.hello.name for s in chief.seen} == {"w1"}
