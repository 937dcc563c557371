"""Evaluation the chief asks for, with real processes: held workers during the rounds, every worker at the end."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.conftest import finish, flat_fedavg, start_worker
from tests.test_evaluation_end_to_end import NUMPY_WORKER, _check_federated, _rows

pytestmark = pytest.mark.integration
SHAPE = (4, 3)


def test_held_workers_evaluate_the_round_s_starting_model_and_count_in_its_federated_metrics(chiefs, tmp_path):
    from fedsock.testing.numpy_worker import evaluate_for, step_for

    rounds = 4
    val = {"held-a": 7, "held-b": 30, "held-c": 64, "held-d": 150}
    # 2 of 4 sampled per round; the sampled ones "train" 0.6 s, the held ones answer at once
    chief = chiefs("--rounds", str(rounds), "--min-workers", "2", "--fraction", "0.5", "--round-timeout", "30",
                   "--progress", "plain", "--final-eval-timeout", "5")
    workers = [start_worker(tmp_path, n, "--chief", chief.address, "--name", n, "--shape", "4,3", "--work", "0.6",
                            "--val-examples", str(k), token=chief.token, script=NUMPY_WORKER)
               for n, k in val.items()]
    for w in workers:
        code, out = finish(w, 120)
        assert code == 0, out
    assert chief.wait(60) == 0, chief.output()
    rows = _rows(chief)
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    model = np.zeros(SHAPE, np.float32)  # bring your own model: the first proposal, zeros
    for row in rows:
        trained, held = set(row["participants"]), set(row.get("held_workers", ()))
        assert len(trained) == 2 and not trained & held and row.get("held_asked", 0) >= len(held)
        if row["round"] > 1:  # round 1 samples the first two to join; the others are held only once they send
            assert held == set(val) - trained, row
        assert set(row["per_worker"]) == trained | held
        _check_federated(row)  # the federated values are numpy's weighted means over trained and held alike
        for name, got in row["per_worker"].items():  # all of the model the round started from
            expect = evaluate_for(name, [model], val[name])
            assert got["val_accuracy"] == pytest.approx(expect["accuracy"], rel=1e-9), (row["round"], name)
            assert got["val_loss"] == pytest.approx(expect["loss"], rel=1e-9) and got["val_examples"] == val[name]
            assert ("train_loss" in got) == (name in trained)  # a held worker sends validation metrics only
        model = (sum((model + step_for(n, row["round"], [SHAPE])[0]).astype(np.float64) for n in trained)
                 / len(trained)).astype(np.float32)
    assert sum(len(r.get("held_workers", ())) for r in rows) >= 2 * (rounds - 1)
    assert "could not send EvalRequest" not in chief.output()


def test_every_worker_s_final_evaluation_reaches_final_evaluation_json_and_a_silent_one_does_not_hang_the_chief(
        chiefs, tmp_path):
    from fedsock.testing.numpy_worker import evaluate_for, step_for

    rounds, bound = 2, 3.0
    val = {"fin-a": 12, "fin-b": 50, "fin-c": 9}
    chief = chiefs("--rounds", str(rounds), "--min-workers", "3", "--round-timeout", "30", "--progress", "plain",
                   "--final-eval-timeout", str(bound), "--done-grace", "0.5")
    args = {"fin-a": ["--personalize"], "fin-b": [], "fin-c": ["--personalize", "--report-after", "60"]}
    workers = {n: start_worker(tmp_path, n, "--chief", chief.address, "--name", n, "--shape", "4,3",
                               "--val-examples", str(k), *args[n], token=chief.token, script=NUMPY_WORKER)
               for n, k in val.items()}
    for n in ("fin-a", "fin-b"):
        code, out = finish(workers[n], 120)
        assert code == 0 and "final report sent" in out, out
    reported = time.monotonic()
    assert chief.wait(bound + 15) == 0, chief.output()
    waited = time.monotonic() - reported
    silent = workers["fin-c"]
    assert silent.poll() is None  # still connected and heartbeating: the chief did not wait for it to go
    silent.kill()
    silent.communicate()
    assert waited < bound + 10, waited

    summary = json.loads((chief.state_dir / "final_evaluation.json").read_text())
    final = flat_fedavg(dict.fromkeys(val, 10), rounds, SHAPE).astype(np.float32)
    expect = {n: evaluate_for(n, [final], val[n]) for n in ("fin-a", "fin-b")}
    tuned = evaluate_for("fin-a", [final + step_for("fin-a", rounds + 1, [SHAPE])[0]], val["fin-a"])
    assert summary["round"] == rounds and summary["secure_agg"] is False and summary["missing"] == ["fin-c"]
    assert sorted(summary["workers"]) == ["fin-a", "fin-b"]
    for n, e in expect.items():
        got = summary["workers"][n]
        assert got["examples"] == val[n]
        assert got["final"] == pytest.approx({"accuracy": e["accuracy"], "loss": e["loss"]}, rel=1e-9)
    a = summary["workers"]["fin-a"]
    assert a["personalized"] == pytest.approx({"accuracy": tuned["accuracy"], "loss": tuned["loss"]}, rel=1e-9)
    assert a["personalized_examples"] == val["fin-a"] and "personalized" not in summary["workers"]["fin-b"]
    fed = summary["federated"]
    weights = np.array([val["fin-a"], val["fin-b"]], float)
    for m in ("accuracy", "loss"):
        values = np.array([expect["fin-a"][m], expect["fin-b"][m]])
        assert fed["final"][m] == pytest.approx(np.average(values, weights=weights), rel=1e-12)
        assert fed["personalized"][m] == pytest.approx(tuned[m], rel=1e-12)  # only fin-a fine-tuned
    assert (fed["workers"], fed["examples"], fed["personalized_workers"]) == (2, 62, 1)

    log = chief.output()
    assert "final evaluation of the model of round 2 on the workers' validation splits:" in log
    for n, acc, personal in (("fin-a", expect["fin-a"]["accuracy"], f"{tuned['accuracy']:.4f}"),
                             ("fin-b", expect["fin-b"]["accuracy"], "-"),
                             ("federated", fed["final"]["accuracy"], f"{fed['personalized']['accuracy']:.4f}")):
        n_ex = {"fin-a": 12, "fin-b": 50, "federated": 62}[n]
        assert any(line.split() == [n, str(n_ex), f"{acc:.4f}", personal] for line in log.splitlines()), (n, log)
    assert f"no report within {bound:g} s from: fin-c" in log
