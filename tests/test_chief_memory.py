"""What the chief keeps from round to round stays bounded (the leaks bench/soak.py looks for)."""

from __future__ import annotations

import tracemalloc

import pytest

from fedsock.aggregation import fedavg
from fedsock.chief.callbacks import RoundRecord
from fedsock.chief.monitor import Monitor
from fedsock.chief.rounds import RoundController


def _record(r: int, seconds: float) -> RoundRecord:
    return RoundRecord(round=r, workers=(1, 2), names=("w1", "w2"), examples=2, seconds=seconds, bytes_in=10,
                       bytes_out=20, time=0.0)


def test_the_monitor_keeps_no_history_of_rounds():
    """Regression: the monitor appended every round's duration to a list for the live display's
    estimate, 32 bytes a round for as long as the chief ran (about 0.13 MiB an hour at 4000 rounds)."""
    m = Monitor(min_workers=1)
    for r in range(1, 2001):
        m.on_round_end(_record(r, 0.5 + r % 7))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for r in range(2001, 12001):
            m.on_round_end(_record(r, 0.5 + r % 7))
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename")
                    if s.size_diff > 0 and "monitor.py" in str(s.traceback))
    finally:
        tracemalloc.stop()
    assert grown < 4096, grown  # 10,000 more rounds
    ctrl = RoundController(rounds=20000, min_workers=1, round_timeout=1.0, transform=fedavg())
    snap = m.snapshot(ctrl, 2)
    mean = sum(0.5 + r % 7 for r in range(1, 12001)) / 12000
    assert snap.last_seconds == 0.5 + 12000 % 7
    assert snap.eta_seconds == pytest.approx(mean * (20000 - ctrl.round), rel=1e-6)
