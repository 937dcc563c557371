"""Relays: a two-level tree of chiefs gives exactly the flat federation's model."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fedsock.status import query_status
from tests.conftest import flat_fedavg, run_clients

pytestmark = pytest.mark.integration

EXAMPLES = {"r1-a": 10, "r1-b": 25, "r2-a": 40, "r2-b": 7}
ROUNDS = 3


def test_two_level_tree_equals_flat_federation(chiefs):
    top = chiefs("--rounds", str(ROUNDS), "--min-workers", "2", name="top")
    relays = {
        r: chiefs("--upstream", top.address, "--upstream-token", top.token, "--upstream-name", r,
                  "--min-workers", "2", "--rounds", "99", name=r)  # rounds come from upstream
        for r in ("r1", "r2")
    }
    st = query_status(relays["r1"].address, relays["r1"].token)
    assert st.upstream == top.address and st.rounds == ROUNDS

    finals: dict[str, np.ndarray] = {}
    threads = []
    for r, relay in relays.items():
        group = {k: n for k, n in EXAMPLES.items() if k.startswith(r)}

        def run(relay=relay, group=group) -> None:
            finals.update(run_clients(relay.address, relay.token, group))

        threads.append(threading.Thread(target=run))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(finals) == set(EXAMPLES)
    for c in (top, *relays.values()):
        assert c.wait(60) == 0, c.output()

    flat = chiefs("--rounds", str(ROUNDS), "--min-workers", str(len(EXAMPLES)), name="flat")
    flat_finals = run_clients(flat.address, flat.token, EXAMPLES)
    assert flat.wait(60) == 0, flat.output()

    expected = flat_fedavg(EXAMPLES, ROUNDS)
    tree_model = np.load(top.state_dir / "final_weights.npz")
    flat_model = np.load(flat.state_dir / "final_weights.npz")
    (tree_w,), (flat_w,) = [tree_model[k] for k in tree_model.files], [flat_model[k] for k in flat_model.files]
    np.testing.assert_allclose(tree_w, flat_w, atol=1e-6, rtol=0)
    np.testing.assert_allclose(tree_w, expected, atol=1e-6, rtol=0)
    for name in EXAMPLES:  # every worker ends with the global model, through its relay or not
        np.testing.assert_allclose(finals[name], flat_finals[name], atol=1e-6, rtol=0)
        np.testing.assert_allclose(finals[name], tree_w, atol=0, rtol=0)
    # upstream, each relay is one worker weighing its workers' examples
    import json

    rows = [json.loads(x) for x in (top.state_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["workers"], r["examples"], sorted(r["participants"])) for r in rows] == \
        [(2, sum(EXAMPLES.values()), ["r1", "r2"])] * ROUNDS
    assert np.abs(expected).max() > 0.05  # the steps moved the model: the comparison is not of zeros


def test_flat_and_relayed_federations_report_the_same_federated_metrics(chiefs):
    import json

    val = {"r1-a": 5, "r1-b": 50, "r2-a": 13, "r2-b": 200}

    def rows(chief) -> list[dict]:
        return [json.loads(x) for x in (chief.state_dir / "metrics.jsonl").read_text().splitlines()]

    top = chiefs("--rounds", str(ROUNDS), "--min-workers", "2", name="top")
    relays = {r: chiefs("--upstream", top.address, "--upstream-token", top.token, "--upstream-name", r,
                        "--min-workers", "2", "--rounds", "99", name=r) for r in ("r1", "r2")}
    threads = [threading.Thread(target=run_clients, args=(relay.address, relay.token,
                                                          {k: n for k, n in EXAMPLES.items() if k.startswith(r)}),
                                kwargs={"val": val}) for r, relay in relays.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for c in (top, *relays.values()):
        assert c.wait(60) == 0, c.output()
    flat = chiefs("--rounds", str(ROUNDS), "--min-workers", str(len(EXAMPLES)), name="flat")
    run_clients(flat.address, flat.token, EXAMPLES, val=val)
    assert flat.wait(60) == 0, flat.output()

    tree_rows, flat_rows = rows(top), rows(flat)
    assert len(tree_rows) == len(flat_rows) == ROUNDS
    keys = ("fed_val_accuracy", "fed_val_loss", "fed_val_examples", "fed_train_loss")
    for tree, fl in zip(tree_rows, flat_rows):
        assert sorted(tree["per_worker"]) == ["r1", "r2"] and sorted(fl["per_worker"]) == sorted(EXAMPLES)
        for key in keys:
            assert tree[key] == pytest.approx(fl[key], abs=1e-6, rel=0), key
    assert tree_rows[-1]["fed_val_examples"] == sum(val.values())
    assert len({round(r["fed_val_accuracy"], 6) for r in flat_rows}) == ROUNDS  # the metrics moved
