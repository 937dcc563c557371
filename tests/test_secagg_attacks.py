"""Secure aggregation against a worker that misbehaves on purpose (real chief and worker processes).

Each scenario: honest numpy workers plus one ``--misbehave`` worker. The honest
workers finish every round, each published round is plain FedAvg of the
honest workers' updates within the fixed-point bound, and the chief exits 0.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import finish
from tests.test_secure_agg import expected, numpy_worker, rows_of, tolerance

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode, honest, extra, log", [
    # refused on arrival (a trial agreement), before any roster carries it
    ("low-order-key", 3, [], "the mask key is refused"),
    # the honest workers cannot open its shares: they leave it out, name it, and the attempt starts over
    ("random-shares", 3, [], "could not use the key or shares of worker"),
    # 5 workers, threshold 3: 5 shares of each secret, so the one that disagrees is singled out
    ("bad-reveal", 4, [], "revealed shares of worker(s)"),
    # its masked update's header arrives in time, its chunks after the masking phase closed
    ("late-masked:5", 3, ["--secagg-timeout", "2.5"], "masked update came after the masking phase closed"),
], ids=["low-order-key", "random-shares", "bad-reveal", "late-masked"])
def test_a_misbehaving_worker_is_a_dropout_and_the_honest_ones_finish(chiefs, mode, honest, extra, log):
    rounds = 3
    chief = chiefs("--rounds", str(rounds), "--min-workers", str(honest), "--secure-agg", *extra)
    names = [f"w{i}" for i in range(1, honest + 1)]
    examples = {n: 10 * i for i, n in enumerate(names, start=1)}
    procs = {n: numpy_worker(chief, n, "--examples", str(examples[n])) for n in names}
    mallory = numpy_worker(chief, "mallory", "--examples", "50", "--misbehave", mode)
    try:
        for p in procs.values():
            code, out = finish(p, 240)
            assert code == 0, out
            assert "leaving worker" not in out or mode == "random-shares"
        assert chief.wait(60) == 0, chief.output()
    finally:
        if mallory.poll() is None:
            mallory.kill()
        mallory.communicate()
    output = chief.output()
    assert log in output, output
    assert "Traceback" not in output, output
    rows = rows_of(chief.state_dir)
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert all(r["workers"] == honest and r["examples"] == sum(examples.values()) for r in rows), rows
    if mode.startswith("late-masked"):  # unmasked out as a dropout in the first attempt, never folded
        assert all(r["secure_agg"]["attempt"] == 1 and r["secure_agg"]["dropped"] == 1 for r in rows), rows
    elif mode != "low-order-key":  # every round: one attempt lost to it, the next without it
        assert all(r["secure_agg"]["attempt"] == 2 for r in rows), rows
    ref = expected(examples, [names] * rounds)
    final = np.load(chief.state_dir / "final_weights.npz")
    np.testing.assert_allclose(final[final.files[0]], ref, atol=tolerance(ref, rounds), rtol=0)
