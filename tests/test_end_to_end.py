"""Real chief and worker processes over TLS on 127.0.0.1."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from fedsock.data import load_shard
from fedsock.worker.config import default_name
from tests.conftest import finish, start_worker

pytestmark = pytest.mark.integration


def test_final_weights_are_the_weighted_average_of_the_last_round(tmp_path, chiefs, digits):
    chief = chiefs("--model", "fedsock.models:digits_mlp", "--eval-data", str(digits / "holdout"),
                   "--rounds", "3", "--min-workers", "2", "--sync-every", "7", "--batch-size", "16")
    assert stat.S_IMODE(os.stat(chief.state_dir / "token").st_mode) == 0o600
    out = chief.output()  # the join secret is never logged, nor shown inside a command line
    assert "python worker.py --chief" in out and "FEDSOCK_TOKEN" in out and chief.token not in out
    workers = [
        start_worker(tmp_path, f"w{i}", "--chief", chief.address, "--data", str(digits / f"worker-{i}"),
                     "--name", f"w{i}", "--save-updates", str(tmp_path / f"sent-{i}"), token=chief.token)
        for i in range(2)
    ]
    for w in workers:
        code, out = finish(w)
        assert code == 0, out
    assert chief.wait(60) == 0, chief.output()

    rows = [json.loads(line) for line in (chief.state_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["workers"] == 2 and r["examples"] > 0 and r["bytes_in"] > 0 and r["bytes_out"] > 0
        assert {"seconds", "loss", "accuracy"} <= r.keys()
    # what each worker sent in round 3, weighted by what it says it trained on
    sent = [np.load(tmp_path / f"sent-{i}" / "round-000003.npz") for i in range(2)]
    ns = np.array([int(s["num_examples"]) for s in sent], dtype=np.float64)
    assert rows[-1]["examples"] == ns.sum()
    final = np.load(chief.state_dir / "final_weights.npz")
    keys = sorted(final.files)
    assert len(keys) == 4
    for i, key in enumerate(keys):
        ref = sum(n * s[f"w{i:04d}"].astype(np.float64) for n, s in zip(ns, sent)) / ns.sum()
        np.testing.assert_allclose(final[key], ref, atol=1e-6, rtol=0)
    assert (chief.state_dir / "final.keras").exists()
    assert sorted(p.name for p in (chief.state_dir / "checkpoints").glob("*.fsck"))[-1] == "round-000003.fsck"


def test_keras_callback_and_custom_loop_against_a_real_chief(tmp_path, chiefs, digits):
    # FedProx: the chief's plan carries mu and both hooks report that they apply it
    chief = chiefs("--model", "fedsock.models:digits_mlp", "--rounds", "4", "--min-workers", "2",
                   "--sync-every", "10", "--strategy", "fedprox", "--mu", "0.05")
    procs = {
        "keras_fit": start_worker(tmp_path, "k", "--chief", chief.address, "--data", str(digits / "worker-0"),
                                  "--name", "keras-fit-example", token=chief.token, script="examples/keras_fit.py"),
        "custom_loop": start_worker(tmp_path, "c", "--chief", chief.address, "--data",
                                    str(digits / "worker-1"), token=chief.token,
                                    script="examples/custom_loop.py"),
    }
    outs = {}
    for name, p in procs.items():
        code, out = finish(p)
        outs[name] = out
        assert code == 0, out
        assert f"{name}: finished after round 4" in out, out
        assert f"{name}: FedProx with mu = 0.05" in out, out
    # fit's epochs are the run's (callback.epochs): 4 rounds x 10 steps take 2 passes over the shard
    assert 20 <= -(-len(load_shard(digits / "worker-0")[1]) // 32) < 40
    assert "Epoch 1/2" in outs["keras_fit"] and "Epoch 2/2" in outs["keras_fit"], outs["keras_fit"]
    assert "Epoch 3" not in outs["keras_fit"]
    assert chief.wait(60) == 0
    rows = (chief.state_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4 and all(json.loads(r)["workers"] == 2 for r in rows)
    log = chief.output()
    # --name is taken; without it a worker is <host>-<pid>
    assert "keras-fit-example" in log and default_name(pid=procs["custom_loop"].pid) in log, log
