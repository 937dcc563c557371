"""Helpers to run real chief and worker processes on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def worker_token(state_dir: Path, name: str) -> str:
    """The per-worker token of ``name`` at the chief of ``state_dir`` (created on first use)."""
    import ssl

    from fedsock import tls
    from fedsock.chief import tokens

    for e in tokens.listing(state_dir):
        if e.name == name and e.revoked is None:
            fp = tls.cert_fingerprint(ssl.PEM_cert_to_DER_cert((state_dir / "chief.crt").read_text()))
            return str(tls.JoinToken(fp, e.secret, name))
    return str(tokens.create(state_dir, name))


def env() -> dict[str, str]:
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="-1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    for k in [k for k in e if k.startswith("FEDSOCK_")]:  # settings of the developer's shell
        del e[k]
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

    def token_for(self, name: str) -> str:
        """A per-worker token for ``name`` (``fedsock token create``), issued once and reused."""
        return worker_token(self.state_dir, name)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"chief did not finish in {timeout} s:\n{self.output()[-3000:]}") from None


def start_chief(tmp: Path, *args: str, timeout: float = 90.0, name: str = "chief") -> ChiefProc:
    """Start ``python chief.py`` on a free port; wait until it listens (state in ``tmp/name``)."""
    state = tmp / name
    log = tmp / f"{name}.log"
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

    def start(*args: str, name: str = "chief") -> ChiefProc:
        c = start_chief(tmp_path, *args, name=name)
        started.append(c)
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def run_clients(address: str, token: str | Callable[[str], str], examples: dict[str, int],
                shape: tuple[int, ...] = (4, 3), timeout: float = 60.0, work: float = 0.0,
                val: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Numpy workers (``fedsock.Client`` in threads) that propose zeros and then send, each round,
    the global weights plus ``numpy_worker.step_for(name, round)`` with a fixed example count,
    after ``work`` seconds of pretended training (with ``val``: evaluating each model with
    ``numpy_worker.evaluate_for`` on ``val[name]`` pretended examples).

    Returns:
        Each worker's final weights.
    """
    from fedsock.testing.numpy_worker import evaluate_for, step_for
    from fedsock.worker.client import Client

    finals: dict[str, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(name: str, n: int) -> None:
        try:
            evaluate = None if val is None else (lambda w: evaluate_for(name, w, val[name]))
            with Client(address, token=tokens[name], name=name, connect_timeout=timeout, evaluate=evaluate) as c:
                w = c.join([np.zeros(shape, np.float32)])
                while not c.finished:
                    time.sleep(work)
                    metrics = None if val is None else {"loss": float(c.round + sum(map(ord, name)) % 7)}
                    w = c.sync([w[0] + step_for(name, c.round + 1, [shape])[0]], num_examples=n, metrics=metrics)
                finals[name] = w[0]
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    tokens = {name: token if isinstance(token, str) else token(name) for name in examples}  # one at a time
    threads = [threading.Thread(target=worker, args=(name, n), daemon=True) for name, n in examples.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors
    assert len(finals) == len(examples), "a worker did not finish"
    return finals


def flat_fedavg(examples: dict[str, int], rounds: int, shape: tuple[int, ...] = (4, 3)) -> np.ndarray:
    """What ``run_clients`` must end with: weighted FedAvg of the fixed steps, in float64."""
    from fedsock.testing.numpy_worker import step_for

    w = np.zeros(shape, np.float64)
    total = sum(examples.values())
    for r in range(1, rounds + 1):
        w = sum(n * (w.astype(np.float32) + step_for(name, r, [shape])[0]).astype(np.float64)
                for name, n in examples.items()) / total
        w = w.astype(np.float32).astype(np.float64)  # the chief hands out float32
    return w
