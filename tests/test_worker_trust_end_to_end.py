"""Real chief and worker processes: the worker trains its own --model, and refuses a plan its policy forbids."""

from __future__ import annotations

import pytest

from tests.conftest import finish, start_worker

pytestmark = pytest.mark.integration


def save_model(path, hidden: int, names: tuple[str, str]) -> str:
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(hidden, activation="tanh", name=names[0]),
                              keras.layers.Dense(10, activation="softmax", name=names[1])])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.save(path)
    return str(path)


def test_worker_trains_its_own_model_and_refuses_a_mismatching_one(tmp_path, chiefs, digits):
    chief = chiefs("--model", "fedsock.models:digits_mlp", "--rounds", "2", "--min-workers", "1",
                   "--sync-every", "5", "--batch-size", "16")
    own = save_model(tmp_path / "own.keras", 64, ("mine_hidden", "mine_out"))
    other = save_model(tmp_path / "other.keras", 32, ("small_hidden", "small_out"))
    good = start_worker(tmp_path, "good", "--chief", chief.address, "--data", str(digits / "worker-0"),
                        "--name", "good", "--model", own, token=chief.token)
    bad = start_worker(tmp_path, "bad", "--chief", chief.address, "--data", str(digits / "worker-1"),
                       "--name", "bad", "--model", other, token=chief.token)
    code, out = finish(bad)
    assert code == 2, out
    assert (f"--model {other} does not match the chief's model (tensor 0 does not match the model: expected "
            in out), out
    assert "leave out --model to use the chief's" in out and "Traceback" not in out, out
    code, out = finish(good)
    assert code == 0, out
    assert (f"training this worker's own model {own} (mine_hidden, mine_out); the chief's config is not built"
            in out), out
    assert "built the chief's model" not in out, out
    assert ("chief's plan: secure aggregation off, differential privacy off, batch 16, sync every 5 steps, "
            "2 rounds; this worker requires nothing" in out), out
    assert chief.wait(60) == 0, chief.output()
    assert "worker bad cannot train: --model" in chief.output(), chief.output()


def test_worker_refuses_a_plan_its_policy_forbids_and_the_chief_logs_why(tmp_path, chiefs, digits):
    chief = chiefs("--rounds", "1", "--min-workers", "1", "--sync-every", "1", "--batch-size", "1")
    worker = start_worker(tmp_path, "careful", "--chief", chief.address, "--data", str(digits / "worker-0"),
                          "--name", "careful", "--min-batch-size", "32", "--require-secure-agg",
                          token=chief.token, script="worker.py")
    code, out = finish(worker)
    assert code == 2, out
    why = ("this worker's policy refuses the chief's plan: --require-secure-agg: the chief's plan has no secure "
           "aggregation; --min-batch-size 32: the chief's plan trains in batches of 1")
    assert why in out and "Traceback" not in out, out
    assert ("chief's plan: secure aggregation off, differential privacy off, batch 1, sync every 1 steps, 1 rounds; "
            "this worker requires secure aggregation, batch >= 32" in out), out
    log = chief.output()
    assert f"(careful) gave up: {why} [policy_refused]" in log, log
    chief.proc.kill()
