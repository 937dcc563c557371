"""``FederatedCallback`` as a Keras user meets it: fit's epochs, whose sync_every is used, a run already over."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from fedsock.errors import ConfigError  # noqa: E402
from fedsock.protocol import Plan  # noqa: E402
from fedsock.worker.keras import FederatedCallback  # noqa: E402


class ChiefStandIn:
    """Stands in for ``fedsock.Client`` against a chief of ``rounds`` rounds: each sync is one round,
    the last one's model is the final one (``finished``)."""

    def __init__(self, rounds: int, sync_every: int, batch_size: int, start_round: int = 0) -> None:
        self.plan = Plan(rounds=rounds, sync_every=sync_every, batch_size=batch_size)
        self.round = start_round
        self.weights = [np.full((3, 2), 7.0, np.float32), np.full(2, 7.0, np.float32)]
        self.finished = start_round >= rounds
        self.syncs = 0

    def join(self, weights):
        return [w.copy() for w in self.weights]

    def sync(self, weights, num_examples, metrics=None, *, reuse=None):
        self.syncs += 1
        self.round += 1
        self.finished = self.round >= self.plan.rounds
        self.weights = [np.array(w) for w in weights]
        return [w.copy() for w in self.weights]


def model():
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    m.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return m


def data(n: int = 50):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)


def test_epochs_is_just_enough_for_the_rounds_left_and_fit_stops_at_done(caplog):
    x, y = data(50)  # batch 8: 7 steps per epoch
    client = ChiefStandIn(rounds=4, sync_every=10, batch_size=8)
    cb = FederatedCallback(client, num_examples=len(x))
    assert cb.epochs == math.ceil(4 * 10 / 7) == 6
    with caplog.at_level(logging.INFO, logger="fedsock.worker"):
        history = model().fit(x, y, batch_size=8, epochs=cb.epochs, callbacks=[cb], verbose=0)
    assert client.finished and client.syncs == 4
    assert len(history.epoch) == 6  # the last epoch cut short by Done, none beyond epochs
    assert "every 10 steps (the chief's plan)" in caplog.text
    assert "overrides" not in caplog.text and "fit ended before" not in caplog.text
    # a worker joining later needs fewer
    assert FederatedCallback(ChiefStandIn(4, 10, 8, start_round=3), num_examples=50).epochs == 2
    with pytest.raises(ConfigError, match="num_examples"):
        _ = FederatedCallback(client).epochs


def test_a_sync_every_other_than_the_plan_s_is_used_and_logged(caplog):
    client = ChiefStandIn(rounds=2, sync_every=10, batch_size=8)
    with caplog.at_level(logging.INFO, logger="fedsock.worker"):
        cb = FederatedCallback(client, sync_every=3, num_examples=50)
    assert cb.sync_every == 3
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and "overrides the chief's plan" in warning[0].getMessage()
    assert "every 3" in warning[0].getMessage() and "every 10" in warning[0].getMessage()
    caplog.clear()
    assert FederatedCallback(client, sync_every=10).sync_every == 10  # the plan's own value: no warning
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_fit_that_ends_before_the_chief_is_done_says_so(caplog):
    x, y = data(16)
    client = ChiefStandIn(rounds=5, sync_every=2, batch_size=8)
    cb = FederatedCallback(client, num_examples=len(x))
    with caplog.at_level(logging.WARNING, logger="fedsock.worker"):
        model().fit(x, y, batch_size=8, epochs=1, callbacks=[cb], verbose=0)
    assert not client.finished
    assert "fit ended before the chief finished" in caplog.text and "epochs" in caplog.text


def test_a_run_already_over_trains_nothing_and_leaves_the_final_model():
    x, y = data(16)
    client = ChiefStandIn(rounds=2, sync_every=2, batch_size=8, start_round=3)  # a chief restarted past its end
    cb = FederatedCallback(client, num_examples=len(x))
    m = model()
    m.fit(x, y, batch_size=8, epochs=cb.epochs, callbacks=[cb], verbose=0)
    assert client.syncs == 0
    for got, want in zip(m.get_weights(), client.weights):
        np.testing.assert_array_equal(got, want)
