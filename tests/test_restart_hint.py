"""A stopping chief tells each worker when to come back (Error ``retry_after_ms``); workers wait that long.

Also what the chief's admission counts and logs about refused connections, with bounded memory.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from fedsock import limits
from fedsock.chief import listener as listener_module
from fedsock.chief.admission import PreAuthCounts, Refusals, reconnect_hints
from fedsock.chief.listener import Listener
from fedsock.errors import RemoteProtocolError
from fedsock.protocol import Connection, Error, Phase, Role, frames
from fedsock.testing.chaos import free_port
from fedsock.worker.engine import Reconnect
from fedsock.worker.reconnect import hinted_wait
from tests.conftest import ROOT, env
from tests.test_worker_engine import engine, model_of, update


def _established(role: Role) -> Connection:
    return Connection(role, phase=Phase.ESTABLISHED)


def test_error_carries_retry_after_ms_and_omits_it_when_absent():
    chief, worker = _established(Role.CHIEF), _established(Role.WORKER)
    msg = Error(code="shutdown", message="the chief is stopping", retry_after_ms=2340)
    frame = chief.send(msg)
    assert frames.unpack_body(frame[frames.HEADER_BYTES:])["retry_after_ms"] == 2340
    worker.receive_data(frame)
    assert worker.next_event() == msg
    plain = _established(Role.CHIEF).send(Error(code="shutdown", message="bye"))
    assert "retry_after_ms" not in frames.unpack_body(plain[frames.HEADER_BYTES:])


@pytest.mark.parametrize("bad", [-1, 2**63, "5", 1.5, True, None])
def test_a_retry_after_ms_that_is_not_uint63_is_bad_message(bad):
    with pytest.raises(RemoteProtocolError) as err:
        Error.from_body({"code": "shutdown", "message": "m", "retry_after_ms": bad})
    assert err.value.code.value == "bad_message" and "retry_after_ms" in str(err.value)


def test_the_hints_spread_the_workers_evenly_in_random_order():
    hints = reconnect_hints(1000, random.Random(7))
    step = 1000 // limits.RESTART_RECONNECTS_PER_S
    assert sorted(hints) == [k * step for k in range(1000)]  # one slot each, none shared
    assert hints != sorted(hints)  # the order says nothing about who joined first
    assert max(hints) / 1000 < limits.MAX_WORKERS / limits.RESTART_RECONNECTS_PER_S <= limits.MAX_RETRY_AFTER_MS / 1000
    assert reconnect_hints(0, random.Random(1)) == []


def test_a_worker_waits_what_the_chief_asks_at_most_the_limit():
    assert hinted_wait(None) == 0.0
    assert hinted_wait(0) == 0.0
    assert hinted_wait(2500) == 2.5
    assert hinted_wait(10**15) == limits.MAX_RETRY_AFTER_MS / 1000


def test_the_engine_reconnects_after_the_hinted_wait():
    eng = engine()
    eng.start_plain(update(1), model_of(1))
    assert eng.receive(Error(code="shutdown", message="bye", retry_after_ms=1500)) == [
        Reconnect("the chief hung up: bye", announced=True, wait=1.5)]
    assert eng.receive(Error(code="busy", message="full", retry_after_ms=10**12)) == [
        Reconnect("the chief hung up: full", announced=False, wait=limits.MAX_RETRY_AFTER_MS / 1000)]


def test_refusals_are_counted_by_cap():
    pre = PreAuthCounts(limit=3, per_address=2)
    pre.enter("10.0.0.1")
    pre.enter("10.0.0.1")
    assert pre.over("10.0.0.1") == "per_address" and pre.over("10.0.0.2") is None
    pre.enter("10.0.0.2")
    assert pre.over("10.0.0.3") == "global"
    r = Refusals()
    for why in ("per_address", "per_address", "global", "failures", "tls_failed"):
        r.count(why)
    assert (r.per_address, r.global_cap, r.failures, r.tls_failed, r.before_tls) == (2, 1, 1, 1, 4)
    assert r.describe().startswith("4 connections refused before TLS (2 over the per-address cap")


def test_refusal_log_memory_follows_recent_refusals_not_every_address(monkeypatch, caplog):
    """Regression: the listener remembered when it last logged a refusal for every address it ever
    refused, forever (a flood from many addresses grew the chief's memory without bound)."""
    monkeypatch.setattr(limits, "MAX_TRACKED_ADDRESSES", 50)
    lst = Listener(None, 10.0, None, 10.0, None)  # type: ignore[arg-type]
    now = 1000.0
    for i in range(2000):
        now += 0.1  # 100 new addresses a second: after 10 s the oldest are stale
        lst._log_refusal(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "too many", everyone=False, now=now)
        assert len(lst._refusal_logged) <= 51
    # at the global cap, one line for all addresses
    caplog.clear()
    for i in range(100):
        lst._log_refusal(f"10.9.9.{i}", "too many connections still in the handshake", everyone=True, now=now)
    assert len([r for r in caplog.records if "refusing" in r.getMessage()]) <= 1
    assert listener_module.REFUSAL_LOG_S == 10.0


def _worker(address: str, token: str, name: str) -> subprocess.Popen[str]:
    e = env()
    e["FEDSOCK_TOKEN"] = token
    return subprocess.Popen([sys.executable, "-m", "fedsock.testing.numpy_worker", "--chief", address, "--name",
                             name, "--shape", "8", "--work", "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)


@pytest.mark.integration
def test_a_stopped_chief_spreads_the_reconnects_and_the_run_resumes(tmp_path):
    port, state = free_port(), tmp_path / "chief"
    cmd = [sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", str(port), "--state-dir",
           str(state), "--rounds", "6", "--min-workers", "3", "--round-timeout", "30"]
    log = open(tmp_path / "chief.log", "ab")
    chief = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env())
    metrics = state / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 60
        while not (state / "chief.addr").exists() or not (state / "token").exists():
            assert time.monotonic() < deadline and chief.poll() is None, (tmp_path / "chief.log").read_text()
            time.sleep(0.05)
        token = (state / "token").read_text().strip()
        workers = [_worker(f"127.0.0.1:{port}", token, f"w{i}") for i in range(3)]
        while not metrics.exists() or metrics.read_text().count("\n") < 2:
            assert time.monotonic() < deadline, (tmp_path / "chief.log").read_text()
            time.sleep(0.02)
        chief.send_signal(signal.SIGTERM)  # the worst moment: the round's model is being handed out
        assert chief.wait(30) == 130  # stopped on a signal, resumable
        (state / "chief.addr").unlink()
        chief = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env())
        outs = [w.communicate(timeout=90)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0, 0], outs
        assert chief.wait(60) == 0, (tmp_path / "chief.log").read_text()
    finally:
        for p in [chief, *locals().get("workers", [])]:
            if p.poll() is None:
                p.kill()
    # every worker was told, and the two with a slot after the first waited for theirs
    assert all("the chief is stopping; reconnect in" in o for o in outs), outs
    waits = sorted(float(m) for o in outs for m in re.findall(r"reconnecting in ([0-9.]+) s, as the chief asked", o))
    step = 1 / limits.RESTART_RECONNECTS_PER_S
    assert waits == pytest.approx([step, 2 * step]), outs
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 7))  # no round lost or repeated


def test_close_from_another_thread_ends_the_hinted_wait():
    import threading

    from fedsock.transport.errors import ConnectionLost
    from fedsock.worker.client import Client

    class Channel:
        def close(self) -> None:
            pass

    c = object.__new__(Client)  # only what _reconnect touches before it connects
    c._channel, c._stop, c._reconnect_timeout, c._gone_timeout = Channel(), threading.Event(), 300.0, 60.0
    threading.Timer(0.2, c._stop.set).start()  # what close() does first
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost, match="closed while waiting"):
        c._reconnect("the chief hung up", wait=30.0)
    assert time.monotonic() - t0 < 5
