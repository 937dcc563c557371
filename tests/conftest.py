"""Helpers to run real chief and worker processes on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="-1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("FEDSOCK_TOKEN", None)
    return e


@dataclass
class ChiefProc:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log: Path
    address: str = ""
    token: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"chief did not finish in {timeout} s:\n{self.output()[-3000:]}") from None


def start_chief(tmp: Path, *args: str, timeout: float = 90.0) -> ChiefProc:
    """Start ``python chief.py`` on a free port; wait until it listens."""
    state = tmp / "chief"
    log = tmp / "chief.log"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", "0",
         "--state-dir", str(state), *args],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env(), cwd=tmp,
    )
    c = ChiefProc(proc, state, log)
    deadline = time.monotonic() + timeout
    addr = state / "chief.addr"
    while time.monotonic() < deadline:
        if addr.exists() and addr.read_text().strip():
            c.address = addr.read_text().strip()
            c.token = (state / "token").read_text().strip()
            return c
        if proc.poll() is not None:
            raise AssertionError(f"chief exited early ({proc.returncode}):\n{c.output()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"chief did not listen within {timeout} s:\n{c.output()}")


def start_worker(tmp: Path, name: str, *args: str, token: str | None = None,
                 script: str = "worker.py") -> subprocess.Popen[str]:
    """Start ``python worker.py ARGS`` (or an example script) with its output captured."""
    e = env()
    if token is not None:
        e["FEDSOCK_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, str(ROOT / script), *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=e, cwd=tmp,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120.0) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"process did not finish in {timeout} s:\n{out[-3000:]}") from None
    return proc.returncode, out


@pytest.fixture
def digits(tmp_path_factory) -> Path:
    from fedsock.data import Partition, split_digits

    d = tmp_path_factory.mktemp("shards")
    split_digits(d, 2, Partition.parse("dirichlet:0.5"), seed=1)
    return d


@pytest.fixture
def chiefs(tmp_path):
    started: list[ChiefProc] = []

    def start(*args: str) -> ChiefProc:
        c = start_chief(tmp_path, *args)
        started.append(c)
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()
