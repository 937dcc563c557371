"""The blocking channel and the worker's handshake over a socketpair (no TLS): deadlines on writes
and waits, heartbeats while waiting, the weights reader placing a message into the caller's
buffer, and each refusal of the chief turned into the error a user can act on."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from fedsock.errors import AuthenticationError, PeerError, RemoteProtocolError
from fedsock.protocol import (
    NEED_DATA,
    STATUS_CAPABILITY,
    Challenge,
    Connection,
    Error,
    Global,
    Heartbeat,
    Phase,
    Plan,
    Role,
    Update,
    Welcome,
    iter_chunks,
    reconnect_proof,
    specs_of,
)
from fedsock.transport import tls
from fedsock.transport.channel import BlockingChannel
from fedsock.transport.credentials import Credentials
from fedsock.transport.errors import ConnectionLost, NameInUse
from fedsock.transport.handshake import handshake


def established_pair(**kw: float) -> tuple[BlockingChannel, Connection, socket.socket]:
    ours, theirs = socket.socketpair()
    channel = BlockingChannel(ours, **kw)
    channel.conn.phase = Phase.ESTABLISHED
    chief = Connection(Role.CHIEF)
    chief.phase = Phase.ESTABLISHED
    return channel, chief, theirs


def test_a_write_the_peer_does_not_take_misses_its_deadline():
    channel, _, theirs = established_pair(send_timeout=0.5)
    big = [np.zeros(8 * 1024 * 1024, np.uint8)]  # far more than the socket buffers hold
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="more than 0.5 s"):
        channel.send(Update(1, 1, specs_of(big)), big)
    assert 0.4 < time.monotonic() - t0 < 3
    theirs.close()


def test_a_silent_peer_is_lost_after_the_idle_timeout_with_heartbeats_meanwhile():
    channel, chief, theirs = established_pair(idle_timeout=0.6, heartbeat_interval=0.2)
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost, match="silent for 0.6 s"):
        channel.next_event()
    assert time.monotonic() - t0 >= 0.6
    theirs.setblocking(False)
    chief.receive_data(theirs.recv(65536))
    beats = []
    while (ev := chief.next_event()) is not NEED_DATA:
        beats.append(ev)
    assert len(beats) >= 2 and all(isinstance(b, Heartbeat) for b in beats)


def test_weights_are_read_into_the_callers_buffer():
    channel, chief, theirs = established_pair()
    model = [np.arange(300_000, dtype=np.float32), np.ones((7, 3), np.int64)]
    specs = specs_of(model)

    def serve() -> None:
        theirs.sendall(chief.send(Global(3, specs)))
        for chunk in iter_chunks(model, chunk_bytes=64 * 1024):
            for part in chief.send_parts(chunk):
                theirs.sendall(part)

    t = threading.Thread(target=serve)
    t.start()
    ev = channel.next_event()
    assert isinstance(ev, Global) and ev.round == 3
    buf = np.empty(sum(s.wire_nbytes for s in specs) + 10, np.uint8)
    got = channel.read_weights(ev.tensors, buf)
    t.join()
    for a, b in zip(got, model):
        np.testing.assert_array_equal(a, b)
        assert a.base is buf


def test_a_bad_frame_is_answered_with_an_error_and_raised():
    channel, chief, theirs = established_pair()
    theirs.sendall(b"XXXXXXXXXXXXXXXX")
    with pytest.raises(RemoteProtocolError) as exc:
        channel.next_event()
    theirs.setblocking(False)
    chief.receive_data(theirs.recv(65536))
    answer = chief.next_event()
    assert isinstance(answer, Error) and answer.code == exc.value.code


def test_a_cut_inside_a_message_is_a_lost_connection():
    channel, chief, theirs = established_pair()
    model = [np.zeros(1000, np.float32)]
    theirs.sendall(chief.send(Global(1, specs_of(model))))
    first = next(iter_chunks(model))
    frame = b"".join(bytes(p) for p in chief.send_parts(first))
    theirs.sendall(frame[: len(frame) // 2])
    theirs.close()
    ev = channel.next_event()
    with pytest.raises(ConnectionLost):
        channel.read_weights(ev.tensors, np.empty(4000, np.uint8))


def _chief_answers(theirs: socket.socket, answer) -> dict:  # type: ignore[no-untyped-def]
    """Play the chief's side of the handshake on ``theirs`` in a thread; record what arrived."""
    seen: dict = {}

    def run() -> None:
        conn = Connection(Role.CHIEF)

        def nxt():  # type: ignore[no-untyped-def]
            while (ev := conn.next_event()) is NEED_DATA:
                conn.receive_data(theirs.recv(65536))
            return ev

        seen["hello"] = nxt()
        theirs.sendall(conn.send(Challenge(b"n" * 32)))
        seen["auth"] = nxt()
        theirs.sendall(answer if isinstance(answer, bytes) else conn.send(answer))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    seen["thread"] = t
    return seen


TOKEN = tls.JoinToken(b"f" * 32, b"s" * 32)


@pytest.mark.parametrize(("answer", "raised", "text"), [
    (Error(code="auth_failed", message="bad mac"), AuthenticationError, "rejected the join token"),
    (Error(code="busy", message="full"), ConnectionLost, "hung up: full"),
    (Error(code="name_in_use", message="pick another --name"), NameInUse, "pick another --name"),
    (Error(code="limit_exceeded", message="no"), PeerError, "no"),
])
def test_the_handshake_turns_each_refusal_into_what_the_user_can_act_on(answer, raised, text):
    ours, theirs = socket.socketpair()
    seen = _chief_answers(theirs, answer)
    with pytest.raises(raised, match=text):
        handshake(BlockingChannel(ours), "w1", Credentials(TOKEN), b"i" * 16, reconnect_secret=b"r" * 32)
    seen["thread"].join(5)
    assert seen["hello"].instance == b"i" * 16 and seen["hello"].name == "w1"
    assert seen["auth"].mac == tls.auth_mac(TOKEN.secret, b"n" * 32, TOKEN.fingerprint, "w1")
    assert seen["auth"].resume == reconnect_proof(b"r" * 32, b"n" * 32, "w1")


def test_a_status_query_says_when_the_chief_does_not_answer_status():
    ours, theirs = socket.socketpair()
    welcome = Welcome(1, 0, Plan(rounds=1, sync_every=1, batch_size=1), reconnect_secret=b"r" * 32)
    unaware = Connection(Role.CHIEF)  # a chief that ignores the status capability answers with Welcome
    unaware.phase = Phase.WELCOME
    seen = _chief_answers(theirs, unaware.send(welcome))
    with pytest.raises(RemoteProtocolError, match="does this chief answer status queries"):
        handshake(BlockingChannel(ours), "q", Credentials(TOKEN), b"i" * 16, status=True)
    seen["thread"].join(5)
    assert STATUS_CAPABILITY in seen["hello"].capabilities and seen["auth"].resume is None
