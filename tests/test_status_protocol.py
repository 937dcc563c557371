"""The Status message and the status branch of the state table (sans-I/O)."""

from __future__ import annotations

import pytest

from fedsock import limits
from fedsock.errors import LocalProtocolError, RemoteProtocolError
from fedsock.protocol import (
    STATUS_CAPABILITY,
    Auth,
    Challenge,
    Connection,
    Kind,
    Phase,
    Plan,
    Role,
    Status,
    Welcome,
    WorkerStatus,
    frames,
)
from tests.test_protocol import pump

STATUS = Status(
    round=2, rounds=5, finished=False, submitted=1, waiting=2, uptime=12.5, upstream=None,
    metrics={"accuracy": 0.75, "seconds": 1.5},
    workers=(WorkerStatus("w1", 1, True, 0.25, 2, 1000, 2000), WorkerStatus("w2", 2, False, 30.0, 1, 10, 20)),
)


def handshake(capabilities: tuple[str, ...]) -> tuple[Connection, Connection]:
    from fedsock.protocol import Hello

    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    pump(worker.send(Hello(name="q", capabilities=capabilities, instance=bytes(16))), chief)
    pump(chief.send(Challenge(b"n" * 32)), worker)
    pump(worker.send(Auth(b"m" * 32)), chief)
    return worker, chief


def test_status_query_gets_status_and_the_chief_side_ends():
    worker, chief = handshake((STATUS_CAPABILITY, "future-thing"))
    assert chief.phase is Phase.STATUS and worker.phase is Phase.STATUS
    events = pump(chief.send(STATUS), worker)
    assert events == [STATUS]
    assert chief.phase is Phase.CLOSED and worker.phase is Phase.CLOSED
    assert chief.we_finished and worker.they_finished
    with pytest.raises(LocalProtocolError):
        chief.send(Status(0, 1, False, 0, 0, 0.0))


def test_status_query_never_gets_welcome():
    worker, chief = handshake((STATUS_CAPABILITY,))
    with pytest.raises(LocalProtocolError):
        chief.send(Welcome(1, 0, Plan(1, 1, 1), reconnect_secret=bytes(32)))
    # and a chief that sends one anyway is refused by the querying side
    rogue = Connection(Role.CHIEF, phase=Phase.WELCOME)
    frame = rogue.send(Welcome(1, 0, Plan(1, 1, 1), reconnect_secret=bytes(32)))
    with pytest.raises(RemoteProtocolError) as exc:
        pump(frame, worker)
    assert exc.value.code == "out_of_order"


def test_status_only_for_a_status_query():
    worker, chief = handshake(())
    assert chief.phase is Phase.WELCOME
    with pytest.raises(LocalProtocolError):
        chief.send(STATUS)


def body_frame(body: dict) -> bytes:
    packed = frames.pack_body(body)
    return frames.encode_header(Kind.STATUS, len(packed)) + packed


@pytest.mark.parametrize("change, code", [
    ({"round": -1}, "bad_message"),
    ({"finished": 1}, "bad_message"),
    ({"uptime": float("nan")}, "bad_message"),
    ({"uptime": True}, "bad_message"),
    ({"metrics": {"a": "x"}}, "bad_message"),
    ({"upstream": 5}, "bad_message"),
    ({"workers": [{"name": "w"}]}, "bad_message"),
    ({"workers": [dict(STATUS.workers[0].to_wire(), rounds=False)]}, "bad_message"),
    ({"workers": [dict(STATUS.workers[0].to_wire(), name="x" * (limits.MAX_NAME_BYTES + 1))]}, "limit_exceeded"),
    ({"workers": [STATUS.workers[0].to_wire()] * (limits.MAX_STATUS_WORKERS + 1)}, "limit_exceeded"),
])
def test_bad_status_bodies_are_the_peers_fault(change, code):
    worker, _ = handshake((STATUS_CAPABILITY,))
    with pytest.raises(RemoteProtocolError) as exc:
        pump(body_frame({**STATUS.to_body(), **change}), worker)
    assert exc.value.code == code


def test_missing_status_field():
    worker, _ = handshake((STATUS_CAPABILITY,))
    body = STATUS.to_body()
    del body["waiting"]
    with pytest.raises(RemoteProtocolError, match="missing field 'waiting'"):
        pump(body_frame(body), worker)
