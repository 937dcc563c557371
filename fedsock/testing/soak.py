"""Long-run checks of a chief: what to sample, how to judge the series, and churning workers.

``sample`` reads a chief process's resident memory, open file descriptors and
threads from ``/proc``, and the size of its state dir (metrics.jsonl apart:
it is the one file that grows by design). ``judge`` fits a least-squares line
to each series over the last ``1 - warmup`` of the samples and compares its
slope with a threshold. ``python -m fedsock.testing.soak`` runs numpy workers
(``fedsock.Client``) that leave and rejoin every few rounds, as ``bench/soak.py``
and the suite's short soak use them; it stops on SIGTERM and prints one JSON
line with what its workers did.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1024 * 1024
#: Series sampled from the chief, and the unit each is judged in.
SERIES = ("rss_mib", "fds", "threads", "state_bytes_other", "metrics_bytes")


@dataclass(frozen=True)
class Sample:
    """One look at a chief: seconds since the start, memory, descriptors, threads, its state dir."""

    t: float
    rss_mib: float
    fds: int
    threads: int
    state_bytes_other: int  # the state dir without metrics.jsonl
    metrics_bytes: int
    state_files: int
    checkpoints: int
    rounds: int  # lines in metrics.jsonl


def _status_field(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")


def state_dir_sizes(state_dir: Path) -> tuple[int, int, int, int]:
    """Bytes without metrics.jsonl, bytes of metrics.jsonl, files, checkpoint files."""
    other = files = ckpts = 0
    metrics = 0
    for root, _dirs, names in os.walk(state_dir):
        for n in names:
            p = Path(root, n)
            try:
                size = p.lstat().st_size
            except FileNotFoundError:  # a checkpoint pruned, a temp file renamed meanwhile
                continue
            files += 1
            if p == state_dir / "metrics.jsonl":
                metrics = size
            else:
                other += size
                ckpts += p.parent.name == "checkpoints" and n.endswith(".fsck")
    return other, metrics, files, ckpts


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def sample(pid: int, state_dir: Path, t: float) -> Sample:
    """Look at chief ``pid`` now (raises OSError once it is gone)."""
    rss = _status_field(pid, "VmRSS") / 1024
    threads = _status_field(pid, "Threads")
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    other, metrics, files, ckpts = state_dir_sizes(state_dir)
    return Sample(round(t, 2), round(rss, 2), fds, threads, other, metrics, files, ckpts,
                  count_lines(state_dir / "metrics.jsonl"))


def slope_per_hour(ts: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``ys`` against ``ts`` (seconds), per hour."""
    if len(ts) < 2 or max(ts) == min(ts):
        return 0.0
    return float(np.polyfit(np.asarray(ts, float), np.asarray(ys, float), 1)[0]) * 3600.0


@dataclass(frozen=True)
class Thresholds:
    """The largest slope (per hour, over the judged samples) each series may have and still pass.

    Only growth fails: a leak grows, and a series that falls (memory the
    allocator gives back to the system) is bounded. The defaults are for an
    hour of 8 churning workers: a leak of one file descriptor or thread per
    1000 joins (several thousand an hour) would exceed them; memory may creep
    by at most ``rss_mib`` MiB an hour.
    """

    rss_mib: float = 2.0
    fds: float = 3.0
    threads: float = 3.0
    state_bytes_other: float = 4096.0


def judge(samples: Sequence[Sample], limits: Thresholds, warmup: float = 0.2,
          keep_checkpoints: int | None = None) -> dict[str, object]:
    """Slopes of each series over the samples after the first ``warmup`` share, and whether each passes.

    metrics.jsonl is reported (bytes per hour and per round) but not judged: it
    grows by one line a round. With ``keep_checkpoints``, no sample may show
    more checkpoint files than that plus one (a new one is written before the
    oldest is pruned).
    """
    judged = list(samples[int(len(samples) * warmup):])
    ts = [s.t for s in judged]
    out: dict[str, object] = {"samples": len(samples), "judged_samples": len(judged),
                              "judged_seconds": round(ts[-1] - ts[0], 1) if ts else 0.0}
    passed = len(judged) >= 3
    for name in SERIES:
        slope = slope_per_hour(ts, [float(getattr(s, name)) for s in judged])
        limit = getattr(limits, name, None)
        ok = None if limit is None else slope <= limit
        out[name] = {"slope_per_hour": round(slope, 3), "threshold_per_hour": limit, "pass": ok,
                     "first": getattr(judged[0], name) if judged else None,
                     "last": getattr(judged[-1], name) if judged else None,
                     "min": min(getattr(s, name) for s in judged) if judged else None,
                     "max": max(getattr(s, name) for s in judged) if judged else None}
        passed = passed and ok is not False
    rounds = judged[-1].rounds - judged[0].rounds if judged else 0
    if rounds > 0:
        out["metrics_bytes_per_round"] = round((judged[-1].metrics_bytes - judged[0].metrics_bytes) / rounds, 1)
    if keep_checkpoints is not None:
        most = max((s.checkpoints for s in samples), default=0)
        out["checkpoints"] = {"max": most, "kept": keep_checkpoints, "pass": most <= keep_checkpoints + 1}
        passed = passed and most <= keep_checkpoints + 1
    out["pass"] = passed
    return out


def as_json(samples: Sequence[Sample]) -> dict[str, list[float]]:
    """The samples as one list per field (the series of the report)."""
    rows = [asdict(s) for s in samples]
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


# --- a run ------------------------------------------------------------------------

#: The exit status of a chief stopped by a signal before its last round.
STOPPED = 130


@dataclass
class SoakRun:
    """What ``run`` saw: the samples, what the workers did, how the chief ended."""

    samples: list[Sample]
    workers: dict[str, Any]
    chief_exit: int | None
    chief_log_errors: int  # ERROR lines and tracebacks in the chief's log
    state_dir: Path

    @property
    def clean(self) -> bool:
        """The chief stopped on its SIGTERM, logged no error, and no worker was stuck or failed."""
        return (self.chief_exit == STOPPED and self.chief_log_errors == 0 and self.workers.get("stuck") == 0
                and self.workers.get("errors") == 0)


def run(workdir: Path, seconds: float, every: float, *, max_rounds: int = 10**8, workers: int = 8,
        params: int = 10_000, pace: float = 0.5, keep_checkpoints: int = 3) -> SoakRun:
    """One chief (``chief.py``, bring-your-own model) and churning workers for ``seconds``,
    sampling the chief every ``every`` s; then the workers stop and the chief gets SIGTERM."""
    import subprocess

    from fedsock.demo import wait_for_address

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FEDSOCK_CONFIG", None)
    state, log = workdir / "chief", workdir / "chief.log"
    chief = subprocess.Popen(
        [sys.executable, str(root / "chief.py"), "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state),
         "--rounds", str(10**8), "--min-workers", "2", "--round-timeout", "10", "--idle-timeout", "30",
         "--heartbeat-interval", "5", "--keep-checkpoints", str(keep_checkpoints), "--progress", "plain"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)
    host: subprocess.Popen[str] | None = None
    samples: list[Sample] = []
    tally: dict[str, Any] = {}
    chief_exit = None
    try:
        address = wait_for_address(state, chief)
        token = (state / "token").read_text().strip()
        host = subprocess.Popen(
            [sys.executable, "-m", "fedsock.testing.soak", "--chief", address, "--token", token, "--workers",
             str(workers), "--params", str(params), "--pace", str(pace)],
            stdout=subprocess.PIPE, stderr=open(workdir / "workers.log", "wb"), text=True, env=env)
        t0 = time.monotonic()
        next_at = t0
        while chief.poll() is None and host.poll() is None:
            now = time.monotonic()
            if now >= next_at:
                samples.append(sample(chief.pid, state, now - t0))
                next_at += every
                if now - t0 >= seconds or samples[-1].rounds >= max_rounds:
                    break
            time.sleep(max(0.0, min(next_at - time.monotonic(), 1.0)))
        host.send_signal(signal.SIGTERM)
        out = host.communicate(timeout=180)[0].strip().splitlines()
        tally = json.loads(out[-1]) if out else {}
        chief.send_signal(signal.SIGTERM)
        chief_exit = chief.wait(timeout=60)
    finally:
        for proc in (host, chief):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    errors = sum(1 for line in log.read_text(errors="replace").splitlines() if " ERROR " in line or "Traceback" in line)
    return SoakRun(samples, tally, chief_exit, errors, state)


# --- churning workers -----------------------------------------------------------


@dataclass
class Tally:
    joins: int = 0
    syncs: int = 0
    polite_leaves: int = 0
    silent_leaves: int = 0
    errors: int = 0


def churn(address: str, token: str, name: str, params: int, pace: float, stop: threading.Event,
          tally: Tally, lock: threading.Lock, errors: list[str], live: dict[str, Any] | None = None) -> None:
    """One worker: join, sync a few rounds (``pace`` s of "training" each), leave, stay away, rejoin.
    Its Client is in ``live`` while connected, so that stopping can close it (a sync waiting for a
    round that the leaving workers will not finish then ends with ``ClientClosed``, not an error)."""
    from fedsock.errors import ClientClosed, FedsockError
    from fedsock.worker.client import Client

    rng = random.Random(name)
    step = np.full((params,), 1e-4, np.float32)
    while not stop.is_set():
        try:
            with Client(address, token=token, name=name, connect_timeout=60, idle_timeout=30,
                        heartbeat_interval=5, reconnect_timeout=60) as c:
                with lock:
                    tally.joins += 1
                    if live is not None:
                        live[name] = c
                w = c.join([np.zeros((params,), np.float32)])[0]
                for _ in range(rng.randint(2, 6)):
                    if stop.wait(pace * rng.uniform(0.5, 1.5)) or c.finished:
                        break
                    w = c.sync([w + step], num_examples=rng.randint(1, 100))[0]
                    with lock:
                        tally.syncs += 1
                polite = rng.random() < 0.5
                if polite:  # says goodbye; otherwise the connection just ends
                    c.close("leaving for a while")
                with lock:
                    tally.polite_leaves += polite
                    tally.silent_leaves += not polite
                if c.finished:
                    return
        except ClientClosed:
            if not stop.is_set():
                raise
        except (FedsockError, OSError) as exc:
            with lock:
                tally.errors += 1
                if len(errors) < 10:
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            if live is not None:
                with lock:
                    live.pop(name, None)
        stop.wait(rng.uniform(0.5, 3.0))  # away


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="numpy workers that leave and rejoin (until SIGTERM)")
    p.add_argument("--chief", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--params", type=int, default=10_000)
    p.add_argument("--pace", type=float, default=0.5, help="seconds of pretended training per round")
    args = p.parse_args(argv)
    stop, lock, tally = threading.Event(), threading.Lock(), Tally()
    errors: list[str] = []
    live: dict[str, Any] = {}
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=churn, args=(args.chief, args.token, f"soak-{i}", args.params, args.pace,
                                                    stop, tally, lock, errors, live), daemon=True)
               for i in range(args.workers)]
    for t in threads:
        t.start()
    while not stop.wait(1.0) and any(t.is_alive() for t in threads):
        pass
    with lock:
        leaving = list(live.values())
    for c in leaving:  # a worker that stops does not wait for its round
        c.close("stopping")
    for t in threads:
        t.join(timeout=90)  # a sync in progress returns once its round closes
    print(json.dumps({**asdict(tally), "stuck": sum(t.is_alive() for t in threads), "first_errors": errors}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
