"""The chief's timing travels in the Plan, and fedsock's worker honours the chief's heartbeat interval."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fedsock.errors import RemoteProtocolError
from fedsock.protocol import Plan
from tests.conftest import ROOT, env

TIMED = Plan(rounds=3, sync_every=5, batch_size=8, heartbeat_interval=2.0, idle_timeout=5.0, round_timeout=30.0,
             min_workers=2)


def test_timing_round_trips_and_is_absent_by_default():
    assert Plan.from_wire(TIMED.to_wire()) == TIMED
    wire = TIMED.to_wire()
    assert wire["heartbeat_interval"] == 2.0 and isinstance(wire["idle_timeout"], float)
    assert wire["min_workers"] == 2
    plain = Plan(3, 5, 8)
    assert set(plain.to_wire()) == {"rounds", "sync_every", "batch_size"}  # as a chief that predates them
    assert Plan.from_wire(plain.to_wire()).heartbeat_interval is None


def test_an_int_is_accepted_for_seconds():
    assert Plan.from_wire({**Plan(3, 5, 8).to_wire(), "idle_timeout": 5}).idle_timeout == 5.0


@pytest.mark.parametrize("key,value", [("heartbeat_interval", 0.0), ("idle_timeout", -1.0),
                                       ("round_timeout", float("inf")), ("heartbeat_interval", float("nan")),
                                       ("idle_timeout", True), ("min_workers", 0), ("min_workers", 2.0),
                                       ("round_timeout", "30")])
def test_out_of_range_timing_is_bad_message(key, value):
    with pytest.raises(RemoteProtocolError) as info:
        Plan.from_wire({**Plan(3, 5, 8).to_wire(), key: value})
    assert info.value.code == "bad_message"


def test_unknown_plan_keys_are_ignored():
    assert Plan.from_wire({**TIMED.to_wire(), "future_setting": [1, 2]}) == TIMED


@pytest.mark.integration
def test_worker_with_a_slow_heartbeat_follows_the_chiefs_interval(chiefs, tmp_path):
    """The chief drops a worker silent for 5 s; the worker's own interval is 10 s, the chief's 1 s.
    Waiting for a round that cannot close (one worker, --min-workers 2), the worker must stay."""
    chief = chiefs("--rounds", "5", "--min-workers", "2", "--round-timeout", "1", "--idle-timeout", "5",
                   "--heartbeat-interval", "1", "--progress", "plain")
    log = tmp_path / "slow.log"
    e = env()
    e["FEDSOCK_TOKEN"] = chief.token
    worker = subprocess.Popen([sys.executable, str(ROOT / "fedsock/testing/numpy_worker.py"), "--chief",
                               chief.address, "--name", "slow", "--heartbeat-interval", "10"],
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=e)
    try:
        deadline = time.monotonic() + 30
        while "late update\n" not in chief.output() and "(slow) joined" not in chief.output():
            assert time.monotonic() < deadline, chief.output()[-2000:]
            time.sleep(0.2)
        time.sleep(11)  # well past the chief's idle timeout (a 3 s one was missed once under a loaded suite)
        out = chief.output()
        assert "silent for too long" not in out and "(slow) disconnected" not in out, out[-2000:]
        assert worker.poll() is None, log.read_text()
    finally:
        worker.kill()
        worker.wait()
