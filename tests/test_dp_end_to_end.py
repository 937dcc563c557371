"""Differential privacy with real processes on 127.0.0.1: epsilon per round, clipping, refused updates."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

import fedsock
from fedsock.aggregation.dp import clip_update
from fedsock.errors import PeerError
from fedsock.testing.chaos import free_port
from fedsock.testing.numpy_worker import step_for
from tests.conftest import ROOT, env, finish
from tests.test_failures import metrics, numpy_worker, wait_for

pytestmark = pytest.mark.integration


def independent_epsilon(rounds: int, z: float, q: float, delta: float) -> float:
    """The accountant's epsilon, computed independently with dp_accounting itself."""
    import dp_accounting
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return float(accountant.get_epsilon(delta))


def test_metrics_report_the_epsilon_of_every_round(tmp_path, chiefs):
    chief = chiefs("--rounds", "3", "--min-workers", "2", "--fraction", "0.5", "--round-timeout", "30",
                   "--dp-clip", "0.5", "--dp-noise", "0.8", "--dp-delta", "1e-6", "--progress", "plain")
    workers = {n: numpy_worker(tmp_path, chief, n, "--work", "0.1") for n in ("w0", "w1", "w2")}
    for name, p in workers.items():
        code, out = finish(p, timeout=120)
        assert code == 0, (name, out)
    assert chief.wait(30) == 0, chief.output()
    rows = metrics(chief)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert (r["dp_clip"], r["dp_noise"], r["dp_delta"]) == (0.5, 0.8, 1e-6)
        assert r["epsilon"] == pytest.approx(independent_epsilon(r["round"], 0.8, 0.5, 1e-6), rel=1e-9)
    assert rows[0]["epsilon"] < rows[1]["epsilon"] < rows[2]["epsilon"]
    log = chief.output()
    assert "differential privacy: updates clipped to L2 norm 0.5" in log
    assert f"round 3: privacy budget spent: epsilon {rows[2]['epsilon']:.4g} at delta 1e-06" in log
    table = [line.split() for line in log.split(" epsilon\n", 1)[1].splitlines()]
    assert [t[-1] for t in table if t and t[0] == "3"] == [f"{rows[2]['epsilon']:.3g}"]  # the per-round table


def test_updates_are_clipped_and_an_unclipped_one_is_refused(tmp_path, chiefs):
    shape = (64, 10)  # numpy_worker's default: its steps have norm ~2.5, above the clip norm
    chief = chiefs("--rounds", "2", "--min-workers", "1", "--round-timeout", "30", "--dp-clip", "1.0")
    with fedsock.Client(chief.address, token=chief.token, name="cheat") as cheat:
        assert (cheat.plan.dp_clip, cheat.plan.dp_noise) == (1.0, 0.0)
        w = cheat.join([np.zeros(shape, np.float32)])
        honest = numpy_worker(tmp_path, chief, "honest", "--work", "1.0")
        wait_for(lambda: "(honest) joined" in chief.output(), 30, "the honest worker to join")
        cheat.plan = replace(cheat.plan, dp_clip=0.0)  # a worker that does not clip
        with pytest.raises(PeerError) as info:
            cheat.sync([w[0] + 1.0], 10)  # delta norm sqrt(640)
    assert info.value.code == "invalid_weights"
    assert "L2 norm 25.2982, above the clip norm 1 (--dp-clip)" in info.value.text
    code, out = finish(honest, timeout=120)
    assert code == 0, out
    assert chief.wait(30) == 0, chief.output()
    rows = metrics(chief)
    assert [r["participants"] for r in rows] == [["honest"], ["honest"]]
    assert all(r["epsilon"] is None for r in rows)  # clipping without noise: no guarantee
    # no noise: the global model moved by exactly the clipped step each round
    g = np.zeros(shape, np.float32)
    for r in (1, 2):
        clipped, norm = clip_update([g + step_for("honest", r, [shape])[0]], [g], 1.0)
        assert norm > 1.0
        g = clipped[0]
    final = np.load(chief.state_dir / "final_weights.npz")
    np.testing.assert_array_equal(final[final.files[0]], g)
    assert "above the clip norm" in chief.output()


def test_epsilon_survives_a_chief_restart(tmp_path):
    port = free_port()
    state = tmp_path / "chief"
    cmd = [sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", str(port), "--state-dir",
           str(state), "--rounds", "5", "--min-workers", "2", "--round-timeout", "30", "--dp-clip", "1",
           "--dp-noise", "1.5"]
    log = open(tmp_path / "chief.log", "ab")
    chief = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env())
    wait_for((state / "chief.addr").exists, 90, "the chief to listen")
    token = (state / "token").read_text().strip()
    e = env()
    e["FEDSOCK_TOKEN"] = token
    workers = [subprocess.Popen([sys.executable, "-m", "fedsock.testing.numpy_worker", "--chief",
                                 f"127.0.0.1:{port}", "--name", f"w{i}", "--work", "0.3"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e, cwd=tmp_path)
               for i in range(2)]
    rows_path = state / "metrics.jsonl"
    wait_for(lambda: rows_path.exists() and len(rows_path.read_text().splitlines()) >= 2, 90, "round 2")
    chief.send_signal(signal.SIGKILL)
    chief.wait()
    (state / "chief.addr").unlink()
    chief = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env())
    try:
        for w in workers:
            code, out = finish(w, timeout=120)
            assert code == 0, out
        assert chief.wait(60) == 0, (tmp_path / "chief.log").read_text()
    finally:
        if chief.poll() is None:
            chief.kill()
    rows = [json.loads(x) for x in rows_path.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        assert r["epsilon"] == pytest.approx(independent_epsilon(r["round"], 1.5, 1.0, 1e-5), rel=1e-9)
