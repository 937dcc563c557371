"""A minute of churn: the chief's descriptors, threads and state dir stay flat (bench/soak.py runs an hour)."""

from __future__ import annotations

import pytest

from fedsock.testing.soak import Thresholds, judge, run

pytestmark = pytest.mark.integration

KEEP = 3


def growth(verdict: dict, name: str) -> float:
    """What the fitted line over the judged samples gains from their first to their last."""
    return verdict[name]["slope_per_hour"] * verdict["judged_seconds"] / 3600


def test_a_minute_of_workers_leaving_and_rejoining_leaks_nothing(tmp_path):
    # 8 workers, each joining, syncing 2-6 rounds of a 0.4 MB model, leaving and rejoining: about a
    # hundred joins and leaves and 60 rounds, so a leak of one descriptor or thread per join, or of
    # one model copy per round (24 MB), would show many times over the bounds below.
    result = run(tmp_path, seconds=60, every=2, params=100_000, pace=0.3, keep_checkpoints=KEEP)
    assert result.clean, (result.chief_exit, result.workers, (tmp_path / "chief.log").read_text()[-3000:])
    samples = result.samples
    assert len(samples) >= 25 and samples[-1].rounds >= 30, samples[-1]
    assert result.workers["joins"] >= 40
    # the slopes of judge() per hour are too noisy over a minute; the growth over the minute is bounded
    verdict = judge(samples, Thresholds(), keep_checkpoints=KEEP)
    # Connections come and go (0-8 of them at any moment): the fitted line, not a sample, must stay flat.
    assert abs(growth(verdict, "fds")) <= 4, verdict["fds"]
    assert abs(growth(verdict, "threads")) <= 2, verdict["threads"]
    # The state dir: at most KEEP checkpoints (+1 while the next is written), nothing else grows.
    assert verdict["checkpoints"]["pass"], verdict["checkpoints"]
    judged = samples[len(samples) // 5:]
    assert max(s.state_bytes_other for s in judged) <= 1.05 * min(s.state_bytes_other for s in judged)
    assert judged[-1].metrics_bytes > judged[0].metrics_bytes  # metrics.jsonl is the one file that grows
    # Memory: a minute's slope is mostly the allocator settling (glibc arenas, the first TLS sessions
    # and numpy buffers of each size), so only a gross leak is asserted here; bench/soak.py judges an
    # hour's slope against a tight threshold.
    assert growth(verdict, "rss_mib") <= 12, verdict["rss_mib"]

