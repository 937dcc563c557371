"""Federated evaluation without sockets: the chief's aggregate, the worker's split and metric names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsock.chief.callbacks import RoundRecord
from fedsock.chief.display import format_header, format_row
from fedsock.chief.evaluation import WorkerEval, WorkerMetrics, federate, headline
from fedsock.chief.monitor import status_metrics
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol import Status, WorkerStatus
from fedsock.worker.evaluation import Evaluation, split_validation, training_metrics, validation_metrics


def _workers(rng: np.random.Generator, k: int) -> dict[str, WorkerEval]:
    out = {}
    for i in range(k):
        n = int(rng.integers(1, 500))
        out[f"w{i}"] = WorkerEval({"val_accuracy": float(rng.random()), "val_loss": float(rng.random() * 3),
                                   "val_examples": float(n), "train_loss": float(rng.random())},
                                  examples=int(rng.integers(1, 1000)))
    return out


def test_federated_metrics_are_the_validation_weighted_means_and_fairness_the_order_statistics():
    rng = np.random.default_rng(3)
    for k in (1, 2, 5, 8):
        per = _workers(rng, k)
        fed = federate(per)
        acc = np.array([e.metrics["val_accuracy"] for e in per.values()])
        loss = np.array([e.metrics["val_loss"] for e in per.values()])
        nval = np.array([e.metrics["val_examples"] for e in per.values()])
        ntrain = np.array([e.examples for e in per.values()], float)
        tl = np.array([e.metrics["train_loss"] for e in per.values()])
        assert fed["fed_val_accuracy"] == pytest.approx(np.average(acc, weights=nval), rel=1e-12)
        assert fed["fed_val_loss"] == pytest.approx(np.average(loss, weights=nval), rel=1e-12)
        assert fed["fed_train_loss"] == pytest.approx(np.average(tl, weights=ntrain), rel=1e-12)
        assert fed["fed_val_examples"] == nval.sum()
        assert fed["val_accuracy_worst"] == acc.min() and fed["val_accuracy_best"] == acc.max()
        assert fed["val_accuracy_median"] == pytest.approx(np.median(acc))
        assert fed["val_accuracy_spread"] == pytest.approx(acc.max() - acc.min())
        assert per[fed["worst_worker"]].metrics["val_accuracy"] == acc.min()


def test_a_loss_only_federation_ranks_the_highest_loss_worst_and_workers_without_validation_do_not_count():
    per = {"a": WorkerEval({"val_loss": 0.5, "val_examples": 10}, 5),
           "b": WorkerEval({"val_loss": 2.0, "val_examples": 30}, 5),
           "c": WorkerEval({"train_loss": 9.0}, 5)}  # sent no validation metrics
    fed = federate(per)
    assert fed["fed_val_loss"] == pytest.approx((0.5 * 10 + 2.0 * 30) / 40)
    assert fed["worst_worker"] == "b" and fed["val_loss_worst"] == 2.0 and fed["val_loss_best"] == 0.5
    assert fed["fed_train_loss"] == 9.0
    assert federate({}) == {}


def test_worker_metrics_are_kept_per_round_and_only_for_the_round_s_workers():
    wm = WorkerMetrics()
    wm.put(3, 1, 10, {"val_accuracy": 0.5, "val_examples": 4, "bad": float("nan")})
    wm.put(3, 2, 10, {"val_accuracy": 0.7, "val_examples": 4})
    wm.put(4, 1, 10, {"val_accuracy": 0.9, "val_examples": 4})
    wm.put(3, 5, 10, {})  # nothing kept
    got = wm.take(3, (1, 5))
    assert list(got) == [1] and got[1].metrics == {"val_accuracy": 0.5, "val_examples": 4.0}
    assert wm.take(3, (2,)) == {}  # round 3 is forgotten once closed
    assert wm.take(4, (1,))[1].metrics["val_accuracy"] == 0.9
    wm.put(5, 1, 10, {**{f"m{i:03d}": 1.0 for i in range(100)}, "x" * 65: 1.0})  # a worker bloating the record
    assert sorted(wm.take(5, (1,))[1].metrics) == [f"m{i:03d}" for i in range(32)]


def test_the_round_record_carries_per_worker_metrics_by_name_and_the_federated_ones():
    ev = {"w1": WorkerEval({"val_accuracy": 0.5, "val_examples": 1}, 3),
          "w2": WorkerEval({"val_accuracy": 1.0, "val_examples": 3}, 3)}
    rec = RoundRecord(round=4, workers=(1, 2), names=("w1", "w2"), examples=6, seconds=1, bytes_in=0,
                      bytes_out=0, time=0.0, worker_metrics=ev)
    row = rec.row()
    assert row["per_worker"] == {"w1": {"val_accuracy": 0.5, "val_examples": 1.0},
                                 "w2": {"val_accuracy": 1.0, "val_examples": 3.0}}
    assert row["fed_val_accuracy"] == pytest.approx(0.875) and row["fed_model_round"] == 3
    assert headline(row) == ("fed_val_accuracy", pytest.approx(0.875))
    assert headline({**row, "accuracy": 0.25}) == ("accuracy", 0.25)
    bare = RoundRecord(round=1, workers=(1,), names=("w1",), examples=1, seconds=1, bytes_in=0, bytes_out=0,
                       time=0.0).row()
    assert "per_worker" not in bare and not any(k.startswith("fed_") for k in bare)


def test_the_table_shows_federated_accuracy_next_to_holdout_or_as_the_headline_without_it():
    base = {"round": 2, "workers": 2, "examples": 10, "seconds": 1.0, "bytes_in": 0, "bytes_out": 0}
    fed = {"fed_val_accuracy": 0.8, "fed_val_loss": 0.4, "val_accuracy_worst": 0.7}
    both = format_row({**base, "accuracy": 0.9, "loss": 0.3, **fed})
    assert both.split()[3:7] == ["0.9000", "0.3000", "0.8000", "0.7000"]
    assert format_header(federated=True).split()[3:7] == ["accuracy", "loss", "fed", "acc"]
    alone = format_row({**base, **fed})
    assert alone.split()[3:6] == ["0.8000", "0.4000", "0.7000"]
    assert format_header(federated=True, holdout=False).split()[3:8] == ["fed", "acc", "fed", "loss", "worst"]
    assert len(format_row({**base, "accuracy": 0.9}, federated=True, holdout=True).split()) == \
        len(format_header(federated=True).split()) - 3  # "fed acc", "MB in", "MB out": 2 words each


def test_status_carries_each_worker_s_latest_validation_metrics_within_the_limit():
    ws = WorkerStatus("w1", 1, True, 0.5, 3, 10, 20, metrics=status_metrics(
        {"val_accuracy": 0.9, "val_examples": 40, "train_loss": 0.1}))
    assert ws.metrics == {"val_accuracy": 0.9, "val_examples": 40}
    st = Status(round=1, rounds=2, finished=False, submitted=0, waiting=0, uptime=1.0, workers=(ws,))
    assert Status.from_body(st.to_body()).workers[0].metrics == ws.metrics
    assert "metrics" not in WorkerStatus("w2", 2, True, 0.0, 0, 0, 0).to_wire()  # older clients see no change
    many = {**ws.to_wire(), "metrics": {f"val_m{i}": 1.0 for i in range(9)}}
    with pytest.raises(RemoteProtocolError, match="exceed the limit"):
        WorkerStatus.from_wire(many)
    assert len(status_metrics({f"val_m{i}": 1.0 for i in range(20)})) == 8


def test_the_validation_split_is_seeded_disjoint_and_complete():
    x, y = np.arange(100).reshape(50, 2), np.arange(50)
    xt, yt, xv, yv = split_validation(x, y, 0.2, seed=4)
    assert len(yv) == 10 and len(yt) == 40 and sorted([*yt, *yv]) == list(range(50))
    assert (xv[:, 0] // 2 == yv).all()  # rows stay with their labels
    assert (split_validation(x, y, 0.2, seed=4)[3] == yv).all()
    assert not (split_validation(x, y, 0.2, seed=5)[3] == yv).all()
    assert len(split_validation(x, y, 0.0)[3]) == 0
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="--val-split"):
            split_validation(x, y, bad)
    with pytest.raises(ConfigError, match="none to train on"):
        split_validation(x[:1], y[:1], 0.5)


def test_metric_names_say_which_is_which():
    assert validation_metrics({"accuracy": 0.5, "loss": 1}, 7) == {"val_accuracy": 0.5, "val_loss": 1.0,
                                                                  "val_examples": 7.0}
    assert training_metrics({"loss": 1, "val_loss": 2, "train_acc": 3}) == {"train_loss": 1.0, "val_loss": 2.0,
                                                                            "train_acc": 3.0}
    ev = Evaluation(lambda w: {"accuracy": float(w[0].sum()), "examples": 3})
    ev.evaluate([np.ones(2)])
    assert ev.outgoing({"loss": 0.1}) == {"val_accuracy": 2.0, "val_examples": 3.0, "train_loss": 0.1}
    assert ev.outgoing({"val_accuracy": 0.3}) == {"val_accuracy": 0.3}  # the caller's own validation wins
    with pytest.raises(ConfigError, match="examples"):
        Evaluation(lambda w: {"accuracy": 1.0}).evaluate([np.ones(2)])
    assert Evaluation(None).outgoing({"loss": 1}) == {"train_loss": 1.0}


def _evaluated_rows() -> list[dict]:
    rows = []
    for r in range(1, 4):
        per = {f"w{i}": {"val_accuracy": 0.2 * r + 0.05 * i, "val_loss": 1.0 / r, "val_examples": 10.0 + i}
               for i in range(3)}
        rec = RoundRecord(round=r, workers=(1, 2, 3), names=tuple(per), examples=30, seconds=1.0, bytes_in=1,
                          bytes_out=1, time=0.0, metrics={"accuracy": 0.21 * r, "loss": 1.0},
                          worker_metrics={n: WorkerEval(m, 10) for n, m in per.items()})
        rows.append(json.loads(json.dumps(rec.row())))
    return rows


def test_the_plot_has_a_federated_and_a_per_worker_panel_against_the_evaluated_model():
    import matplotlib.pyplot as plt

    from fedsock.plot import build_figure

    rows = _evaluated_rows()
    fig = build_figure(rows, "t")
    try:
        titles = {ax.get_title(): ax for ax in fig.axes}
        per = titles["validation accuracy per worker"]
        assert [line.get_label() for line in per.get_lines()] == ["w0", "w1", "w2"]
        assert list(per.get_lines()[1].get_xdata()) == [0, 1, 2]  # models of rounds 0..2
        assert list(per.get_lines()[1].get_ydata()) == pytest.approx([0.25, 0.45, 0.65])
        fed = titles["federated validation accuracy"].get_lines()[0]
        assert list(fed.get_ydata()) == pytest.approx([r["fed_val_accuracy"] for r in rows])
        holdout = [line.get_label() for line in titles["holdout metrics"].get_lines()]
        assert holdout == ["accuracy"]  # the federated fields are not drawn as holdout metrics
    finally:
        plt.close(fig)


def test_the_demo_table_lines_up_holdout_and_federated_accuracy_by_model():
    from fedsock.demo import evaluation_table

    rows = _evaluated_rows()
    lines = evaluation_table(rows).splitlines()
    model1 = next(line for line in lines if line.split()[0] == "1")
    assert model1.split() == ["1", "0.2100", f"{rows[1]['fed_val_accuracy']:.4f}", "0.4000", "w0"]
    assert lines[-3:] == ["  w0 0.6000 on 10 examples", "  w1 0.6500 on 11 examples", "  w2 0.7000 on 12 examples"]


def test_the_monitor_gives_status_each_worker_s_latest_validation_and_the_panel_the_worst_worker():
    from fedsock.aggregation import fedavg
    from fedsock.chief.callbacks import WorkerJoined
    from fedsock.chief.monitor import Monitor
    from fedsock.chief.rounds import RoundController

    m = Monitor(min_workers=1)
    for wid, name in ((1, "w1"), (2, "w2")):
        m.on_worker_joined(WorkerJoined(wid, name, "127.0.0.1:1"))
    for r, (a1, a2) in enumerate(((0.5, 0.6), (0.8, 0.7)), 1):
        m.on_round_end(RoundRecord(
            round=r, workers=(1, 2), names=("w1", "w2"), examples=2, seconds=1, bytes_in=0, bytes_out=0, time=0.0,
            worker_metrics={"w1": WorkerEval({"val_accuracy": a1, "val_examples": 1, "train_loss": 2}, 1),
                            "w2": WorkerEval({"val_accuracy": a2, "val_examples": 1}, 1)}))
    ctrl = RoundController(rounds=3, min_workers=1, round_timeout=1.0, transform=fedavg())
    st = m.status(ctrl, {}, full=True)  # a status token sees each worker
    assert {w.name: w.metrics for w in st.workers} == {"w1": {"val_accuracy": 0.8, "val_examples": 1.0},
                                                       "w2": {"val_accuracy": 0.7, "val_examples": 1.0}}
    assert st.metrics["fed_val_accuracy"] == pytest.approx(0.75)
    snap = m.snapshot(ctrl, 2)
    assert snap.federated == pytest.approx(0.75) and snap.worst == ("w2", 0.7)
    assert not any(k.startswith("fed_") or k.endswith("_worst") for k in snap.last_metrics)


def test_the_live_panel_and_fedsock_status_print_the_federated_accuracy_and_each_worker_s():
    from rich.console import Console

    from fedsock.chief.display import Snapshot, render
    from fedsock.status import format_status

    console = Console(record=True, width=120)
    console.print(render(Snapshot(round=3, rounds=5, opened_at=0.0, federated=0.8125, worst=("w2", 0.7)), now=1.0))
    assert "federated   validation accuracy 0.8125 · worst worker w2 0.7000" in console.export_text()
    ws = WorkerStatus("w1", 1, True, 0.5, 3, 10, 20, metrics={"val_accuracy": 0.875, "val_examples": 40})
    text = format_status(Status(round=3, rounds=5, finished=False, submitted=0, waiting=0, uptime=1.0,
                                workers=(ws,)), "127.0.0.1:1")
    assert "validation (latest)" in text and text.rstrip().endswith("accuracy 0.875  examples 40")


def test_the_demo_s_personalization_table_comes_from_the_workers_last_lines():
    from fedsock.demo import personalization_table

    logs = {"w-a": "x final model on the local validation split: val_accuracy=0.9756, val_loss=0.15\n"
                   "after 2 epochs of local fine-tuning (personalization), on the local validation split: "
                   "personalized_val_accuracy=0.9512, personalized_val_loss=0.11\n",
            "w-b": "the worker failed\n"}
    lines = personalization_table(logs).splitlines()
    assert lines[2].split() == ["w-a", "0.9756", "0.9512"] and lines[3].split() == ["w-b", "-", "-"]


def test_relayed_metrics_compose_to_the_flat_federation_s():
    from fedsock.chief.evaluation import relayed

    rng = np.random.default_rng(11)
    flat = _workers(rng, 7)
    groups = [dict(list(flat.items())[:3]), dict(list(flat.items())[3:])]
    tree = {f"relay-{i}": WorkerEval(relayed(g), sum(e.examples for e in g.values())) for i, g in enumerate(groups)}
    top, expected = federate(tree), federate(flat)
    for key in ("fed_val_accuracy", "fed_val_loss", "fed_val_examples", "fed_train_loss"):
        assert top[key] == pytest.approx(expected[key], rel=1e-12), key
    assert not any(k.startswith("fed_") or k.endswith("_worst") for k in relayed(flat))


def test_an_in_process_chief_hands_user_callbacks_the_per_worker_metrics_and_reports_the_federated_ones(tmp_path):
    import threading
    import time

    from fedsock.chief.callbacks import ChiefCallback
    from fedsock.chief.server import Chief
    from fedsock.testing.numpy_worker import evaluate_for
    from tests.conftest import run_clients

    seen: list[RoundRecord] = []

    class Keep(ChiefCallback):
        def on_round_end(self, record: RoundRecord) -> None:
            seen.append(record)

    chief = Chief(state_dir=tmp_path, host="127.0.0.1", port=0, rounds=2, min_workers=2, done_grace=0.5,
                  progress="plain", callbacks=[Keep()])
    summary: list = []
    t = threading.Thread(target=lambda: summary.append(chief.run()), daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "chief.addr").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    val = {"ip-a": 3, "ip-b": 9}
    run_clients((tmp_path / "chief.addr").read_text().strip(), (tmp_path / "token").read_text().strip(),
                {"ip-a": 10, "ip-b": 10}, val=val)
    t.join(30)
    assert [r.round for r in seen] == [1, 2]
    first = seen[0].worker_metrics
    zeros = [np.zeros((4, 3), np.float32)]  # round 1's updates evaluated the initial model
    assert {n: e.metrics["val_accuracy"] for n, e in first.items()} == \
        pytest.approx({n: evaluate_for(n, zeros, k)["accuracy"] for n, k in val.items()})
    assert summary[0].final_metrics["fed_val_accuracy"] == pytest.approx(seen[-1].federated()["fed_val_accuracy"])
