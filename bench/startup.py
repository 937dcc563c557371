"""Benchmark: how soon a chief without --model accepts connections, and how soon `fedsock status` answers.

    python bench/startup.py [--trials 5]

Each trial starts ``python chief.py --port 0 --state-dir NEW --min-workers 2``
(no ``--model``: the first worker proposes the model, so the chief needs no
TensorFlow) and polls until a TCP connection to the address it wrote to
``chief.addr`` succeeds: ``listen_s`` is the time from the spawn to that
connect. Then ``python -m fedsock status --chief ADDR --token T`` runs to
completion: ``status_s`` is its whole process lifetime (interpreter start,
imports, TLS handshake, the answer). The trial also records whether the chief
imported TensorFlow (``/proc/PID/maps`` naming libtensorflow). Prints one JSON
object per trial and a summary with medians and the per-trial spread.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _loaded_tensorflow(pid: int) -> bool:
    try:
        return "tensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _wait_listening(state: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The chief's address, once a TCP connect to it succeeds."""
    deadline = time.monotonic() + timeout
    addr_file = state / "chief.addr"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the chief exited with {proc.returncode} before listening")
        try:
            addr = addr_file.read_text().strip()
        except OSError:
            addr = ""
        if addr:
            host, _, port = addr.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=0.2).close()
                return addr
            except OSError:
                pass
        time.sleep(0.002)
    raise TimeoutError(f"the chief was not listening within {timeout} s")


def trial() -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="fedsock-startup-") as tmp:
        state = Path(tmp) / "chief"
        t0 = time.perf_counter()
        chief = subprocess.Popen([sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", "0",
                                  "--state-dir", str(state), "--min-workers", "2"],
                                 cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            addr = _wait_listening(state, chief, 30)
            listen_s = time.perf_counter() - t0
            token = (state / "token").read_text().strip()
            t1 = time.perf_counter()
            status = subprocess.run([sys.executable, "-m", "fedsock", "status", "--chief", addr, "--json"],
                                    env=dict(env, FEDSOCK_TOKEN=token), cwd=tmp, capture_output=True, text=True,
                                    timeout=30)
            status_s = time.perf_counter() - t1
            answered = status.returncode == 0 and '"round"' in status.stdout
            tf = _loaded_tensorflow(chief.pid)
        finally:
            chief.send_signal(signal.SIGINT)
            try:
                chief.wait(10)
            except subprocess.TimeoutExpired:
                chief.kill()
                chief.wait()
    return {"listen_s": round(listen_s, 3), "status_s": round(status_s, 3), "status_answered": answered,
            "chief_imported_tensorflow": tf}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=5)
    a = p.parse_args()
    rows = []
    for _ in range(a.trials):
        rows.append(trial())
        print(json.dumps(rows[-1]), flush=True)
    summary = {"trials": len(rows)}
    for key in ("listen_s", "status_s"):
        vals = [float(r[key]) for r in rows]  # type: ignore[arg-type]
        summary[f"{key}_median"] = round(statistics.median(vals), 3)
        summary[f"{key}_min"], summary[f"{key}_max"] = min(vals), max(vals)
    summary["all_answered"] = all(r["status_answered"] for r in rows)
    summary["any_tensorflow"] = any(r["chief_imported_tensorflow"] for r in rows)
    print(json.dumps({"summary": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
