"""A full disk and a slow disk under a real chief and real workers (processes, TLS, 127.0.0.1).

The full disk is a small tmpfs mounted for the test (root and mount permission needed, else
the test is skipped) holding the state dir; it is filled up while the chief runs. The slow
disk is ``fedsock.testing.slowdisk``: the real chief with every checkpoint fsync slowed down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsock import checkpoint
from fedsock.testing.chaos import free_port
from tests.conftest import ROOT, env, finish

pytestmark = pytest.mark.integration

SHAPE = "256,256"  # a 256 KiB model: a checkpoint is bigger than the room left on the full disk
TMPFS_BYTES = 4 * 1024 * 1024
LEFT_BYTES = 96 * 1024  # what the filler leaves: enough for metrics lines, not for a checkpoint


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: the full-disk test needs a small tmpfs")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or p.returncode}): the full-disk test needs "
                    "root and permission to mount")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def rows(state: Path) -> list[dict]:
    p = state / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def chief_cmd(state: Path, port: int, *extra: str, prefix: tuple[str, ...] = (str(ROOT / "chief.py"),)) -> list[str]:
    return [sys.executable, *prefix, "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state), *extra]


def numpy_worker(cwd: Path, address: str, token: str, name: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsock.testing.numpy_worker", "--chief", address, "--name", name, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env(), FEDSOCK_TOKEN=token), cwd=cwd)


def test_disk_full_mid_checkpoint_stops_the_chief_cleanly_and_its_restart_loses_no_round(tmp_path, small_tmpfs):
    state, port, rounds = small_tmpfs / "chief", free_port(), 8
    cmd = chief_cmd(state, port, "--rounds", str(rounds), "--min-workers", "2", "--keep-checkpoints", "20",
                    "--round-timeout", "30")
    log = tmp_path / "chief.log"
    chief = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env(), cwd=tmp_path)
    wait_for(lambda: (state / "chief.addr").exists(), 60, "the chief to listen")
    token = (state / "token").read_text().strip()
    # --gone-timeout 1: had the chief not said it stops and will be back, they would give up after 1 s
    workers = [numpy_worker(tmp_path, f"127.0.0.1:{port}", token, f"w{i}", "--shape", SHAPE, "--work", "0.3",
                            "--gone-timeout", "1", "--reconnect-timeout", "120") for i in range(2)]
    ckpts = state / "checkpoints"
    wait_for(lambda: len(list(ckpts.glob("round-*.fsck"))) >= 2, 60, "two checkpoints")
    st = os.statvfs(small_tmpfs)
    with open(small_tmpfs / "filler", "wb") as f:  # the disk fills up: the next checkpoint cannot be written
        f.write(bytes(st.f_bavail * st.f_frsize - LEFT_BYTES))
    assert chief.wait(60) == 2, log.read_text()[-3000:]
    out = log.read_text()
    assert "No space left on device" in out and "cannot write the checkpoint of round" in out, out[-3000:]
    assert "Traceback" not in out, out[-5000:]
    assert not [p for p in ckpts.iterdir() if "tmp" in p.name]  # the partial temp file was removed
    newest = sorted(ckpts.glob("round-*.fsck"))[-1]
    kept = checkpoint.load(newest)  # the previous checkpoint is intact
    assert kept.round >= 1 and f"resumes after round {kept.round}" in out, out[-2000:]
    time.sleep(2.5)  # longer than their --gone-timeout, with nothing listening at the chief's address
    for w in workers:
        assert w.poll() is None, w.communicate()[0][-3000:]  # told "shutdown": they keep reconnecting
    (small_tmpfs / "filler").unlink()  # space is freed; the chief starts again on the same state dir
    with open(log, "ab") as f:
        again = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=tmp_path)
    for i, w in enumerate(workers):
        code, wout = finish(w, timeout=120)
        assert code == 0, wout[-3000:]
        assert "the chief cannot write its state dir (No space left on device)" in wout, wout[-3000:]
        assert f"w{i}: done at round {rounds}" in wout, wout[-2000:]
    assert again.wait(60) == 0, log.read_text()[-3000:]
    got = rows(state)
    assert [r["round"] for r in got] == list(range(1, rounds + 1))  # contiguous, none repeated
    kept = [checkpoint.load(p) for p in sorted(ckpts.glob("round-*.fsck"))]
    assert [k.round for k in kept] == list(range(0, rounds + 1))  # round 0 is the adopted model
    for k in kept[1:]:  # each checkpoint carries its round's line: the one metrics.jsonl has (round 2: the redone)
        assert json.loads(k.meta["last_row"]) == got[k.round - 1] and k.meta["metrics_lines"] == k.round


def test_a_checkpoint_slower_than_a_round_delays_the_run_and_loses_nothing(tmp_path):
    state, port, rounds, delay = tmp_path / "chief", free_port(), 3, 0.8
    # every checkpoint takes two slow fsyncs (its file, then its directory): 1.6 s, longer than a round
    # and than the workers' idle timeout of 1.2 s, which the chief's keep-alive bytes cover
    cmd = chief_cmd(state, port, "--rounds", str(rounds), "--min-workers", "2", "--heartbeat-interval", "0.3",
                    prefix=("-m", "fedsock.testing.slowdisk", str(delay), "chief"))
    log = tmp_path / "chief.log"
    chief = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env(), cwd=tmp_path)
    wait_for(lambda: (state / "chief.addr").exists(), 60, "the chief to listen")
    token = (state / "token").read_text().strip()
    workers = [numpy_worker(tmp_path, f"127.0.0.1:{port}", token, f"w{i}", "--shape", "64,10", "--work", "0.05",
                            "--idle-timeout", "1.2", "--heartbeat-interval", "0.3") for i in range(2)]
    for i, w in enumerate(workers):
        code, out = finish(w, timeout=120)
        assert code == 0 and f"w{i}: done at round {rounds} after 0 reconnects" in out, out[-3000:]
    assert chief.wait(60) == 0, log.read_text()[-3000:]
    got = rows(state)
    assert [r["round"] for r in got] == list(range(1, rounds + 1))
    gaps = [b["time"] - a["time"] for a, b in zip(got, got[1:])]
    assert all(g >= 2 * delay * 0.9 for g in gaps), gaps  # each round waited for the previous checkpoint
    assert checkpoint.load(sorted((state / "checkpoints").glob("round-*.fsck"))[-1]).round == rounds
