"""Running a chief for real: plain per-round lines, the live display in a terminal, status, TensorBoard, plot."""

from __future__ import annotations

import importlib
import json
import os
import pty
import re
import subprocess
import sys
import termios
import threading
import time

import numpy as np
import pytest

from fedsock.errors import AuthenticationError
from fedsock.status import query_status
from fedsock.worker.client import Client
from tests.conftest import ROOT, env, run_clients

pytestmark = pytest.mark.integration


def sync_all(clients: list[Client], weights: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """One round: every client syncs at once (each blocks until the round closes); client i
    reports 10 * (i + 1) examples."""
    out: list[list[np.ndarray]] = [[] for _ in clients]

    def go(i: int) -> None:
        out[i] = clients[i].sync(weights[i], num_examples=10 * (i + 1))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(out), "a sync did not return"
    return out


def test_plain_round_lines_and_status_of_a_running_chief(tmp_path, chiefs, capsys):
    chief = chiefs("--rounds", "2", "--min-workers", "2")
    clients = [Client(chief.address, token=chief.token, name=n) for n in ("alpha", "beta")]
    try:
        for c in clients:
            c.join([np.zeros((3, 2), np.float32)])
        from fedsock.chief import tokens

        reader = str(tokens.create(chief.state_dir, "ops", status=True))  # read-only: names and traffic
        counts = query_status(chief.address, chief.token)  # a join token: counts only
        assert (counts.workers, counts.connected, counts.known) == ((), 2, 2)
        before = query_status(chief.address, reader)
        assert (before.round, before.rounds, before.finished) == (0, 2, False)
        assert sorted((w.name, w.connected, w.rounds) for w in before.workers) == [
            ("alpha", True, 0), ("beta", True, 0)]

        sync_all(clients, [[np.ones((3, 2), np.float32)], [np.full((3, 2), 4.0, np.float32)]])
        counts = query_status(chief.address, chief.token)
        assert counts.round == 1 and counts.workers == () and "bytes_in" not in counts.metrics
        after = query_status(chief.address, reader)
        assert after.round == 1 and after.metrics["examples"] == 30 and after.metrics["workers"] == 2
        by_name = {w.name: w for w in after.workers}
        assert set(by_name) == {"alpha", "beta"}
        for w in by_name.values():
            assert w.connected and w.rounds == 1 and 0 <= w.last_seen < 30
            assert w.bytes_in > 0 and w.bytes_out > w.bytes_in / 2  # Welcome + Global went out
        assert after.metrics["bytes_in"] > 0

        from fedsock.cli import main

        assert main(["status", "--chief", chief.address, "--token", chief.token]) == 0
        text = capsys.readouterr().out
        assert "2 connected, 2 known" in text and "alpha" not in text and "token create --status" in text
        assert main(["status", "--chief", chief.address, "--token", reader]) == 0
        text = capsys.readouterr().out
        assert f"chief {chief.address}  round 1/2" in text and "2 connected" in text
        assert re.search(r"alpha\s+\d+\s+yes\s+[\d.]+ s ago\s+1\s", text), text
        assert main(["status", "--chief", chief.address, "--token", chief.token, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["round"] == 1

        wrong = "fs1." + chief.token.split(".")[1] + "." + "00" * 32
        with pytest.raises(AuthenticationError):
            query_status(chief.address, wrong)
        with pytest.raises(AuthenticationError, match="read-only status token"):  # it cannot join
            Client(chief.address, token=reader, name="ops", reconnect_timeout=0)

        sync_all(clients, [[np.ones((3, 2), np.float32)], [np.ones((3, 2), np.float32)]])
        assert all(c.finished for c in clients)
    finally:
        for c in clients:
            c.close()
    assert chief.wait(30) == 0, chief.output()
    out = chief.output()
    assert "status query" in out  # logged, and never counted as a worker
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if re.match(r"^round\s+workers\s+examples\s+accuracy", ln))
    rows = [ln for ln in lines[header + 1:] if re.match(r"^\s+\d+\s", ln)]
    assert len(rows) == 2, out
    for r, row in enumerate(rows, 1):
        assert re.match(rf"^\s+{r}\s+2\s+30\s+-\s+-\s+[\d.]+\s+[\d.]+\s+[\d.]+$", row), row
    assert "\x1b[" not in out  # no terminal codes when stdout is a file


def test_live_display_in_a_terminal(tmp_path):
    master, slave = pty.openpty()
    termios.tcsetwinsize(slave, (30, 120))
    state = tmp_path / "chief"
    # the pty's own size, as in a terminal: not COLUMNS/LINES inherited from a runner (pytest-xdist sets 80x24)
    terminal_env = {k: v for k, v in env().items() if k not in ("COLUMNS", "LINES")} | {"TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state),
         "--rounds", "2", "--min-workers", "2"],
        stdin=slave, stdout=slave, stderr=slave, env=terminal_env, cwd=tmp_path,
    )
    os.close(slave)
    screen = bytearray()

    def read() -> None:  # keep draining, or the chief would block writing to the terminal
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        addr = state / "chief.addr"
        while not (addr.exists() and addr.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, screen.decode(errors="replace")
            time.sleep(0.05)
        address, token = addr.read_text().strip(), (state / "token").read_text().strip()
        # a first look while it waits for workers
        deadline = time.monotonic() + 15
        while "waiting for workers" not in bytes(screen).decode(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = bytes(screen).decode(errors="replace")
        run_clients(address, token, {"a": 10, "b": 20}, work=0.6)  # rounds outlast a few redraws (4 per s)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
        os.close(master)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", bytes(screen).decode(errors="replace"))
    assert "\x1b[" in bytes(screen).decode(errors="replace")  # drawn with terminal codes
    assert re.search(r"waiting for workers: 0 of 2 connected", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", waiting))
    assert re.search(r"round 2/2\s+finished", plain), plain[-2000:]
    assert "connected 2 · submitted" in plain, plain[-3000:]
    assert re.search(r"\d/2 updates", plain)
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "\n", bytes(screen).decode(errors="replace"))
    assert re.search(r"^\s+2\s+2\s+30\s+-\s+-\s", lines, flags=re.M)  # the round's line, above the panel
    # one log format from start to end: the lines before the panel and those scrolling above it
    assert re.search(r"^\d\d:\d\d:\d\d fedsock\.chief INFO fedsock chief listening", lines, flags=re.M)
    assert re.search(r"^\d\d:\d\d:\d\d fedsock\.chief INFO .* joined from", lines, flags=re.M), lines[-3000:]
    assert not re.search(r"\[\d\d/\d\d/\d\d \d\d:\d\d:\d\d\]", lines), lines[-3000:]


def test_tensorboard_events_and_plot(tmp_path, chiefs, digits, capsys):
    # import TensorFlow (to read the events back) while the chief starts: it takes seconds
    tf_import = threading.Thread(target=importlib.import_module, args=("tensorflow",))
    tf_import.start()
    chief = chiefs("--model", "fedsock.models:digits_mlp", "--eval-data", str(digits / "holdout"),
                   "--rounds", "2", "--min-workers", "2")
    clients = [Client(chief.address, token=chief.token, name=n) for n in ("tb-a", "tb-b")]
    try:
        held = [c.join() for c in clients]
        rng = np.random.default_rng(0)
        for _ in range(2):
            held = sync_all(clients, [[a + rng.normal(0, 0.01, a.shape).astype(np.float32) for a in w]
                                      for w in held])
    finally:
        for c in clients:
            c.close()
    assert chief.wait(60) == 0, chief.output()
    rows = [json.loads(line) for line in (chief.state_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2

    tf_import.join()
    import tensorflow as tf

    files = sorted((chief.state_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    scalars: dict[str, dict[int, float]] = {}
    for f in files:
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                value = v.simple_value if v.HasField("simple_value") else float(tf.make_ndarray(v.tensor))
                scalars.setdefault(v.tag, {})[event.step] = value
    for tag in ("holdout/loss", "holdout/accuracy", "round/seconds", "round/participants", "round/examples",
                "bytes/in", "bytes/out"):
        assert set(scalars.get(tag, {})) == {1, 2}, (tag, sorted(scalars))
    for row in rows:
        step = row["round"]
        assert scalars["holdout/accuracy"][step] == pytest.approx(row["accuracy"], rel=1e-6)
        assert scalars["holdout/loss"][step] == pytest.approx(row["loss"], rel=1e-6)
        assert scalars["round/participants"][step] == 2 and scalars["round/examples"][step] == 30
        assert scalars["bytes/in"][step] == row["bytes_in"]

    png = tmp_path / "m.png"
    from fedsock.cli import main

    assert main(["plot", str(chief.state_dir), "--out", str(png)]) == 0
    assert capsys.readouterr().out.strip() == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
