"""ChiefCallback: a user's callback sees the run, its workers and each round's typed record."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import fedsock
from fedsock.chief import Chief
from fedsock.chief.callbacks import CallbackList, ChiefCallback, RoundRecord, RunInfo, WorkerJoined, WorkerLeft


def test_a_round_record_is_its_metrics_line():
    rec = RoundRecord(round=3, workers=(1, 2), names=("a", "b"), examples=30, seconds=1.23456, bytes_in=10,
                      bytes_out=20, time=5.0, metrics={"loss": 0.5}, sampled=2, fraction=0.5,
                      extra={"secure_agg": {"attempt": 1}}, privacy={"epsilon": 2.0})
    assert rec.row() == {"round": 3, "workers": 2, "examples": 30, "seconds": 1.2346, "bytes_in": 10,
                         "bytes_out": 20, "time": 5.0, "participants": ["a", "b"], "loss": 0.5,
                         "secure_agg": {"attempt": 1}, "fraction": 0.5, "sampled": 2, "epsilon": 2.0}
    with pytest.raises(AttributeError):
        rec.round = 4  # type: ignore[misc]


def test_run_end_reaches_every_callback_even_if_one_fails():
    ended: list[str] = []

    class Fails(ChiefCallback):
        def on_run_end(self, rounds: int) -> None:
            ended.append("fails")
            raise OSError("disk full")

    class Notes(ChiefCallback):
        def on_run_end(self, rounds: int) -> None:
            ended.append(f"notes {rounds}")

    with pytest.raises(OSError, match="disk full"):
        CallbackList([Fails(), Notes()]).on_run_end(2)
    assert ended == ["fails", "notes 2"]


class Recorder(ChiefCallback):
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_run_begin(self, run: RunInfo) -> None:
        self.events.append(run)

    def on_worker_joined(self, event: WorkerJoined) -> None:
        self.events.append(event)

    def on_worker_left(self, event: WorkerLeft) -> None:
        self.events.append(event)

    def on_round_end(self, record: RoundRecord) -> None:
        self.events.append(record)

    def on_run_end(self, rounds: int) -> None:
        self.events.append(("end", rounds))


def test_user_callbacks_see_the_run(tmp_path):
    rec = Recorder()
    chief = Chief(state_dir=tmp_path, host="127.0.0.1", port=0, rounds=2, min_workers=1, done_grace=0.5,
                  progress="plain", callbacks=[rec])
    t = threading.Thread(target=chief.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "chief.addr").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    addr = (tmp_path / "chief.addr").read_text().strip()
    with fedsock.Client(addr, token=(tmp_path / "token").read_text().strip(), name="cb") as c:
        w = c.join([np.zeros(3, np.float32)])
        while not c.finished:
            w = c.sync([w[0] + 1], num_examples=7)
    t.join(30)
    assert not t.is_alive()
    kinds = [type(e).__name__ for e in rec.events]
    assert kinds[0] == "RunInfo" and kinds[1] == "WorkerJoined" and rec.events[-1] == ("end", 2)
    records = [e for e in rec.events if isinstance(e, RoundRecord)]
    assert [r.round for r in records] == [1, 2] and records[-1].final and not records[0].final
    assert records[0].names == ("cb",) and records[0].examples == 7 and records[0].snapshot is not None
    left = [e for e in rec.events if isinstance(e, WorkerLeft)]
    assert left and left[0].name == "cb" and left[0].bytes_in > 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the built-in callbacks ran too


def test_the_monitor_keeps_totals_of_a_bounded_number_of_workers():
    from fedsock.chief.monitor import Monitor

    m = Monitor(min_workers=1, max_workers=4)
    m.on_worker_joined(WorkerJoined(1, "stays", "h:1"))
    for w in range(2, 20):
        m.on_worker_joined(WorkerJoined(w, f"w{w}", "h:1"))
        m.on_worker_left(WorkerLeft(w, f"w{w}", 10, 20, last_received=float(w)))
    assert len(m.workers) <= 4 and 1 in m.workers and 19 in m.workers
    assert (m.workers[19].bytes_in, m.workers[19].bytes_out) == (10, 20)
