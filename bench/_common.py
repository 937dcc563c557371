"""Helpers shared by the benchmark scripts: peak RSS and CPU time of a child, medians, spawning."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def vm_hwm_mib(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class PeakRss:
    """Polls a child's VmHWM (a high-water mark) until it exits; ``peak`` is the last value read."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            v = vm_hwm_mib(self.pid)
            if v is None:
                return
            self.peak = max(self.peak, v)
            time.sleep(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        v = vm_hwm_mib(self.pid)
        if v is not None:
            self.peak = max(self.peak, v)
        return self.peak


def reap(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[float, float]:
    """Wait for ``proc`` to exit; returns its peak RSS in MiB and the CPU seconds it used
    (user + system, all its threads), both from the kernel's accounting (``wait4``): exact,
    and nothing polls the process while it runs."""
    import os

    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss is in KiB on Linux
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"process {proc.pid} ({' '.join(map(str, proc.args))[:80]}) did not exit")
        time.sleep(0.01)


def spawn(args: list[str], python: str | None = None, **kw: object) -> subprocess.Popen[str]:
    """Start ``python args...`` (this interpreter unless ``python`` names another) with the repository importable."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.Popen([python or sys.executable, *args], env=env, text=True, **kw)  # type: ignore[call-overload]


def round_times(per_worker: list[list[float]], skip: int = 1) -> list[float]:
    """Per round, the slowest worker's sync time (a round ends when the last worker has the model)."""
    rounds = min(len(t) for t in per_worker)
    return [max(t[r] for t in per_worker) for r in range(skip, rounds)]


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def shape_for(params: int) -> list[tuple[int, ...]]:
    """A few tensors totalling ``params`` elements (a big kernel, a bias, a small rest)."""
    bias = min(1000, params // 10)
    big = params - 2 * bias
    return [(big,), (bias,), (bias,)]
