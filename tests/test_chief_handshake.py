"""The chief's handshake to a value (Admitted / Refused / StatusQuery), over in-memory Connections."""

from __future__ import annotations

import asyncio
import os

from fedsock import tls
from fedsock.chief.handshake import Admitted, Authenticator, Refused, StatusQuery, handshake
from fedsock.protocol import NEED_DATA, Auth, Challenge, Connection, Hello, Role, reconnect_proof
from fedsock.protocol.status import STATUS_CAPABILITY

TOKEN = tls.JoinToken(b"f" * 32, b"s" * 32)


class Pipe:
    """What the handshake uses of a Session, with a scripted worker on the other end."""

    def __init__(self, hello: Hello, auth) -> None:  # type: ignore[no-untyped-def]
        self.conn, self.worker = Connection(Role.CHIEF), Connection(Role.WORKER)
        self.sock = None
        self.name, self.label = "?", "peer"
        self.conn.receive_data(self.worker.send(hello))
        self.auth = auth  # nonce -> Auth

    async def next_event(self, timeout: float):  # type: ignore[no-untyped-def]
        ev = self.conn.next_event()
        assert ev is not NEED_DATA, "the handshake waited for a message the worker never sends"
        return ev

    async def send(self, msg, arrays=(), release=None, *, timeout):  # type: ignore[no-untyped-def]
        self.worker.receive_data(self.conn.send(msg))
        got = self.worker.next_event()
        if isinstance(got, Challenge):
            self.conn.receive_data(self.worker.send(self.auth(got.nonce)))
        return 0


def run(hello: Hello, auth, secrets_held: dict[str, bytes] | None = None,  # type: ignore[no-untyped-def]
        tmp_path=None):
    authn = Authenticator(TOKEN, None, tmp_path, worker_tokens_only=False)
    return asyncio.run(handshake(Pipe(hello, auth), authn, (secrets_held or {}).get, 1.0))  # type: ignore[arg-type]


def mac(name: str):  # type: ignore[no-untyped-def]
    return lambda nonce: Auth(tls.auth_mac(TOKEN.secret, nonce, TOKEN.fingerprint, name))


def test_a_worker_with_the_token_is_admitted_with_its_instance(tmp_path):
    inst = os.urandom(16)
    out = run(Hello(name="alice", instance=inst), mac("alice"), tmp_path=tmp_path)
    assert out == Admitted("alice", inst, proven=False)


def test_a_wrong_mac_is_an_authentication_failure(tmp_path):
    out = run(Hello(name="alice", instance=os.urandom(16)), lambda nonce: Auth(bytes(32)), tmp_path=tmp_path)
    assert isinstance(out, Refused) and out.code == "auth_failed" and out.why == "wrong join token"


def test_the_reconnect_proof_is_checked_against_the_secret_held_for_the_name(tmp_path):
    secret = os.urandom(32)

    def resume(key: bytes):  # type: ignore[no-untyped-def]
        return lambda nonce: Auth(tls.auth_mac(TOKEN.secret, nonce, TOKEN.fingerprint, "bob"),
                                  resume=reconnect_proof(key, nonce, "bob"))

    hello = Hello(name="bob", instance=os.urandom(16))
    assert run(hello, resume(secret), {"bob": secret}, tmp_path).proven  # type: ignore[union-attr]
    assert not run(hello, resume(os.urandom(32)), {"bob": secret}, tmp_path).proven  # type: ignore[union-attr]
    assert not run(hello, resume(secret), {}, tmp_path).proven  # type: ignore[union-attr]  # nothing held


def test_a_status_query_is_answered_not_admitted(tmp_path):
    hello = Hello(name="ops", instance=os.urandom(16), capabilities=(STATUS_CAPABILITY,))
    assert run(hello, mac("ops"), tmp_path=tmp_path) == StatusQuery("ops")


def test_a_peer_that_gives_up_is_refused_without_a_code(tmp_path):
    from fedsock.protocol import Error

    out = run(Hello(name="quitter", instance=os.urandom(16)), lambda nonce: Error("shutdown", "bye"),
              tmp_path=tmp_path)
    assert out == Refused(None, "bye")
