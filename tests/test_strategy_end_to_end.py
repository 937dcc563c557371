"""A robust strategy end to end: chief.py --strategy median with three worker.py processes over TLS."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import finish, start_worker

pytestmark = pytest.mark.integration


def test_median_chief_publishes_the_coordinate_median_of_the_updates(tmp_path, chiefs):
    from fedsock.data import Partition, split_digits

    shards = tmp_path / "shards"
    split_digits(shards, 3, Partition.parse("iid"), seed=3, holdout=0.0)
    # Bring-your-own-model: the chief never imports TensorFlow (the median needs none), which
    # keeps this test fast; the first worker's weights become round 0.
    chief = chiefs("--rounds", "2", "--min-workers", "3", "--sync-every", "4", "--batch-size", "16",
                   "--strategy", "median")
    workers = [
        start_worker(tmp_path, f"w{i}", "--chief", chief.address, "--data", str(shards / f"worker-{i}"),
                     "--model", "fedsock.models:digits_mlp", "--name", f"w{i}",
                     "--save-updates", str(tmp_path / f"sent-{i}"), token=chief.token)
        for i in range(3)
    ]
    for w in workers:
        code, out = finish(w)
        assert code == 0, out
    assert chief.wait(60) == 0, chief.output()

    rows = [json.loads(line) for line in (chief.state_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["workers"]) for r in rows] == [(1, 3), (2, 3)]
    sent = [np.load(tmp_path / f"sent-{i}" / "round-000002.npz") for i in range(3)]
    final = np.load(chief.state_dir / "final_weights.npz")
    for i, key in enumerate(sorted(final.files)):
        stack = np.stack([s[f"w{i:04d}"].astype(np.float64) for s in sent])
        np.testing.assert_allclose(final[key], np.median(stack, axis=0), atol=1e-6, rtol=0)
        # a weighted mean would differ: the median really was used
        ns = np.array([int(s["num_examples"]) for s in sent], dtype=np.float64)
        mean = np.tensordot(ns / ns.sum(), stack, axes=1)
        if i == 0:
            assert np.abs(final[key] - mean).max() > 1e-4
