"""FedProx in ``FederatedCallback``: a proximal step towards the last global model after each batch."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from fedsock.protocol import Plan  # noqa: E402
from fedsock.worker.keras import FederatedCallback  # noqa: E402

LR = 0.1


class FakeClient:
    """Stands in for ``fedsock.Client``: hands out fixed global models, records what it was sent."""

    def __init__(self, mu: float, start: list[np.ndarray], later: list[np.ndarray]) -> None:
        self.plan = Plan(rounds=1, sync_every=2, batch_size=4, mu=mu)
        self.start, self.later = start, later
        self.finished = False
        self.round = 0
        self.sent: list[list[np.ndarray]] = []

    def join(self, weights):
        return [w.copy() for w in self.start]

    def sync(self, weights, num_examples, metrics=None, *, reuse=None):
        self.sent.append([np.array(w) for w in weights])
        self.round += 1
        return [w.copy() for w in self.later]


def model(weights):
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    m.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    m.set_weights(weights)
    return m


def sgd_step(weights, x, y):
    """One plain SGD step of MSE on a 3 -> 2 dense layer, in numpy."""
    k, b = weights
    err = x @ k + b - y
    g = 2.0 * err / err.size
    return [k - LR * x.T @ g, b - LR * g.sum(axis=0)]


def prox(weights, anchor, mu):
    return [a + (w - a) / (1.0 + LR * mu) for w, a in zip(weights, anchor)]


@pytest.mark.parametrize("mu", [0.0, 0.5, 4.0])
def test_each_batch_ends_with_a_proximal_step_towards_the_last_global_model(mu):
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
    later = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)]
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = rng.normal(size=(12, 2)).astype(np.float32)
    client = FakeClient(mu, start, later)
    cb = FederatedCallback(client)  # mu, sync_every 2 and batch 4 come from the plan
    assert cb.mu == mu
    m = model([np.zeros((3, 2), np.float32), np.zeros(2, np.float32)])
    m.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[cb])

    # reference: batches 1-2 pulled towards `start`, sync after batch 2, batch 3 pulled towards `later`
    w = [a.astype(np.float64) for a in start]
    for i in range(2):
        w = sgd_step(w, x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4])
        if mu:
            w = prox(w, start, mu)
    assert len(client.sent) == 1
    for got, want in zip(client.sent[0], w):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    w = sgd_step([a.astype(np.float64) for a in later], x[8:], y[8:])
    if mu:
        w = prox(w, later, mu)
    for got, want in zip(m.get_weights(), w):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_explicit_mu_overrides_the_plan():
    z = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
    assert FederatedCallback(FakeClient(0.5, z, z), mu=0.0).mu == 0.0
    assert FederatedCallback(FakeClient(0.0, z, z), mu=0.25).mu == 0.25
