"""Chaos runs (a short version of bench/chaos.py) and the parts they are made of."""

from __future__ import annotations

import json
import shutil
import socket
import time

import numpy as np
import pytest

from fedsock.testing.chaos import run_chaos
from fedsock.testing.chaoscheck import check_run
from fedsock.testing.chaosplan import PROXY_EVENTS, Event, RunPlan, plan_run
from fedsock.testing.faultproxy import FaultProxy
from fedsock.testing.netlinks import unavailable


def test_plans_mix_secure_runs_namespaces_and_every_kind_of_event():
    plans = [plan_run(seed) for seed in range(30)]
    assert sum(p.secure for p in plans) == 10
    assert sum("netns" in p.links for p in plans) == 6
    kinds = {e.kind for p in plans for e in p.events}
    assert kinds == {"kill_worker", "stop_worker", "kill_chief", "stop_chief", *PROXY_EVENTS}
    for p in plans:
        assert "proxy" in p.links or "netns" in p.links  # somewhere for the proxy faults to strike
        assert all(e.target in p.proxies() for e in p.events if e.kind in PROXY_EVENTS)
    assert plan_run(7) == plan_run(7)


def _pair(proxy: FaultProxy, server: socket.socket) -> tuple[socket.socket, socket.socket]:
    c = socket.create_connection(proxy.address)
    s, _ = server.accept()
    for x in (c, s):
        x.settimeout(5)
    return c, s


def _drain(sock: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    return got


def test_injected_faults_strike_the_connection_that_passes_their_byte():
    server = socket.create_server(("127.0.0.1", 0))
    with FaultProxy(server.getsockname()) as proxy:
        c, s = _pair(proxy, server)
        c.sendall(b"a" * 3000)
        assert len(s.recv(65536)) == 3000  # no fault armed: relayed
        proxy.inject("cut_up", 1500)
        time.sleep(0.1)
        c.sendall(b"b" * 1000)  # counts toward the fault...
        c.sendall(b"c" * 1000)  # ...which strikes 500 bytes into this piece
        assert _drain(s) == b"b" * 1000 + b"c" * 500
        assert proxy.stats.cuts_up == 1 and proxy.pending() == 0

        c, s = _pair(proxy, server)
        proxy.inject("cut_down", 700)
        time.sleep(0.1)
        s.sendall(b"d" * 1000)
        assert _drain(c) == b"d" * 700 and proxy.stats.cuts_down == 1

        c, s = _pair(proxy, server)
        proxy.inject("stall", 100, hold=1.0)
        time.sleep(0.1)
        c.sendall(b"e" * 300)
        assert s.recv(65536) == b"e" * 100
        s.sendall(b"f" * 10)  # nothing moves either way while it is held
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(10)
        c.settimeout(5)
        started = time.monotonic()
        assert _drain(s) == b""  # then it is cut
        assert proxy.stats.stalls == 1 and time.monotonic() - started < 2

        c, s = _pair(proxy, server)
        proxy.slow(0.3, 5)
        time.sleep(0.1)
        started = time.monotonic()
        c.sendall(b"g")
        assert s.recv(10) == b"g" and time.monotonic() - started >= 0.25 and proxy.stats.delayed == 1
        for x in (c, s):
            x.close()
    server.close()


def _tampered(src, dst, how):
    shutil.copytree(src, dst)
    how(dst)
    return check_run(dst / "chief", dst / "updates", 8, [(128, 128)], secure=True)


@pytest.mark.integration
def test_chaos_runs_pass_their_checks_and_the_checks_can_fail(tmp_path):
    """Three short runs (about 30 s): secure with a chief and a worker killed and a worker stopped,
    plain with cuts both ways and a stall, and (where namespaces work) shaped links with a chief stop."""
    secure = RunPlan(1, 8, (10, 20, 30, 40), ("proxy", "direct", "direct", "direct"), (0, 0, 0, 0), True, (
        Event(1.5, "kill_chief", pause=0.5), Event(3.0, "kill_worker", 2, pause=0.5),
        Event(4.0, "stop_worker", 3, pause=2.0), Event(4.5, "cut_up", -1, size=30_000)))
    faults = RunPlan(2, 8, (5, 20, 60), ("proxy", "proxy", "direct"), (0, 0, 0), False, (
        Event(1.0, "cut_up", -1, size=40_000), Event(2.0, "cut_down", -1, size=90_000),
        Event(3.0, "stall", -1, pause=2.0, size=10_000), Event(3.5, "delay", -1, pause=1.0, size=100)))
    plans = [secure, faults]
    if unavailable() is None:
        plans.append(RunPlan(3, 6, (10, 30, 20), ("netns", "netns", "direct"), (8_000, 2_000, 0), False, (
            Event(1.0, "stop_chief", pause=1.5), Event(2.0, "cut_down", 1, size=50_000))))
    results = [run_chaos(tmp_path / f"run-{p.seed}", p, bound=60) for p in plans]
    for r in results:
        assert r["ok"], json.dumps(r, indent=1)
        assert r["rounds_completed"] == r["rounds"] and r["seconds"] < 60
    assert results[0]["kills"] == {"worker": 1, "chief": 1} and results[0]["stops"]["worker"] == 1
    assert results[1]["proxy"]["cuts_up"] >= 1 and results[1]["proxy"]["cuts_down"] >= 1
    assert results[1]["proxy"]["stalls"] == 1 and results[1]["reconnects"] >= 2

    run = tmp_path / "run-1"
    assert _tampered(run, tmp_path / "ok", lambda d: None)["problems"] == []

    row4 = next(json.loads(x) for x in (run / "chief" / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["round"] == 4)

    def nudge(d):  # one worker's saved update of round 4 is not what the chief averaged
        f = d / "updates" / row4["participants"][0] / "round-000004.npz"
        with np.load(f) as z:
            arrays = dict(z)
        arrays["w0000"] = arrays["w0000"] + np.float32(1e-3)
        np.savez(f, **arrays)

    assert _tampered(run, tmp_path / "nudged", nudge)["corrupted"] == [4]

    def drop_line(d):
        m = d / "chief" / "metrics.jsonl"
        m.write_text("".join(line for line in m.read_text().splitlines(True) if '"round": 5,' not in line))

    assert _tampered(run, tmp_path / "dropped", drop_line)["lost"] == [5]

    def twice(d):
        m = d / "chief" / "metrics.jsonl"
        lines = m.read_text().splitlines(True)
        m.write_text("".join(lines[:3] + [lines[2].replace('"time": ', '"time": 1')] + lines[3:]))

    assert 3 in _tampered(run, tmp_path / "twice", twice)["repeated"]
