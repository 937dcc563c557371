#!/usr/bin/env python3
"""Restart storm: 1000 connected workers, the chief stopped (SIGTERM) and started again on its state dir.

    nice -n 19 python bench/restart_storm.py [--workers 1000] [--procs 4] [--addresses 1000] [--no-hint]

The chief is the real ``fedsock.Chief`` in its own process (no ``--model``, a
model of ``--params`` float32s, ``--min-workers`` = all workers, so a round
after the restart opens only once every worker is back). The workers are
``--procs`` processes of threads, each thread a complete ``fedsock.Client``
(its own TLS 1.3 connection, authentication, heartbeats) that syncs again as
soon as it has the global model, as in ``bench/thousand_workers.py``. Once
all have joined and two rounds have closed, the chief gets SIGTERM: it tells
every worker Error ``shutdown`` with its own ``retry_after_ms`` (spread at
``RESTART_RECONNECTS_PER_S``), exits, and is started again on the same state
dir and port at once. The workers reconnect as their reconnect policy says.

Source addresses: a chief admits at most ``MAX_UNAUTHENTICATED_PER_ADDRESS``
(8) connections from one address into the handshake, so 1000 workers on
127.0.0.1 would be throttled by that cap alone, which real workers on 1000
machines never meet. By default every worker therefore connects from its own
loopback address, 127.1.x.y (Linux routes all of 127/8 to the loopback
device); ``--addresses 1`` puts them all on 127.0.0.1 (one host, or one NAT,
with 1000 workers). ``--no-hint`` makes the workers ignore the hint (the
behaviour before it existed), for comparison.

Prints one JSON object: seconds from the SIGTERM (and from the new chief
listening) until every worker is back (its reconnect's Welcome and model
read), percentiles, the first round closed after the restart, the refused
connections by reason as the restarted chief counted them (over the
per-address or global pre-authentication cap, after failed authentications,
failed TLS handshakes) and the failed attempts as the workers saw them, the
hints handed out, and both chiefs' peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakRss, spawn  # noqa: E402

from fedsock.demo import wait_for_address  # noqa: E402


def run_chief(state: str, port: int, workers: int, rounds: int) -> None:
    import dataclasses
    import logging

    import fedsock

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    chief = fedsock.Chief(host="127.0.0.1", port=port, state_dir=Path(state), rounds=rounds, min_workers=workers,
                          round_timeout=3600, idle_timeout=600, heartbeat_interval=30, done_grace=5.0)
    summary = chief.run()
    refused = dataclasses.asdict(chief.listener.refused) if chief.listener else {}
    print(json.dumps({"rounds": summary.rounds, "stopped": summary.stopped, "refused": refused}), flush=True)


def address_for(index: int, addresses: int) -> str | None:
    """The loopback source address of worker ``index`` (None: the default, 127.0.0.1)."""
    if addresses <= 1:
        return None
    k = index % addresses
    return f"127.1.{k // 250}.{k % 250 + 1}"


def classify(reason: str) -> str:
    """What a failed connection attempt ran into, from the worker's log text."""
    low = reason.lower()
    if "refused" in low:
        return "nobody_listening"  # ECONNREFUSED: the chief was not up yet
    if "reset" in low or "eof" in low or "closed" in low or "broken pipe" in low:
        return "closed_before_tls"  # the chief's admission closed it (or it died mid-handshake)
    if "timed out" in low:
        return "timed_out"
    return "other"


def run_proc(addr: str, token: str, first: int, threads: int, params: int, addresses: int, hint: bool) -> None:
    import logging

    import numpy as np

    import fedsock
    from fedsock import limits

    if not hint:
        limits.MAX_RETRY_AFTER_MS = 0  # the worker ignores the chief's retry_after_ms (as before it existed)
    local = threading.local()
    connect = socket.create_connection

    def bound(address, *args, **kw):  # type: ignore[no-untyped-def]
        src = getattr(local, "src", None)
        if src:
            kw["source_address"] = (src, 0)
        return connect(address, *args, **kw)

    socket.create_connection = bound  # each simulated worker on its own address
    lock = threading.Lock()
    fails: dict[str, int] = {}
    other: list[str] = []
    hints: list[float] = []
    lost: list[float] = []
    reasons: dict[str, int] = {}

    class Tap(logging.Handler):
        """Counts the Client's failed attempts and the waits it was asked for, from its log records."""

        def emit(self, record: logging.LogRecord) -> None:
            msg = str(record.msg)
            with lock:
                if msg.startswith("chief at %s:%s not reachable") and record.args:
                    kind = classify(str(record.args[2]))  # type: ignore[index]
                    fails[kind] = fails.get(kind, 0) + 1
                    if kind == "other" and len(other) < 5:
                        other.append(str(record.args[2]))  # type: ignore[index]
                elif msg.startswith("connection to the chief lost"):
                    lost.append(record.created)
                    why = str(record.args[0]).split(":")[0] if record.args else "?"  # type: ignore[index]
                    reasons[why] = reasons.get(why, 0) + 1
                    if "as the chief asked" in msg and record.args:
                        hints.append(float(record.args[1]))  # type: ignore[index]

    wlog = logging.getLogger("fedsock.worker")
    wlog.setLevel(logging.INFO)
    wlog.propagate = False
    wlog.addHandler(Tap())
    gate = threading.Semaphore(16)  # the first join: stay under the chief's pre-authentication cap
    clients: list[fedsock.Client | None] = [None] * threads
    joined: list[float] = [0.0] * threads
    back: list[float] = [0.0] * threads
    errors: list[str] = []
    done = threading.Event()

    def worker(i: int) -> None:
        local.src = address_for(first + i, addresses)
        try:
            with gate:
                c = fedsock.Client(addr, token=token, name=f"storm-{first + i:05d}", connect_timeout=600,
                                   idle_timeout=600, heartbeat_interval=30, reconnect_timeout=600)
            clients[i] = c
            with c:
                w = c.join([np.zeros(params, np.float32)])[0]
                joined[i] = time.time()
                step = np.full(params, 1e-3, np.float32)
                while not c.finished:
                    w = c.sync([w + step], num_examples=1)[0]
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            with lock:
                errors.append(f"storm-{first + i:05d}: {exc!r}")

    def watch() -> None:
        """The moment each Client is back: its reconnect count turns 1."""
        while not done.wait(0.02):
            now = time.time()
            for i, c in enumerate(clients):
                if c is not None and not back[i] and c.reconnects:
                    back[i] = now

    threading.stack_size(512 * 1024)
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    done.set()
    watcher.join()
    print(json.dumps({"joined": joined, "back": back, "errors": errors, "fails": fails, "other": other,
                      "hints": hints, "lost": lost, "reasons": reasons}), flush=True)


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def wait_for(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_chief":
        run_chief(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_proc":
        a = sys.argv[2:]
        run_proc(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6] == "1")
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--params", type=int, default=1000, help="float32 parameters of the model (default 1000)")
    p.add_argument("--addresses", type=int, default=None,
                   help="loopback source addresses the workers share (default: one each; 1: all on 127.0.0.1)")
    p.add_argument("--no-hint", action="store_true", help="workers ignore the chief's retry_after_ms")
    a = p.parse_args()
    addresses = a.workers if a.addresses is None else a.addresses
    per = [a.workers // a.procs + (1 if i < a.workers % a.procs else 0) for i in range(a.procs)]
    with tempfile.TemporaryDirectory(prefix="fedsock-storm-") as tmp:
        state = Path(tmp) / "chief"
        metrics = state / "metrics.jsonl"
        log_a, log_b = open(Path(tmp) / "a.log", "w"), open(Path(tmp) / "b.log", "w")
        first = spawn([__file__, "_chief", str(state), "0", str(a.workers), str(10**6)], stdout=-1, stderr=log_a)
        rss_a = PeakRss(first.pid, interval=0.2)
        addr = wait_for_address(state, first)
        port = int(addr.rsplit(":", 1)[1])
        token = (state / "token").read_text().strip()
        t_start = time.time()
        starts = [sum(per[:j]) for j in range(a.procs)]
        procs = [spawn([__file__, "_proc", addr, token, str(starts[j]), str(n), str(a.params), str(addresses),
                        "0" if a.no_hint else "1"], stdout=-1) for j, n in enumerate(per)]
        wait_for(lambda: lines(metrics) >= 2, 900, "the workers to join and two rounds to close")
        t_all_joined = time.time()
        t_stop = time.time()
        first.send_signal(signal.SIGTERM)
        out_a = json.loads(first.communicate(timeout=120)[0].strip().splitlines()[-1])
        t_a_exit = time.time()
        peak_a = rss_a.stop()
        at = lines(metrics)
        (state / "chief.addr").unlink()
        second = spawn([__file__, "_chief", str(state), str(port), str(a.workers), str(at + 2)], stdout=-1,
                       stderr=log_b)
        rss_b = PeakRss(second.pid, interval=0.2)
        wait_for_address(state, second)
        t_b_up = (state / "chief.addr").stat().st_mtime
        wait_for(lambda: lines(metrics) > at, 900, "a round after the restart")
        t_round = time.time()
        outs = [json.loads(p.communicate(timeout=900)[0].strip().splitlines()[-1]) for p in procs]
        out_b = json.loads(second.communicate(timeout=120)[0].strip().splitlines()[-1])
        peak_b = rss_b.stop()
        recorded = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    back = [b - t_stop for o in outs for b in o["back"] if b]
    hints = [h for o in outs for h in o["hints"]]
    fails: dict[str, int] = {}
    for o in outs:
        for k, v in o["fails"].items():
            fails[k] = fails.get(k, 0) + v
    errors = [e for o in outs for e in o["errors"]]
    reasons: dict[str, int] = {}
    for o in outs:
        for k, v in o["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
    print(json.dumps({
        "workers": a.workers, "worker_processes": a.procs, "params": a.params, "source_addresses": addresses,
        "hint": not a.no_hint, "join_s": round(t_all_joined - t_start, 1), "round_at_restart": at,
        "chief_stop_s": round(t_a_exit - t_stop, 2), "new_chief_listening_s": round(t_b_up - t_stop, 2),
        "workers_back": len(back), "all_back_s": round(max(back), 2) if back else None,
        "all_back_after_listening_s": round(max(back) - (t_b_up - t_stop), 2) if back else None,
        "back_s_p50_p90_p99": [pct(back, 0.5), pct(back, 0.9), pct(back, 0.99)],
        "first_round_after_restart_s": round(t_round - t_stop, 2),
        "every_round_recorded_once": recorded == list(range(1, at + 3)),
        "refused_by_restarted_chief": out_b["refused"], "refused_by_first_chief": out_a["refused"],
        "failed_attempts_seen_by_workers": fails, "other_failures": [x for o in outs for x in o["other"]][:3],
        "why_workers_reconnected": reasons, "hints_received": len(hints),
        "hint_s_min_max": [round(min(hints), 2), round(max(hints), 2)] if hints else None,
        "errors": errors[:5], "worker_errors": len(errors),
        "chief_peak_rss_mib": {"before": round(peak_a, 1), "restarted": round(peak_b, 1)},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
