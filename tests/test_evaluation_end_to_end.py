"""Federated evaluation with real processes: numpy workers and Keras workers, a chief without holdout data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.conftest import finish, flat_fedavg, start_worker

pytestmark = pytest.mark.integration

NUMPY_WORKER = "fedsock/testing/numpy_worker.py"


def _rows(chief) -> list[dict]:
    return [json.loads(line) for line in (chief.state_dir / "metrics.jsonl").read_text().splitlines()]


def _check_federated(row: dict) -> None:
    """The row's federated metrics and fairness figures, recomputed with numpy from its per-worker values."""
    per = row["per_worker"]
    names = sorted(per)
    acc = np.array([per[n]["val_accuracy"] for n in names])
    loss = np.array([per[n]["val_loss"] for n in names])
    nval = np.array([per[n]["val_examples"] for n in names])
    assert row["fed_val_accuracy"] == pytest.approx(np.average(acc, weights=nval), rel=1e-12)
    assert row["fed_val_loss"] == pytest.approx(np.average(loss, weights=nval), rel=1e-12)
    assert row["fed_val_examples"] == nval.sum()
    assert (row["val_accuracy_worst"], row["val_accuracy_best"]) == (acc.min(), acc.max())
    assert row["val_accuracy_median"] == pytest.approx(np.median(acc), rel=1e-12)
    assert row["val_accuracy_spread"] == pytest.approx(acc.max() - acc.min(), rel=1e-12)
    assert row["worst_worker"] == names[int(np.argmin(acc))]


def test_numpy_workers_federated_metrics_are_the_weighted_means_of_each_model_s_per_worker_values(chiefs, tmp_path):
    from fedsock.testing.numpy_worker import evaluate_for

    rounds, shape = 4, (4, 3)
    val = {"eval-a": 5, "eval-b": 40, "eval-c": 200}
    chief = chiefs("--rounds", str(rounds), "--min-workers", "3", "--round-timeout", "30", "--progress", "plain")
    workers = [start_worker(tmp_path, n, "--chief", chief.address, "--name", n, "--shape", "4,3",
                            "--val-examples", str(k), token=chief.token, script=NUMPY_WORKER)
               for n, k in val.items()]
    for w in workers:
        code, out = finish(w, 120)
        assert code == 0, out
    assert chief.wait(60) == 0, chief.output()
    rows = _rows(chief)
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    for row in rows:
        assert sorted(row["per_worker"]) == sorted(val)
        _check_federated(row)
        # each worker's val_* are of the model the round started from (round - 1), its train_* its own
        model = [flat_fedavg(dict.fromkeys(val, 10), row["fed_model_round"], shape).astype(np.float32)]
        assert row["fed_model_round"] == row["round"] - 1
        for name, k in val.items():
            expect = evaluate_for(name, model, k)
            got = row["per_worker"][name]
            assert got["val_accuracy"] == pytest.approx(expect["accuracy"], rel=1e-9)
            assert got["val_loss"] == pytest.approx(expect["loss"], rel=1e-9)
            assert got["val_examples"] == k and got["train_loss"] == row["round"] - 1
    log = chief.output()
    assert "fed acc" in log and "fed loss" in log and "worst" in log  # no --eval-data: the table's headline


def test_keras_workers_report_their_validation_split_and_the_chief_without_holdout_data_federates_it(
        chiefs, tmp_path, digits):
    from fedsock.data import load_shard

    chief = chiefs("--rounds", "3", "--min-workers", "2", "--round-timeout", "60", "--model",
                   "fedsock.models:digits_mlp", "--sync-every", "5", "--batch-size", "32", "--progress", "plain")
    names = {"kw-0": "worker-0", "kw-1": "worker-1"}
    workers = [start_worker(tmp_path, n, "--chief", chief.address, "--name", n, "--data", str(digits / d),
                            "--val-split", "0.2", "--seed", "1", "--personalize-epochs", "1",
                            token=chief.token) for n, d in names.items()]
    outs = []
    for w in workers:
        code, out = finish(w, 300)
        assert code == 0, out
        outs.append(out)
    assert chief.wait(60) == 0, chief.output()
    rows = _rows(chief)
    assert len(rows) == 3
    for row in rows:
        assert "accuracy" not in row  # no holdout: the federated metrics are all the chief has
        _check_federated(row)
        for name, shard in names.items():
            n = len(load_shard(digits / shard)[1])
            got = row["per_worker"][name]
            assert got["val_examples"] == round(0.2 * n)
            assert 0 <= got["val_accuracy"] <= 1 and "train_loss" in got and "train_accuracy" in got
    assert rows[-1]["fed_val_accuracy"] > rows[0]["fed_val_accuracy"]  # training helps on the workers' data
    for out in outs:
        assert "final model on the local validation split: val_accuracy=" in out, out
        assert re.search(r"after 1 epochs of local fine-tuning .*personalized_val_accuracy=0\.\d{4}", out), out
    # ... and the chief has every worker's: final_evaluation.json holds what each logged
    summary = json.loads((chief.state_dir / "final_evaluation.json").read_text())
    assert sorted(summary["workers"]) == sorted(names) and summary["missing"] == [] and summary["round"] == 3
    for name, out in zip(names, outs):
        n, final, personal = re.search(r"final evaluation: (\d+) validation examples, final accuracy (0\.\d{4}), "
                                       r"personalized accuracy (0\.\d{4})", out).groups()
        got = summary["workers"][name]
        assert got["examples"] == got["personalized_examples"] == int(n) == rows[-1]["per_worker"][name]["val_examples"]
        assert (f"{got['final']['accuracy']:.4f}", f"{got['personalized']['accuracy']:.4f}") == (final, personal)
    assert "final evaluation of the model of round 3 on the workers' validation splits:" in chief.output()


def test_tensorboard_writes_each_worker_s_validation_in_a_run_of_its_own_under_the_federated_tag(tmp_path):
    import tensorflow as tf

    from fedsock.chief.callbacks import RoundRecord
    from fedsock.chief.evaluation import WorkerEval
    from fedsock.chief.tensorboard import TensorBoardWriter

    writer = TensorBoardWriter(tmp_path / "tb")
    for r in (1, 2):
        per = {"w-a": WorkerEval({"val_accuracy": 0.1 * r, "val_examples": 10}, 5),
               "w-b": WorkerEval({"val_accuracy": 0.3 * r, "val_examples": 30}, 5)}
        writer.write(RoundRecord(round=r, workers=(1, 2), names=("w-a", "w-b"), examples=10, seconds=1.0,
                                 bytes_in=0, bytes_out=0, time=0.0, worker_metrics=per).row())
    writer.close()

    def scalars(run) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for f in sorted(run.glob("events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(str(f)):
                for v in event.summary.value:
                    out.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
        return out

    main, a, b = scalars(tmp_path / "tb"), scalars(tmp_path / "tb/workers/w-a"), scalars(tmp_path / "tb/workers/w-b")
    # steps are the rounds of the models evaluated (0, 1); the federated value overlays the workers'
    assert main["validation/accuracy"] == pytest.approx({0: 0.25, 1: 0.5})
    assert a["validation/accuracy"] == pytest.approx({0: 0.1, 1: 0.2})
    assert b["validation/accuracy"] == pytest.approx({0: 0.3, 1: 0.6})
    assert main["fairness/accuracy_worst"] == pytest.approx({1: 0.1, 2: 0.2})
