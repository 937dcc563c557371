"""Bad input gets a clear error and costs the chief nothing (real sockets, real chief)."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import numpy as np
import pytest

import fedsock
from fedsock import limits, tls
from fedsock.errors import AuthenticationError, ConnectError, PeerError
from fedsock.protocol import NEED_DATA, Connection, Error, Kind, Role, frames
from tests.conftest import finish, start_worker

pytestmark = pytest.mark.integration

SHAPES = [(8, 4), (4,)]


class Honest(threading.Thread):
    """A well-behaved numpy worker syncing in a loop while others misbehave."""

    def __init__(self, address: str, token: str, name: str = "honest") -> None:
        super().__init__(daemon=True)
        self.client = fedsock.Client(address, token=token, name=name)
        self.rounds: list[int] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        #: Stop once the model of this round is in. Workers that must stop together (a chief
        #: needing all of them for a round) stop at one round: with ``stop``, one of them could
        #: start a round that the other, stopping first, never completes.
        self.stop_after: int | None = None

    def run(self) -> None:
        try:
            w = self.client.join([np.zeros(s, np.float32) for s in SHAPES])
            while not self.stop.is_set() and (self.stop_after is None or self.client.round < self.stop_after):
                w = self.client.sync([x + 1 for x in w], num_examples=10)
                self.rounds.append(self.client.round)
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def progresses(self, timeout: float = 20.0) -> bool:
        start = len(self.rounds)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.rounds) >= start + 3:
                return True
            time.sleep(0.05)
        return False


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A bring-your-own-model chief (no TensorFlow) with one honest worker training."""
    from tests.conftest import start_chief

    tmp = tmp_path_factory.mktemp("live")
    chief = start_chief(tmp, "--rounds", "1000000", "--min-workers", "1", "--round-timeout", "0.5")
    honest = Honest(chief.address, chief.token)
    honest.start()
    assert honest.progresses(), chief.output()
    yield chief, honest
    honest.stop.set()
    honest.join(30)
    assert not honest.is_alive() and honest.error is None, honest.error
    honest.client.close()
    chief.proc.kill()
    chief.proc.wait()


def tls_socket(address: str, token: str) -> ssl.SSLSocket:
    host, port = address.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    s = tls.client_context().wrap_socket(raw)
    tls.check_pinned(s, tls.JoinToken.parse(token).fingerprint)
    return s


def read_until_closed(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


def errors_in(data: bytes) -> list[Error]:
    conn = Connection(Role.WORKER)
    conn.receive_data(data)
    out = []
    while (ev := conn.next_event()) is not NEED_DATA:
        if isinstance(ev, Error):
            out.append(ev)
    return out


def test_wrong_token_is_refused_and_chief_serves_on(live):
    chief, honest = live
    good = tls.JoinToken.parse(chief.token)
    wrong_secret = tls.JoinToken(good.fingerprint, b"\x01" * 32)
    with pytest.raises(AuthenticationError, match="authentication failed"):
        fedsock.Client(chief.address, token=wrong_secret, name="intruder")
    wrong_cert = tls.JoinToken(b"\x02" * 32, good.secret)
    with pytest.raises(AuthenticationError, match="certificate"):
        fedsock.Client(chief.address, token=wrong_cert)
    assert "authentication failed for 'intruder'" in chief.output()
    assert honest.progresses()


@pytest.mark.parametrize("payload", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 4])
def test_plaintext_and_garbage_are_dropped(live, payload):
    chief, honest = live
    host, port = chief.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(payload)
        t0 = time.monotonic()
        read_until_closed(s)
        assert time.monotonic() - t0 < 10
    assert honest.progresses()


def test_oversized_frame_closed_before_body(live):
    chief, honest = live
    with tls_socket(chief.address, chief.token) as s:
        s.sendall(frames.encode_header(Kind.HELLO, limits.MAX_FRAME_BYTES + 1))  # and no body
        errs = errors_in(read_until_closed(s))
    assert [e.code for e in errs] == ["frame_too_large"]
    assert honest.progresses()


def test_out_of_order_message_gets_error(live):
    chief, honest = live
    body = frames.pack_body({})
    with tls_socket(chief.address, chief.token) as s:
        s.sendall(frames.encode_header(Kind.HEARTBEAT, len(body)) + body)  # before Hello
        errs = errors_in(read_until_closed(s))
    assert [e.code for e in errs] == ["out_of_order"]
    assert honest.progresses()


def test_mismatched_signature_is_rejected_by_name(live):
    chief, honest = live
    with fedsock.Client(chief.address, token=chief.token, name="misfit") as c:
        w = c.join()
        bad = [w[0][:, :3].copy(), w[1]]
        with pytest.raises(PeerError) as ei:
            c.sync(bad, num_examples=5)
    assert ei.value.code == "signature_mismatch"
    assert "tensor 0" in str(ei.value) and "[8, 4]" in str(ei.value) and "[8, 3]" in str(ei.value)
    assert honest.progresses()


def test_join_with_a_different_local_model_fails_clearly(live):
    chief, _ = live
    with fedsock.Client(chief.address, token=chief.token) as c:
        with pytest.raises(fedsock.ConfigError, match="does not match"):
            c.join([np.zeros((8, 5), np.float32), np.zeros(4, np.float32)])


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_or_inf_update_is_rejected(live, bad_value):
    chief, honest = live
    with fedsock.Client(chief.address, token=chief.token, name=f"poison-{bad_value}") as c:
        w = c.join()
        poisoned = [w[0].copy(), w[1].copy()]
        poisoned[1][2] = bad_value
        with pytest.raises(PeerError) as ei:
            c.sync(poisoned, num_examples=5)
    assert ei.value.code == "invalid_weights"
    # the honest worker's weights never saw the poison
    assert honest.progresses()
    assert all(np.isfinite(x).all() for x in honest.client.weights)


def test_worker_cli_wrong_and_missing_token(tmp_path, live, digits):
    chief, honest = live
    good = tls.JoinToken.parse(chief.token)
    bad = str(tls.JoinToken(good.fingerprint, b"\x03" * 32))
    code, out = finish(start_worker(tmp_path, "x", "--chief", chief.address, "--data",
                                    str(digits / "worker-0"), "--token", bad), timeout=60)
    assert code != 0 and "authentication failed" in out, out
    code, out = finish(start_worker(tmp_path, "x", "--chief", chief.address, "--data",
                                    str(digits / "worker-0")), timeout=60)
    assert code != 0 and "no join token" in out, out
    assert honest.progresses()


def test_worker_cli_unreachable_chief_gives_up(tmp_path, digits):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code, out = finish(start_worker(tmp_path, "x", "--chief", f"127.0.0.1:{port}", "--data",
                                    str(digits / "worker-0"), "--token", "fs1." + "00" * 32 + "." + "11" * 32,
                                    "--connect-timeout", "3"), timeout=60)
    assert code != 0 and "could not reach the chief" in out, out
    assert time.monotonic() - t0 < 30
    assert "retrying" in out  # it did retry before giving up


def test_client_unreachable_raises_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError, match="within 1 s"):
        fedsock.Client(f"127.0.0.1:{port}", token="fs1." + "00" * 32 + "." + "11" * 32, connect_timeout=1)


def test_worker_whose_data_does_not_fit_the_model(tmp_path, chiefs):
    from fedsock.data import save_shard

    chief = chiefs("--model", "fedsock.models:digits_mlp", "--rounds", "1", "--min-workers", "1")
    save_shard(tmp_path / "wide", np.zeros((20, 32), np.float32), np.zeros(20, np.int64))
    save_shard(tmp_path / "labels", np.zeros((20, 64), np.float32), np.arange(20, dtype=np.int64))
    # --val-split 0: the checks see every example of the file (a split would hold some out)
    p1 = start_worker(tmp_path, "a", "--chief", chief.address, "--data", str(tmp_path / "wide"),
                      "--val-split", "0", token=chief.token)
    p2 = start_worker(tmp_path, "b", "--chief", chief.address, "--data", str(tmp_path / "labels"),
                      "--val-split", "0", token=chief.token)
    code, out = finish(p1)
    assert code != 0 and "expects inputs of shape ('N', 64)" in out and "(20, 32)" in out, out
    code, out = finish(p2)
    assert code != 0 and "10 output classes" in out and "0..19" in out, out
    chief.proc.kill()
    assert "cannot train" in chief.output()
