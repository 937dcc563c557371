"""Evaluation on request without sockets: the messages, the chief's bookkeeping, the worker engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsock.chief.callbacks import RoundRecord
from fedsock.chief.config import ChiefConfig
from fedsock.chief.evaluation import WorkerEval
from fedsock.chief.finaleval import FinalReports, summarize, table, write
from fedsock.chief.heldeval import HeldEvaluations
from fedsock.errors import ConfigError, FedsockError, LocalProtocolError, RemoteProtocolError
from fedsock.protocol import (
    EVAL_CAPABILITY,
    NEED_DATA,
    Auth,
    Challenge,
    Connection,
    Done,
    EvalRequest,
    EvalResult,
    Hello,
    Kind,
    Plan,
    Role,
    Update,
    Welcome,
    frames,
    specs_of,
)
from fedsock.worker.engine import Fail, ReadEval, ReadModel, Send, WorkerEngine

MODEL = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]
SPECS = specs_of(MODEL, ["a", "b"])
PLAN = Plan(rounds=3, sync_every=1, batch_size=1)


def pump(data: bytes, conn: Connection) -> list:
    conn.receive_data(data)
    out = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def established(capabilities: tuple[str, ...] = ()) -> tuple[Connection, Connection]:
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    pump(worker.send(Hello(name="w1", capabilities=capabilities, instance=bytes(16))), chief)
    pump(chief.send(Challenge(b"n" * 32)), worker)
    pump(worker.send(Auth(b"m" * 32)), chief)
    pump(chief.send(Welcome(1, 0, PLAN, reconnect_secret=bytes(32))), worker)
    return worker, chief


# --- the messages ------------------------------------------------------------------------------

def test_eval_messages_travel_only_on_a_connection_whose_hello_had_eval():
    worker, chief = established((EVAL_CAPABILITY,))
    assert chief.evals and worker.evals
    req = EvalRequest(0, SPECS)
    assert pump(chief.send(req), worker) == [req]  # its chunks are owed next
    assert chief.sending_weights()
    res = EvalResult(0, {"val_accuracy": 0.5, "val_examples": 3.0})
    assert pump(worker.send(res), chief) == [res]

    worker, chief = established()
    with pytest.raises(LocalProtocolError):
        chief.send(req)  # the chief's own state machine refuses
    with pytest.raises(LocalProtocolError):
        worker.send(res)
    body = frames.pack_body(res.to_body())
    with pytest.raises(RemoteProtocolError) as info:
        pump(frames.encode_header(Kind.EVAL_RESULT, len(body)) + body, chief)  # refused on the header
    assert info.value.code == "out_of_order"


def test_done_carries_report_only_when_set_and_a_bad_one_is_bad_message():
    assert "report" not in Done(3, SPECS).to_body()  # a plain Done encodes as before
    assert Done.from_body(Done(3, SPECS, report=60.0).to_body()).report == 60.0
    assert EvalResult.from_body(EvalResult(2, {}).to_body()) == EvalResult(2, {}, final=False)
    for bad in (0, -1.0, float("inf"), float("nan"), "60", True):
        with pytest.raises(RemoteProtocolError) as info:
            Done.from_body({**Done(3, ()).to_body(), "report": bad})
        assert info.value.code == "bad_message", bad
    for body in ({"round": 1, "metrics": {"v": True}}, {"round": 1}, {"round": 1, "metrics": {}, "final": 1}):
        with pytest.raises(RemoteProtocolError) as info:
            EvalResult.from_body(body)
        assert info.value.code == "bad_message", body


# --- held workers (the chief) -----------------------------------------------------------------

def test_held_workers_are_asked_every_n_th_round_once_and_one_answer_per_request():
    held = HeldEvaluations(every=2)
    assert [r for r in range(1, 7) if held.due(r)] == [2, 4, 6] and not HeldEvaluations(every=0).due(4)
    assert not held.should_ask(7, 3)
    assert held.should_ask(7, 4)
    held.asked(7, 4)
    assert not held.should_ask(7, 4) and held.outstanding == 1  # outstanding: not asked again
    with pytest.raises(RemoteProtocolError) as info:
        held.answer(7, 2, {"val_accuracy": 0.5}, 4)  # not the model it was sent (round 3's)
    assert info.value.code == "out_of_order"
    with pytest.raises(RemoteProtocolError):
        held.answer(8, 3, {}, 4)  # never asked
    many = {**{f"val_m{i:02d}": 1.0 for i in range(40)}, "val_examples": 5.0, "train_loss": 1.0,
            "val_" + "x" * 70: 1.0, "val_nan": float("nan")}
    assert held.answer(7, 3, many, 4) is True
    with pytest.raises(RemoteProtocolError):
        held.answer(7, 3, many, 4)  # a second answer to the same request
    assert not held.should_ask(7, 4)  # once per round
    answers, asked = held.take(4)
    kept = answers[7].metrics
    assert asked == 1 and set(kept) == {"val_examples", *(f"val_m{i:02d}" for i in range(31))}  # KEPT_METRICS
    assert held.take(4) == ({}, 0)  # forgotten once its round closed


def test_an_answer_after_its_round_closed_is_dropped_and_a_cancelled_request_frees_the_worker():
    held = HeldEvaluations(every=1)
    held.asked(3, 5)
    assert held.answer(3, 4, {"val_accuracy": 0.9, "val_examples": 10.0}, 6) is False  # round 5 closed meanwhile
    assert held.late == 1 and held.take(5) == ({}, 1) and held.take(6) == ({}, 0)
    held.asked(3, 6)
    held.cancel(3)  # not sent, or its connection ended
    assert held.outstanding == 0 and not held.should_ask(3, 6) and held.should_ask(3, 7)


def test_the_round_record_marks_held_workers_and_federates_them_like_trained_ones():
    per = {"t": WorkerEval({"val_accuracy": 0.5, "val_examples": 10.0, "train_loss": 2.0}, 30),
           "h": WorkerEval({"val_accuracy": 0.8, "val_examples": 30.0}, 0)}
    row = RoundRecord(round=3, workers=(1,), names=("t",), examples=30, seconds=1.0, bytes_in=0, bytes_out=0,
                      time=0.0, worker_metrics=per, held_workers=("h",), held_asked=2).row()
    assert row["held_workers"] == ["h"] and row["held_asked"] == 2 and row["participants"] == ["t"]
    assert row["fed_val_accuracy"] == pytest.approx(np.average([0.5, 0.8], weights=[10, 30]))
    assert row["fed_train_loss"] == 2.0 and row["fed_val_examples"] == 40.0
    plain = RoundRecord(round=3, workers=(1,), names=("t",), examples=30, seconds=1.0, bytes_in=0, bytes_out=0,
                        time=0.0).row()
    assert "held_workers" not in plain and "held_asked" not in plain


def test_the_settings_are_declared_once_and_checked():
    from fedsock.settings import options_of

    opts = {o.dest: o for o in options_of(ChiefConfig)}
    assert opts["eval_every"].flag == "--eval-every" and opts["eval_every"].default == 1
    assert opts["final_eval_timeout"].env == "FEDSOCK_FINAL_EVAL_TIMEOUT"
    for bad in ({"eval_every": -1}, {"final_eval_timeout": -1.0}, {"final_eval_timeout": float("inf")}):
        with pytest.raises(ConfigError, match="--eval-every|--final-eval-timeout"):
            ChiefConfig(**bad).validate()
    ChiefConfig(eval_every=0, final_eval_timeout=0.0).validate()  # both off


# --- the final evaluation (the chief) -----------------------------------------------------------

def test_final_reports_are_awaited_until_all_asked_reported_or_left_or_the_deadline():
    final = FinalReports(timeout=5.0)
    final.expect(1, "w-a", now=100.0)
    final.expect(2, "w-b", now=100.5)
    assert final.deadline == 105.0  # from the first Done
    assert final.waiting(live=[1, 2], now=101.0)
    final.add(1, {"val_accuracy": 0.5, "val_examples": 4.0, "train_loss": 9.0})
    with pytest.raises(RemoteProtocolError) as info:
        final.add(1, {})  # once
    assert info.value.code == "out_of_order"
    with pytest.raises(RemoteProtocolError):
        final.add(3, {})  # never asked
    assert final.pending([1, 2]) == {2} and final.waiting([1, 2], 104.9)
    assert not final.waiting([1, 2], 105.0)  # the deadline
    assert not final.waiting([1], 101.0)  # w-b hung up without a report: nobody left to wait for
    assert final.reports() == {"w-a": {"val_accuracy": 0.5, "val_examples": 4.0}} and final.missing() == ["w-b"]


def test_final_evaluation_json_holds_each_worker_and_the_weighted_averages(tmp_path):
    rng = np.random.default_rng(5)
    reports, rows = {}, []
    for i in range(5):
        n, p = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        acc, loss, pacc = (float(x) for x in rng.random(3))
        m = {"val_accuracy": acc, "val_loss": loss, "val_examples": float(n)}
        if i % 2 == 0:
            m.update(personalized_val_accuracy=pacc, personalized_val_examples=float(p))
        reports[f"w{i}"] = m
        rows.append((acc, loss, n, pacc if i % 2 == 0 else None, p))
    summary = summarize(7, reports, missing=["late-one"], holdout={"accuracy": 0.25})
    assert summary["round"] == 7 and summary["missing"] == ["late-one"] and summary["holdout"] == {"accuracy": 0.25}
    assert summary["workers"]["w0"] == {"examples": rows[0][2], "final": {"accuracy": rows[0][0], "loss": rows[0][1]},
                                        "personalized": {"accuracy": rows[0][3]}, "personalized_examples": rows[0][4]}
    assert "personalized" not in summary["workers"]["w1"]
    fed = summary["federated"]
    acc, loss, n = (np.array([r[k] for r in rows], float) for k in (0, 1, 2))
    assert fed["final"]["accuracy"] == pytest.approx(np.average(acc, weights=n), rel=1e-12)
    assert fed["final"]["loss"] == pytest.approx(np.average(loss, weights=n), rel=1e-12)
    tuned = [r for r in rows if r[3] is not None]
    assert fed["personalized"]["accuracy"] == pytest.approx(
        np.average([r[3] for r in tuned], weights=[r[4] for r in tuned]), rel=1e-12)
    assert (fed["workers"], fed["examples"], fed["personalized_workers"]) == (5, int(n.sum()), 3)
    path = write(tmp_path, summary)
    assert json.loads(path.read_text()) == summary and path.stat().st_mode & 0o777 == 0o600
    text = table(summary, 60.0)
    lines = [ln.split() for ln in text.splitlines()]
    assert ["w1", str(rows[1][2]), f"{rows[1][0]:.4f}", "-"] in lines
    assert ["federated", str(int(n.sum())), f"{fed['final']['accuracy']:.4f}",
            f"{fed['personalized']['accuracy']:.4f}"] in lines
    assert text.splitlines()[-1] == "  no report within 60 s from: late-one"


def test_with_secure_aggregation_the_file_holds_only_what_the_chief_has():
    summary = summarize(4, {}, holdout={"accuracy": 0.75}, secure_agg=True)
    assert summary == {"round": 4, "secure_agg": True, "workers": {}, "missing": [], "federated": None,
                       "holdout": {"accuracy": 0.75}}
    assert "keep their evaluation of the final model to themselves" in table(summary, 60.0)
    assert "holdout accuracy 0.7500" in table(summary, 60.0)
    assert "no worker reported" in table(summarize(4, {}), 60.0)


# --- the worker engine -------------------------------------------------------------------------

def engine(plan: Plan = PLAN) -> WorkerEngine:
    eng = WorkerEngine(Welcome(1, 0, plan, tensors=SPECS, has_weights=True), list(MODEL))
    eng.start_plain(Update(1, 10, SPECS), MODEL)
    return eng


def test_the_engine_reads_a_request_of_its_model_s_shape_and_answers_with_validation_metrics_only():
    eng = engine()
    req = EvalRequest(0, SPECS)
    assert eng.receive(req) == [ReadEval(req)]
    [send] = eng.evaluated(req, {"val_accuracy": 0.5, "val_examples": 8.0, "train_loss": 3.0})
    assert send == Send(EvalResult(0, {"val_accuracy": 0.5, "val_examples": 8.0}))
    assert eng.busy and eng.model is not None and eng.round == 0  # still waiting, the held model unchanged
    [fail] = eng.receive(EvalRequest(0, specs_of([np.zeros(3, np.float32)])))
    assert isinstance(fail, Fail) and fail.notify is not None and fail.notify.code == "signature_mismatch"
    bare = WorkerEngine(Welcome(1, 0, PLAN), None)
    [fail] = bare.receive(req)
    assert isinstance(fail, Fail) and isinstance(fail.error, FedsockError)


def test_the_engine_sends_the_final_report_once_when_done_asks_and_never_values_under_secure_aggregation():
    eng = engine()
    final = {"val_accuracy": 0.75, "val_examples": 4.0, "personalized_val_accuracy": 0.875, "loss": 1.0}
    done = Done(3, SPECS, report=60.0)
    [read] = eng.receive(done)
    assert isinstance(read, ReadModel)
    eng.model_read(done, list(MODEL))
    assert eng.report_due
    [send] = eng.final_report(final)
    assert send == Send(EvalResult(3, {k: v for k, v in final.items() if k != "loss"}, final=True))
    assert eng.final_report(final) == [] and not eng.report_due
    plain = engine()
    plain.model_read(Done(3, SPECS), list(MODEL))
    assert not plain.report_due and plain.final_report(final) == []  # the chief asked for none
    secure = engine(Plan(rounds=3, sync_every=1, batch_size=1, secure_agg=True))
    secure.model_read(done, list(MODEL))
    assert secure.final_report(final) == [Send(EvalResult(3, {}, final=True))]
    req = EvalRequest(0, SPECS)
    assert secure.evaluated(req, final) == [Send(EvalResult(0, {}))]


# --- FederatedCallback: a held Keras worker answers on its validation data --------------------

def test_a_keras_worker_held_inside_sync_evaluates_the_chief_s_weights_and_keeps_its_own():
    import keras

    from fedsock.worker.keras import FederatedCallback
    from tests.test_worker_progress import StubClient

    probe = [np.zeros((2, 1), np.float32), np.ones(1, np.float32)]  # predicts 1 everywhere: mse 1 on zeros
    x_val, y_val = np.ones((7, 2), np.float32), np.zeros((7, 1), np.float32)

    class Held(StubClient):
        evaluator = None
        final_metrics: dict = {}
        answers: list = []

        def sync(self, weights, num_examples, metrics=None, *, reuse=None):
            self.answers.append(self.evaluator(probe))  # the chief's request, while this sync waits
            own = cb.model.get_weights()
            assert all(np.array_equal(a, b) for a, b in zip(own, weights))  # the model's own weights are back
            return super().sync(weights, num_examples, metrics, reuse=reuse)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    client = Held()
    cb = FederatedCallback(client, validation_data=(x_val, y_val))  # type: ignore[arg-type]
    assert client.evaluator == cb._evaluate
    model.fit(np.ones((24, 2), np.float32), np.zeros((24, 1), np.float32), batch_size=4, epochs=50,
              callbacks=[cb], verbose=0)
    assert client.finished and len(client.answers) == 2
    assert all(a == {"loss": pytest.approx(1.0), "examples": 7.0} for a in client.answers)
    assert client.final_metrics == cb.final_metrics and set(cb.final_metrics) == {"val_loss", "val_examples"}
