"""Federated metrics inside the secure-aggregation vector: encoding, layout and the chief's side, without sockets."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from fedsock import limits
from fedsock.aggregation import identity
from fedsock.chief.callbacks import RoundRecord
from fedsock.chief.closers import SecureCloser
from fedsock.chief.config import ChiefConfig
from fedsock.chief.rounds import Accepted
from fedsock.chief.secure import SecureAggregation
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol import Plan
from fedsock.protocol.secagg import Peer, SecAggInbox, SecAggRoster, SecAggUnmask
from fedsock.secagg import fixedpoint
from fedsock.secagg import metrics as sm
from fedsock.secagg.chief import ChiefRound
from fedsock.secagg.worker import WorkerRound
from fedsock.worker.evaluation import MetricSharing
from fedsock.worker.secure import masked_update
from tests.test_chief_closers import SHAPES, controller, update

NAMES = sm.names_for("auto", None)


def summed(vectors: list[np.ndarray]) -> np.ndarray:
    """The sum mod 2**64, as the unmasked vector is."""
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v
    return total


def test_the_default_names_and_those_of_a_compiled_model():
    assert NAMES == ("val_examples", "val_loss", "val_accuracy", "train_loss", "train_accuracy")
    keras_like = json.dumps({"loss": "mse", "metrics": ["accuracy", {"module": "keras.metrics", "class_name": "AUC",
                                                                     "config": {"name": "auc"}}],
                             "weighted_metrics": None})
    assert sm.names_for("auto", keras_like) == ("val_examples", "val_loss", "val_accuracy", "val_auc",
                                                "train_loss", "train_accuracy", "train_auc")
    assert sm.names_for("mae, loss", None) == ("val_examples", "val_mae", "val_loss", "train_mae", "train_loss")
    assert sm.names_for("none", keras_like) == ()
    many = json.dumps({"metrics": [f"m{i}" for i in range(40)]})
    most = 1 + 2 * ((limits.SECAGG_MAX_METRICS - 1) // 2)
    assert len(sm.names_for("auto", many)) == most <= limits.SECAGG_MAX_METRICS
    for bad in ("val_loss", "a b", "", ",".join(f"m{i}" for i in range(16))):
        with pytest.raises(ConfigError, match="--secagg-metrics"):
            sm.parse_bases(bad)
    with pytest.raises(ConfigError, match="--secagg-metrics needs --secure-agg"):
        ChiefConfig(secagg_metrics="loss").validate()
    ChiefConfig(secure_agg=True, min_workers=2, secagg_metrics="loss").validate()
    with pytest.raises(ConfigError, match="--secagg-metrics"):
        ChiefConfig(secure_agg=True, min_workers=2, secagg_metrics="train_loss").validate()


def test_sums_decode_to_numpy_s_weighted_means_within_the_stated_bound():
    rng = np.random.default_rng(7)
    workers = []
    for _ in range(9):
        n_val, n_train = int(rng.integers(1, 500)), int(rng.integers(1, 5000))
        workers.append(({"val_examples": float(n_val), "val_loss": float(rng.uniform(0, 50)),
                         "val_accuracy": float(rng.uniform(0, 1)), "train_loss": float(rng.normal(3, 10))},
                        n_train))
    words = [sm.encode(NAMES, m, n)[0] for m, n in workers]
    assert all(w.dtype == np.dtype("<u8") and w.shape == (sm.WORDS * len(NAMES),) for w in words)
    fed = sm.federated(sm.decode(summed(words), NAMES))
    val_w = np.array([m["val_examples"] for m, _ in workers])
    train_w = np.array([n for _, n in workers], float)
    for name, weights in (("val_loss", val_w), ("val_accuracy", val_w), ("train_loss", train_w)):
        want = np.average([m[name] for m, _ in workers], weights=weights)
        assert abs(fed["fed_" + name] - want) <= sm.MAX_ERROR + 1e-15 * abs(want), name
    assert fed["fed_val_examples"] == val_w.sum()
    assert "fed_train_accuracy" not in fed  # nobody reported it: weight 0, left out


def test_the_extremes_of_the_range_cannot_overflow_with_the_most_workers():
    """MAX_WORKERS workers, each at the largest value and weight allowed, all positive or all negative."""
    top = limits.SECAGG_METRIC_MAX_ABS - 2.0**-20
    for sign in (1.0, -1.0):
        words = sm.encode(("train_loss",), {"train_loss": sign * top}, limits.SECAGG_METRIC_MAX_WEIGHT)[0]
        total = words * np.uint64(limits.MAX_WORKERS)  # the same words from every worker, mod 2**64
        s = sm.decode(total, ("train_loss",))["train_loss"]
        assert s.weight == limits.MAX_WORKERS * limits.SECAGG_METRIC_MAX_WEIGHT
        assert s.mean == sign * top  # exact: top is on the 2**-24 grid


def test_missing_unencodable_and_unshared_metrics_weigh_nothing():
    words, skipped = sm.encode(NAMES, {"val_loss": 1.0, "train_loss": float("nan"),
                                       "train_accuracy": 2.0**31}, 10)
    assert skipped == ["train_loss", "train_accuracy"]
    assert not words.any()  # val_loss without val_examples has weight 0; the others were left out
    _, skipped = sm.encode(("val_loss",), {"val_loss": 0.5, "val_examples": 2.5}, 10)
    assert skipped == ["val_loss"]  # a fractional example count is no weight
    none = sm.encode(NAMES, MetricSharing("none").shared(True, {"val_loss": 0.25, "val_examples": 4.0}), 7)[0]
    alone = sm.encode(NAMES, {"val_loss": 0.75, "val_examples": 6.0, "train_loss": 2.0}, 3)[0]
    assert sm.federated(sm.decode(summed([none, alone]), NAMES)) == {
        "fed_val_examples": 6.0, "fed_val_loss": 0.75, "fed_train_loss": 2.0}


def test_words_no_honest_sum_gives_are_refused():
    good = sm.encode(("val_loss",), {"val_loss": 1.0, "val_examples": 3.0}, 1)[0]
    for bad in (np.array([1, 0, 0], "<u8"), np.array([0, 0, 2**63], "<u8"), np.array([2**60, 0, 1], "<u8")):
        with pytest.raises(sm.RangeError):
            sm.decode(bad, ("val_loss",))
    with pytest.raises(sm.RangeError, match="4 metric words"):
        sm.decode(np.concatenate([good, good[:1]]), ("val_loss",))


def test_the_roster_carries_the_names_and_bounds_them():
    peers = (Peer(1, b"a" * 32, b"b" * 32), Peer(2, b"c" * 32, b"d" * 32))
    plain = SecAggRoster(1, 1, 1, 2, 2, 2, peers)
    assert "metrics" not in plain.to_body() and SecAggRoster.from_body(plain.to_body()) == plain
    roster = SecAggRoster(1, 1, 1, 2, 2, 2, peers, NAMES)
    assert roster.to_body()["metrics"] == list(NAMES) and SecAggRoster.from_body(roster.to_body()) == roster
    body = plain.to_body()
    for metrics, code in ((["m"] * 2, "bad_message"), ([1], "bad_message"), ([""], "bad_message"),
                          (["x" * (limits.SECAGG_METRIC_NAME_BYTES + 1)], "limit_exceeded"),
                          ([f"m{i}" for i in range(limits.SECAGG_MAX_METRICS + 1)], "limit_exceeded"),
                          ("val_loss", "bad_message")):
        with pytest.raises(RemoteProtocolError) as info:
            SecAggRoster.from_body({**body, "metrics": metrics})
        assert info.value.code == code, metrics


class MetricWorkers:
    """In-memory workers answering the chief at once; their masked vectors come from ``masked_update``."""

    def __init__(self, sec, updates, examples, metrics, lacking=frozenset()):
        self.sec, self.updates, self.examples, self.metrics, self.lacking = sec, updates, examples, metrics, lacking
        self.states, self.layouts = {}, {}
        for w in updates:
            self.states[w], keys = WorkerRound.start(1)
            assert isinstance(sec.on_keys(w, keys, connection=w, metrics=w not in lacking), Accepted)

    async def send(self, w, msg):
        st = self.states[w]
        if isinstance(msg, SecAggRoster):
            self.sec.on_shares(w, st.on_roster(msg))
        elif isinstance(msg, SecAggInbox):
            st.on_inbox(msg)
            out, arrays = masked_update(st, self.updates[w], self.examples[w], Plan(3, 1, 1, secure_agg=True),
                                        [f"t{i}" for i in range(len(SHAPES))],
                                        {} if w in self.lacking else self.metrics[w])
            self.layouts[w] = [(s.name, s.shape) for s in out.tensors]
            assert self.sec.check_masked(w, 1, 1, out.tensors)
            self.sec.add_masked(w, 1, 1, arrays)
        elif isinstance(msg, SecAggUnmask):
            self.sec.on_reveal(w, st.on_unmask(msg))
        return True

    def alive(self, w):
        return True


def secure_round(metrics, lacking=frozenset()):
    c = controller(min_workers=2, transform=identity())
    sec = SecureAggregation(ChiefConfig(min_workers=2, secure_agg=True, secagg_timeout=1.0), c)
    sec.announce_metrics(None)
    examples = {1: 10, 2: 20, 3: 30}
    workers = MetricWorkers(sec, {w: update(float(w)) for w in examples}, examples, metrics, lacking)
    result = asyncio.run(SecureCloser(sec, workers.send, workers.alive, lambda w: None).close(c, 1.0))
    assert result is not None and result.workers == (1, 2, 3)
    np.testing.assert_allclose(result.weights[0], np.full(3, (10 + 40 + 90) / 60), atol=1e-6)
    return result, workers.layouts


def test_a_secure_round_hands_the_federated_metrics_and_no_worker_s_own_to_the_record():
    metrics = {1: {"val_loss": 0.5, "val_accuracy": 0.9, "val_examples": 5.0, "train_loss": 1.25},
               2: {"val_loss": 0.25, "val_accuracy": 0.8, "val_examples": 15.0, "train_loss": 0.75},
               3: {"val_loss": 2.0, "val_accuracy": 0.1, "val_examples": 30.0}}
    result, layouts = secure_round(metrics)
    names = [f"t{i}" for i in range(len(SHAPES))]
    for layout in layouts.values():  # every vector has the same layout, so the masks cancel
        assert layout == [*zip(names, SHAPES), ("weight", (1,)), ("metrics", (sm.WORDS * len(NAMES),))]
    fed = result.federated
    assert fed["fed_val_examples"] == 50.0
    assert fed["fed_val_loss"] == pytest.approx((0.5 * 5 + 0.25 * 15 + 2.0 * 30) / 50, abs=sm.MAX_ERROR)
    assert fed["fed_val_accuracy"] == pytest.approx((0.9 * 5 + 0.8 * 15 + 0.1 * 30) / 50, abs=sm.MAX_ERROR)
    assert fed["fed_train_loss"] == pytest.approx((1.25 * 10 + 0.75 * 20) / 30, abs=sm.MAX_ERROR)
    assert set(fed) == {"fed_val_examples", "fed_val_loss", "fed_val_accuracy", "fed_train_loss"}
    record = RoundRecord(round=1, workers=result.workers, names=("a", "b", "c"), examples=60, seconds=1.0,
                         bytes_in=0, bytes_out=0, time=0.0, aggregate_metrics=fed)
    row = record.row()
    assert {k: row[k] for k in fed} == fed and row["fed_model_round"] == 0
    assert "per_worker" not in row and "val_accuracy_worst" not in row and "worst_worker" not in row
    own = {v for m in metrics.values() for k, v in m.items() if k != "val_examples"}
    assert not own & {v for v in row.values() if isinstance(v, float)}


def test_an_attempt_with_a_worker_that_does_not_implement_metrics_announces_none():
    metrics = {w: {"val_loss": 1.0, "val_examples": 1.0} for w in (1, 2, 3)}
    result, layouts = secure_round(metrics, lacking=frozenset({2}))
    assert result.federated == {}
    assert all(layout[-1] == ("weight", (1,)) for layout in layouts.values())


def test_share_metrics_modes():
    m = {"val_loss": 0.5, "train_loss": 1.0}
    assert MetricSharing("all").shared(False, m) == m == MetricSharing("all").shared(True, m)
    agg = MetricSharing("aggregate-only")
    assert agg.shared(False, m) == {} and agg.shared(True, m) == m
    assert MetricSharing("none").shared(True, m) == {} == MetricSharing("none").shared(False, m)
    s = MetricSharing("aggregate-only")
    first = s.news(False)
    assert first is not None and "sends it no metrics" in first
    assert s.news(False) is None  # said once ...
    assert "only inside the secure-aggregation sum" in (s.news(True) or "")  # ... and again for another plan
    with pytest.raises(ConfigError, match="--share-metrics must be one of all, aggregate-only, none"):
        MetricSharing("some")


def attempt(metrics: dict[int, dict[str, float]], examples: dict[int, int], names: tuple[str, ...],
            told: dict[int, tuple[str, ...]] | None = None,
            vanish: tuple[int, ...] = ()) -> tuple[ChiefRound, np.ndarray]:
    """One attempt of the pure state machines over a one-element model; ``told``: the lists a deviating
    chief hands some workers instead of ``names``; ``vanish``: workers gone after sharing."""
    from dataclasses import replace

    chief = ChiefRound(1, 1, words=2)
    states = {}
    for w in metrics:
        states[w], keys = WorkerRound.start(1)
        chief.add_keys(w, keys)
    rosters = chief.rosters(2, names)
    for w in metrics:
        roster = replace(rosters[w], metrics=(told or {}).get(w, names))
        chief.add_shares(w, states[w].on_roster(roster))
    for w, inbox in chief.inboxes().items():
        if w in vanish:
            continue
        states[w].on_inbox(inbox)
        tail = sm.encode(states[w].roster.metrics, metrics[w], examples[w])[0]
        masked = states[w].mask(fixedpoint.encode([np.ones(1)], examples[w], len(metrics), tail))
        chief.add_masked(w, [masked])
    unmask = chief.unmask()
    for w in unmask.survivors:
        chief.add_reveal(w, states[w].on_unmask(unmask))
    return chief, chief.finish()


def test_masks_cancel_over_the_metric_words_when_a_worker_drops_out():
    metrics = {w: {"val_loss": 0.1 * w, "val_examples": float(w)} for w in (1, 2, 3, 4)}
    chief, total = attempt(metrics, {w: 10 for w in metrics}, NAMES, vanish=(3,))
    assert int(total[1]) == 30  # the weight word: the three survivors
    fed = sm.federated(sm.decode(total[chief.words:], NAMES))
    assert fed["fed_val_examples"] == 1 + 2 + 4
    assert fed["fed_val_loss"] == pytest.approx((0.1 + 0.4 + 1.6) / 7, abs=sm.MAX_ERROR)


def test_a_chief_that_hands_one_worker_another_list_gets_masks_that_do_not_cancel():
    """Else it could put one worker's metric in words nobody else fills and read it from the sum."""
    metrics = {w: {"val_loss": 0.25 * w, "val_examples": 4.0} for w in (1, 2, 3)}
    isolating = ("val_examples", "val_x", "val_y", "val_z", "val_loss")  # worker 1's loss alone in the last slot
    _, honest = attempt(metrics, {w: 10 for w in metrics}, NAMES)
    assert int(honest[1]) == 30
    _, total = attempt(metrics, {w: 10 for w in metrics}, NAMES, told={1: isolating})
    assert int(total[1]) != 30  # the weight word is noise: nothing of the sum, let alone worker 1's value, is left
    with pytest.raises(sm.RangeError):
        sm.decode(total[2:], NAMES)
    assert sm.layout_digest(()) == b"" and sm.layout_digest(NAMES) != sm.layout_digest(isolating)
