"""One live connection per name, stale replies, compression terms and a prompt stop (real chief, real TLS)."""

from __future__ import annotations

import os
import signal
import socket
import time

import numpy as np
import pytest

from fedsock import limits, tls
from fedsock.protocol import (
    Auth,
    Challenge,
    EndOfMessage,
    Error,
    Global,
    Hello,
    TensorSpec,
    Update,
    Welcome,
    reconnect_proof,
    specs_of,
)
from fedsock.protocol.compression import Encoding
from tests.conftest import start_chief
from tests.test_bad_input import SHAPES, Honest
from tests.test_security import BOUND, Raw, still_training

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("identity")
    chief = start_chief(tmp, "--rounds", "1000000", "--min-workers", "1", "--round-timeout", "0.5",
                        "--handshake-timeout", "2")
    honest = [Honest(chief.address, chief.token, name="keeper")]
    honest[0].start()
    assert honest[0].progresses(30), chief.output()
    yield chief, honest
    honest[0].stop.set()
    honest[0].join(30)
    honest[0].client.close()
    chief.proc.kill()
    chief.proc.wait()


def hello_auth(r: Raw, name: str, instance: bytes, secret: bytes | None = None) -> Welcome | Error:
    """Hello, Challenge, Auth (with a reconnect proof under ``secret``); the Welcome (its chunks read) or Error."""
    r.send(Hello(name=name, instance=instance))
    nonce = r.until(Challenge).nonce
    mac = tls.auth_mac(r.token.secret, nonce, r.token.fingerprint, name)
    r.send(Auth(mac, resume=reconnect_proof(secret, nonce, name) if secret is not None else None))
    ev = r.until(Welcome)
    if isinstance(ev, Welcome):
        assert isinstance(r.until(EndOfMessage), EndOfMessage)
    return ev


def test_a_second_worker_under_a_live_name_is_refused_and_a_proven_reconnect_replaces(live):
    chief, honest = live
    first = Raw(chief.address, chief.token)
    welcome = hello_auth(first, "twin", os.urandom(16))
    assert isinstance(welcome, Welcome) and len(welcome.reconnect_secret) == limits.RECONNECT_SECRET_BYTES

    impostor = Raw(chief.address, chief.token)  # same token, same name, no proof
    err = hello_auth(impostor, "twin", os.urandom(16))
    assert isinstance(err, Error) and err.code == "name_in_use", err
    assert "different --name" in err.message and "twin" in err.message

    wrong = Raw(chief.address, chief.token)  # a proof under another secret is no proof
    assert getattr(hello_auth(wrong, "twin", os.urandom(16), secret=bytes(32)), "code", None) == "name_in_use"

    again = Raw(chief.address, chief.token)  # the first worker, reconnecting with its proof
    second = hello_auth(again, "twin", os.urandom(16), secret=welcome.reconnect_secret)
    assert isinstance(second, Welcome) and second.worker_id == welcome.worker_id
    assert second.reconnect_secret != welcome.reconnect_secret
    old = first.error()
    assert old is not None and old.code == "name_in_use" and "replaced by a newer connection" in old.message
    time.sleep(0.5)
    out = chief.output()
    assert out.count("its old connection") == 1
    assert "twin" not in "".join(line for line in out.splitlines() if "WARNING" in line)
    still_training(honest)


def test_a_name_whose_connection_ended_is_free_at_once_for_a_restarted_worker(live):
    chief, honest = live
    first = Raw(chief.address, chief.token)
    welcome = hello_auth(first, "phoenix", os.urandom(16))
    assert isinstance(welcome, Welcome)
    first.sock.close()  # the process is killed: the chief sees the end of the connection
    deadline = time.monotonic() + 10
    while "(phoenix) disconnected" not in chief.output() and "(phoenix): connection lost" not in chief.output():
        assert time.monotonic() < deadline, chief.output()[-2000:]
        time.sleep(0.05)
    # restarted: a new instance id and no reconnect secret, well within the idle timeout (60 s)
    again = hello_auth(Raw(chief.address, chief.token), "phoenix", os.urandom(16))
    assert isinstance(again, Welcome), again
    assert again.worker_id == welcome.worker_id  # the name keeps its worker id
    still_training(honest)


def test_a_name_with_a_newline_or_escape_never_reaches_the_log(live):
    chief, _ = live
    r = Raw(chief.address, chief.token)
    r.sock.sendall(r.conn.send(Hello(name="ok", instance=os.urandom(16))).replace(b"\xa2ok", b"\xa2o\n"))
    err = r.error()
    assert err is not None and err.code == "bad_message"
    assert "o\n" not in chief.output() and "\x1b" not in chief.output()


def joined_raw(chief, name: str) -> tuple[Raw, Welcome]:
    r = Raw(chief.address, chief.token)
    welcome = hello_auth(r, name, os.urandom(16))
    assert isinstance(welcome, Welcome), welcome
    return r, welcome


def test_stale_updates_are_answered_once_per_round(live):
    chief, honest = live
    r, welcome = joined_raw(chief, "stale-sender")
    specs = welcome.tensors
    zeros = [np.zeros(s.shape, np.float32) for s in specs]
    for _ in range(4):  # round 0 is long closed: each is stale
        r.send(Update(1, 1, specs_of(zeros), {}), zeros)
    first = r.until(Global)
    assert isinstance(first, Global)
    assert isinstance(r.until(EndOfMessage), EndOfMessage)
    r.sock.settimeout(0.3)  # rounds close every ~0.5 s: at most one more Global per round follows
    globals_ = 0
    t0 = time.monotonic()
    try:
        while True:
            ev = r.next()
            if isinstance(ev, Global):
                globals_ += 1
    except (TimeoutError, OSError):
        pass
    assert globals_ <= max(1, int((time.monotonic() - t0) / 0.5) + 1)
    still_training(honest)


def test_an_encoded_update_is_refused_when_the_chief_asked_for_no_compression(live):
    chief, honest = live
    r, welcome = joined_raw(chief, "encoder")
    specs = tuple(TensorSpec(s.name, s.dtype, s.shape, enc=Encoding("topk", k=0)) for s in welcome.tensors)
    r.send(Update(1, 1, specs, {}))
    err = r.error()
    assert err is not None and err.code == "bad_message" and "did not ask for compression" in err.message
    r2, welcome = joined_raw(chief, "boaster")
    zeros = [np.zeros(s.shape, np.float32) for s in welcome.tensors]
    r2.send(Update(welcome.round + 1, 2**63 - 1, specs_of(zeros), {}), zeros)
    err = r2.error()
    assert err is not None and err.code == "limit_exceeded" and "--max-examples" in err.message
    still_training(honest)


def test_sigterm_stops_the_chief_within_seconds_with_stuck_peers(tmp_path):
    chief = start_chief(tmp_path, "--rounds", "1000000", "--min-workers", "1")
    host, port = chief.address.rsplit(":", 1)
    idle = socket.create_connection((host, int(port)), timeout=BOUND)  # never starts TLS
    stuck = Raw(chief.address, chief.token)  # joins, proposes a large model, then stops reading
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert isinstance(hello_auth(stuck, "stuck", os.urandom(16)), Welcome)
    big = [np.zeros((4, 1 << 20), np.float32)]
    stuck.send(Update(0, 1, specs_of(big), {}), big)  # the chief answers with a 16 MiB Global nobody reads
    time.sleep(1.0)
    t0 = time.monotonic()
    chief.proc.send_signal(signal.SIGTERM)
    chief.wait(BOUND)
    assert time.monotonic() - t0 < 5.0, chief.output()[-2000:]
    idle.close()


_ = SHAPES  # the honest worker's model (bring your own model)
