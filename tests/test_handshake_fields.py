"""Hello.instance, Auth.resume, Welcome.reconnect_secret, worker names and the pre-Auth frame cap."""

from __future__ import annotations

import pytest

from fedsock import limits, tls
from fedsock.errors import ConfigError, ErrorCode, LocalProtocolError, RemoteProtocolError
from fedsock.protocol import (
    NEED_DATA,
    Auth,
    Challenge,
    Connection,
    Error,
    Hello,
    Kind,
    Plan,
    Role,
    Welcome,
    check_name,
    frames,
    make_error,
    reconnect_proof,
    verify_reconnect_proof,
)

INSTANCE = bytes(range(16))
SECRET = bytes(range(32))
NONCE = bytes(range(32, 64))


def frame(kind: Kind, body: dict) -> bytes:
    packed = frames.pack_body(body)
    return frames.encode_header(kind, len(packed)) + packed


def receive(conn: Connection, data: bytes):
    conn.receive_data(data)
    return conn.next_event()


def hello_body(**changes) -> dict:
    return {**Hello(name="w1", instance=INSTANCE).to_body(), **changes}


def test_hello_carries_the_instance_id():
    hello = Hello(name="w1", instance=INSTANCE)
    assert receive(Connection(Role.CHIEF), Connection(Role.WORKER).send(hello)) == hello


@pytest.mark.parametrize("instance", [None, b"", bytes(15), bytes(17), "x" * 16])
def test_hello_without_a_16_byte_instance_is_refused(instance):
    body = hello_body(instance=instance)
    if instance is None:
        del body["instance"]
    with pytest.raises(RemoteProtocolError, match="instance") as ei:
        receive(Connection(Role.CHIEF), frame(Kind.HELLO, body))
    assert ei.value.code is ErrorCode.BAD_MESSAGE


def test_a_hello_without_instance_cannot_be_sent():
    with pytest.raises(LocalProtocolError, match="instance"):
        Connection(Role.WORKER).send(Hello(name="w1"))


@pytest.mark.parametrize("name", ["", "-lead", "a b", "w\n", "w\x1b[31m", "näme", "x" * 64 + "\n"])
def test_names_outside_the_charset_are_refused(name):
    with pytest.raises(RemoteProtocolError) as ei:
        check_name(name)
    assert ei.value.code is ErrorCode.BAD_MESSAGE
    with pytest.raises(RemoteProtocolError):
        receive(Connection(Role.CHIEF), frame(Kind.HELLO, hello_body(name=name)))
    with pytest.raises(ConfigError):
        tls.check_name(name)  # the same rule for --name and tokens


@pytest.mark.parametrize("name", ["w", "worker-1", "a.b@c_d-e", "9" * limits.MAX_NAME_BYTES])
def test_names_in_the_charset_pass_everywhere(name):
    assert check_name(name) == tls.check_name(name) == name


def test_a_name_over_the_limit_is_limit_exceeded_before_the_charset_check():
    with pytest.raises(RemoteProtocolError) as ei:
        receive(Connection(Role.CHIEF), frame(Kind.HELLO, hello_body(name="é" * 40)))
    assert ei.value.code is ErrorCode.LIMIT_EXCEEDED


def handshake_to_auth() -> tuple[Connection, Connection]:
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    receive(chief, worker.send(Hello(name="w1", instance=INSTANCE)))
    receive(worker, chief.send(Challenge(NONCE)))
    return worker, chief


def test_auth_resume_round_trips_and_is_optional():
    proof = reconnect_proof(SECRET, NONCE, "w1")
    worker, chief = handshake_to_auth()
    assert receive(chief, worker.send(Auth(b"m" * 32, resume=proof))) == Auth(b"m" * 32, proof)
    worker, chief = handshake_to_auth()
    assert receive(chief, worker.send(Auth(b"m" * 32))).resume is None
    assert "resume" not in Auth(b"m" * 32).to_body()


@pytest.mark.parametrize("field,value", [("mac", bytes(31)), ("mac", bytes(33)), ("resume", bytes(31))])
def test_an_auth_mac_or_proof_of_the_wrong_length_is_auth_failed(field, value):
    worker, chief = handshake_to_auth()
    body = {"mac": bytes(32), field: value}
    with pytest.raises(RemoteProtocolError) as ei:
        receive(chief, frame(Kind.AUTH, body))
    assert ei.value.code is ErrorCode.AUTH_FAILED


def test_reconnect_proof_binds_secret_nonce_and_name():
    proof = reconnect_proof(SECRET, NONCE, "w1")
    assert len(proof) == limits.MAC_BYTES
    assert verify_reconnect_proof(SECRET, NONCE, "w1", proof)
    assert not verify_reconnect_proof(SECRET, NONCE, "w2", proof)
    assert not verify_reconnect_proof(SECRET, bytes(32), "w1", proof)
    assert not verify_reconnect_proof(bytes(32), NONCE, "w1", proof)
    assert not verify_reconnect_proof(SECRET, NONCE, "w1", proof[:-1])


def test_reconnect_proof_matches_its_documented_hmac_input():
    import hashlib
    import hmac

    want = hmac.new(SECRET, b"fedsock-resume-v1\x00" + NONCE + b"w1", hashlib.sha256).digest()
    assert reconnect_proof(SECRET, NONCE, "w1") == want


def test_welcome_requires_a_32_byte_reconnect_secret():
    welcome = Welcome(1, 0, Plan(1, 1, 1), reconnect_secret=SECRET)
    assert Welcome.from_body(welcome.to_body()) == welcome
    for bad in (b"", bytes(31)):
        with pytest.raises(RemoteProtocolError, match="reconnect_secret"):
            Welcome.from_body({**welcome.to_body(), "reconnect_secret": bad})
    body = welcome.to_body()
    del body["reconnect_secret"]
    with pytest.raises(RemoteProtocolError, match="reconnect_secret"):
        Welcome.from_body(body)


def test_frames_before_auth_are_capped_on_the_chief():
    chief = Connection(Role.CHIEF)
    chief.receive_data(frames.encode_header(Kind.HELLO, limits.MAX_PREAUTH_FRAME_BYTES + 1))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 4096") as ei:
        chief.next_event()  # decided on the header: no body byte was needed
    assert ei.value.code is ErrorCode.FRAME_TOO_LARGE
    # the Auth frame too
    worker, chief = handshake_to_auth()
    with pytest.raises(RemoteProtocolError) as ei:
        receive(chief, frames.encode_header(Kind.AUTH, limits.MAX_PREAUTH_FRAME_BYTES + 1))
    assert ei.value.code is ErrorCode.FRAME_TOO_LARGE


def test_after_auth_the_chief_and_always_the_worker_accept_full_frames():
    worker, chief = handshake_to_auth()
    receive(chief, worker.send(Auth(b"m" * 32)))
    chief.send(Welcome(1, 0, Plan(1, 1, 1), reconnect_secret=SECRET))
    assert chief.max_frame_now == limits.MAX_FRAME_BYTES
    chief.receive_data(frames.encode_header(Kind.HEARTBEAT, limits.MAX_PREAUTH_FRAME_BYTES + 1))
    assert chief.next_event() is NEED_DATA
    # the worker reads a large Welcome before the chief has Auth-ed anything of its own
    assert Connection(Role.WORKER).max_frame_now == limits.MAX_FRAME_BYTES


def test_error_code_is_a_str_enum_with_name_in_use():
    assert ErrorCode.NAME_IN_USE == "name_in_use" and isinstance(ErrorCode.NAME_IN_USE, str)
    exc = RemoteProtocolError("x", code="out_of_order")
    assert exc.code is ErrorCode.OUT_OF_ORDER
    err = make_error(exc)
    assert err == Error("out_of_order", "x") and type(err.code) is str
    with pytest.raises(ValueError):
        RemoteProtocolError("x", code="no_such_code")


@pytest.mark.parametrize("text,ok", [("topk:0.01", True), ("topk:.5", True), ("topk:1e-05", True), ("topk:1", True),
                                     ("topk:0.0_1", False), ("topk:inf", False), ("topk:nan", False),
                                     ("topk:+0.5", False), ("topk: 0.5", False), ("topk:2", False)])
def test_welcome_compress_topk_takes_a_plain_decimal(text, ok):
    body = {**Welcome(1, 0, Plan(1, 1, 1), reconnect_secret=SECRET).to_body(), "compress": text}
    if ok:
        assert Welcome.from_body(body).compress == text
    else:
        with pytest.raises(RemoteProtocolError, match="compression"):
            Welcome.from_body(body)
