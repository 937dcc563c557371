"""Chaos runs: a chief and numpy workers as real processes, killed at random.

Each run starts a bring-your-own-model chief and ``workers`` numpy workers on
127.0.0.1, then SIGKILLs random processes (the chief included) at random
moments and restarts them (the chief on the same state dir and port). A run
passes when it finishes every round within ``bound`` seconds, every round is
in ``metrics.jsonl`` exactly once, and no round that was checkpointed before a
kill was lost or redone.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedsock.demo import wait_for_address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics(state: Path) -> list[dict[str, Any]]:
    path = state / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _checkpointed(state: Path) -> int:
    files = sorted((state / "checkpoints").glob("round-*.fsck")) if (state / "checkpoints").is_dir() else []
    return int(files[-1].stem.split("-")[1]) if files else 0


def run_chaos(workdir: Path, seed: int, rounds: int = 10, workers: int = 3, kills: int = 3,
              work: float = 0.2, bound: float = 180.0) -> dict[str, Any]:
    """One chaos run; returns its figures (``ok`` tells whether it passed)."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    state, port = workdir / "chief", free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    py = [sys.executable, "-m"]
    chief_cmd = py + ["fedsock", "chief", "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state),
                      "--rounds", str(rounds), "--min-workers", "2", "--round-timeout", "2",
                      "--idle-timeout", "5", "--heartbeat-interval", "1"]
    logs: list[Any] = []

    def spawn(cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        f = open(workdir / f"{name}.log", "ab")
        logs.append(f)
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)

    def start_chief() -> subprocess.Popen[bytes]:
        (state / "chief.addr").unlink(missing_ok=True)
        p = spawn(chief_cmd, "chief")
        wait_for_address(state, p, timeout=60)
        return p

    incarnation: dict[int, int] = {}

    def start_worker(i: int) -> subprocess.Popen[bytes]:
        env["FEDSOCK_TOKEN"] = (state / "token").read_text().strip()
        incarnation[i] = incarnation.get(i, -1) + 1
        return spawn(py + ["fedsock.testing.numpy_worker", "--chief", f"127.0.0.1:{port}", "--name", f"w{i}",
                           "--work", str(work), "--idle-timeout", "5", "--heartbeat-interval", "1",
                           "--reconnect-timeout", "60"], f"w{i}-{incarnation[i]}")

    def never_joined(i: int) -> bool:
        """A restarted worker that found the run already over (it never got in)."""
        return "joined as worker" not in (workdir / f"w{i}-{incarnation[i]}.log").read_text()

    t0 = time.monotonic()
    chief = start_chief()
    procs = {i: start_worker(i) for i in range(workers)}
    kill_times = sorted(rng.uniform(0.5, max(1.0, rounds * (work + 0.1))) for _ in range(kills))
    chief_kills = worker_kills = 0
    before_kill: dict[int, float] = {}  # round -> its metrics 'time', for checkpointed rounds
    try:
        for at in kill_times:
            while time.monotonic() - t0 < at and chief.poll() is None:
                time.sleep(0.02)
            if chief.poll() is not None:
                break
            target = rng.randrange(workers + 1)
            done = _checkpointed(state)
            before_kill.update({r["round"]: r["time"] for r in _metrics(state) if r["round"] <= done})
            if target == workers:
                chief.send_signal(signal.SIGKILL)
                chief.wait()
                chief_kills += 1
                time.sleep(rng.uniform(0.2, 1.5))
                chief = start_chief()
            else:
                procs[target].send_signal(signal.SIGKILL)
                procs[target].wait()
                worker_kills += 1
                time.sleep(rng.uniform(0.2, 1.5))
                if chief.poll() is None:  # a worker restarted after the run ended has nothing to join
                    procs[target] = start_worker(target)
                else:
                    del procs[target]
        remaining = bound - (time.monotonic() - t0)
        try:
            chief_code = chief.wait(max(1.0, remaining))
        except subprocess.TimeoutExpired:
            chief_code = None
        worker_codes = []
        for i, p in procs.items():
            try:
                worker_codes.append(p.wait(15))
            except subprocess.TimeoutExpired:
                worker_codes.append("late" if chief_code == 0 and never_joined(i) else None)
    finally:
        for p in [chief, *procs.values()]:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    rows = _metrics(state)
    seen = [r["round"] for r in rows]
    times = {r["round"]: r["time"] for r in rows}
    lost = sorted(r for r, t in before_kill.items() if times.get(r) != t)
    result = {
        "seed": seed, "seconds": round(time.monotonic() - t0, 2), "rounds": rounds,
        "rounds_completed": len(set(seen)), "rounds_lost": len(lost), "duplicated_rounds": len(seen) - len(set(seen)),
        "chief_kills": chief_kills, "worker_kills": worker_kills, "chief_exit": chief_code,
        "worker_exits": worker_codes,
    }
    result["ok"] = (chief_code == 0 and all(c in (0, "late") for c in worker_codes)
                    and seen == list(range(1, rounds + 1)) and not lost)
    return result
