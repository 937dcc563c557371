#!/usr/bin/env python3
"""One chief, many simulated workers: round time and chief memory, printed as JSON.

    python bench/many_workers.py --workers 1000 --params 100000

Starts a real chief (``chief.py``, TLS on 127.0.0.1, no ``--model``) and
``--procs`` worker-host processes. Each host runs its share of the workers as
threads, every thread a real ``fedsock.Client`` with its own TLS connection,
handshake and heartbeats. Workers do no training: each proposes a zero
model, then syncs as soon as it holds the global model (global + a small
step, ``num_examples=1``), so a round measures only what the chief must do:
receive N updates, average them, send N global models.

Reported per round: ``chief_seconds`` (the chief's metrics.jsonl: round open
to close, i.e. receiving and folding every update), ``wall_seconds`` (first
update sent to last global model received, over all workers: the round as
the federation sees it), ``chief_cpu_seconds`` (CPU the chief process used
from the previous round's end to this one's: sending the previous global
model to everyone, then receiving this round's updates), and bytes. Round 1 includes joining; later rounds
are the steady state. ``chief_rss_mb`` is the chief's resident memory after
all workers joined and round 1's updates arrived (before its first
broadcast), and its peak (VmHWM). The worker threads share the
same cores as the chief, so on a small machine the figures are an upper
bound of the chief's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedsock.demo import wait_for_address  # noqa: E402
from fedsock.errors import FedsockError  # noqa: E402


def host(args: argparse.Namespace) -> None:
    """A worker-host process: ``args.count`` Client threads; prints one JSON line per worker."""
    from fedsock.worker.client import Client

    shape = (args.params,)
    lock = threading.Lock()
    results: list[dict] = []

    def work(i: int) -> None:
        name = f"sim-{i:05d}"
        time.sleep(random.uniform(0, args.stagger))  # do not hit the handshake limit all at once
        rec: dict = {"name": name, "rounds": {}}
        try:
            with Client(args.chief, token=args.token, name=name, connect_timeout=600,
                        idle_timeout=600, heartbeat_interval=30) as c:
                rec["joined"] = time.time()
                w = c.join([np.zeros(shape, np.float32)])[0]
                step = np.full(shape, 1e-3, np.float32)
                while not c.finished:
                    r = c.round + 1
                    sent = time.time()
                    w = c.sync([w + step], num_examples=1)[0]
                    rec["rounds"][r] = (sent, time.time())
        except Exception as exc:  # noqa: BLE001 - reported in the JSON
            rec["error"] = f"{type(exc).__name__}: {exc}"
        with lock:
            results.append(rec)

    threading.stack_size(512 * 1024)
    threads = [threading.Thread(target=work, args=(args.first + k,), daemon=True) for k in range(args.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rec in results:
        print(json.dumps(rec))


def rss_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1000, help="simulated workers (default 1000)")
    p.add_argument("--params", type=int, default=100_000, help="float32 parameters of the model (default 100000)")
    p.add_argument("--procs", type=int, default=4, help="worker-host processes sharing the threads (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3; round 1 includes joining)")
    p.add_argument("--stagger", type=float, default=20.0, help="seconds over which workers connect (default 20)")
    p.add_argument("--host", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--chief", help=argparse.SUPPRESS)
    p.add_argument("--token", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.host:
        host(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="fedsock-bench-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FEDSOCK_CONFIG", None)
    state = tmp / "chief"
    chief = subprocess.Popen(
        [sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state),
         "--rounds", str(args.rounds), "--min-workers", str(args.workers), "--round-timeout", "1800",
         "--idle-timeout", "600", "--heartbeat-interval", "30", "--progress", "plain"],
        stdout=open(tmp / "chief.out", "wb"), stderr=open(tmp / "chief.log", "wb"), env=env)
    hosts: list[subprocess.Popen[str]] = []
    try:
        try:
            address = wait_for_address(state, chief)
        except FedsockError as exc:
            raise SystemExit(f"{exc}: {(tmp / 'chief.log').read_text()[-2000:]}") from None
        token = (state / "token").read_text().strip()
        per = -(-args.workers // args.procs)
        started = time.time()
        for h in range(args.procs):
            count = min(per, args.workers - h * per)
            hosts.append(subprocess.Popen(
                [sys.executable, __file__, "--host", "--chief", address, "--token", token, "--first",
                 str(h * per), "--count", str(count), "--params", str(args.params), "--stagger", str(args.stagger)],
                stdout=subprocess.PIPE, text=True, env=env))
        peak_polled, joined_rss, hwm = 0.0, None, float("nan")
        metrics = state / "metrics.jsonl"
        cpu_at_line: list[float] = [cpu_seconds(chief.pid)]  # chief CPU when each metrics line appeared
        while chief.poll() is None:
            lines = metrics.read_text().count("\n") if metrics.exists() else 0
            if lines >= len(cpu_at_line):
                cpu_at_line.append(cpu_seconds(chief.pid))
            peak_polled = max(peak_polled, rss_mb(chief.pid, "VmRSS"))
            if metrics.exists() and metrics.stat().st_size:  # round 1 closed: its broadcast starts
                joined_rss = peak_polled if joined_rss is None else joined_rss
            now_hwm = rss_mb(chief.pid, "VmHWM")
            hwm = now_hwm if now_hwm == now_hwm else hwm  # NaN once the chief has exited
            time.sleep(0.2)
        records = [json.loads(line) for h in hosts for line in h.communicate()[0].splitlines() if line.strip()]
    finally:
        for proc in [chief, *hosts]:
            if proc.poll() is None:
                proc.kill()
    errors = [r for r in records if "error" in r]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rounds = []
    for i, row in enumerate(rows):
        r = str(row["round"])
        cpu = cpu_at_line[i + 1] - cpu_at_line[i] if i + 1 < len(cpu_at_line) else None
        times = [rec["rounds"][r] for rec in records if r in rec["rounds"]]
        rounds.append({
            "round": row["round"], "workers": row["workers"], "chief_seconds": row["seconds"],
            "wall_seconds": round(max(t[1] for t in times) - min(t[0] for t in times), 3) if times else None,
            "chief_cpu_seconds": round(cpu, 2) if cpu is not None else None,
            "mb_in": round(row["bytes_in"] / 1e6, 1), "mb_out": round(row["bytes_out"] / 1e6, 1),
        })
    joins = [rec["joined"] for rec in records if "joined" in rec]
    print(json.dumps({
        "workers": args.workers, "params": args.params, "model_mb": round(args.params * 4 / 1e6, 3),
        "worker_processes": args.procs, "threads_per_process": -(-args.workers // args.procs),
        "cpus": os.cpu_count(), "chief_exit": chief.returncode, "worker_errors": len(errors),
        "first_errors": [e["error"] for e in errors[:3]],
        "join_seconds": round(max(joins) - started, 1) if joins else None,
        "rounds": rounds,
        "chief_rss_mb": {"joined_and_round_1_received": round(joined_rss or float("nan"), 1),
                         "peak": round(hwm, 1)},
    }, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
