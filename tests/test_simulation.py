"""The in-process simulation: a reduced reproduction of McMahan et al. and the Byzantine check.

The full study is ``bench/reproduce_fedavg.py`` (docs/results.md); these are
one-seed, few-round versions of its central claims.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fedsock.aggregation import Strategy, fedadam, parse_strategy, weighted_mean
from fedsock.sim import Attack, accuracy, digits_federation, gradients, init_mlp, local_train, simulate

TARGET = 0.95


def test_mlp_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    params = [p.astype(np.float64) for p in init_mlp(rng, hidden=5)]
    x = rng.random((6, 64))
    y = rng.integers(0, 10, 6)
    _, grads = gradients(params, x, y)
    eps = 1e-6
    for p, g in zip(params, grads):
        for idx in [tuple(rng.integers(0, s) for s in p.shape) for _ in range(5)]:
            old = p[idx]
            p[idx] = old + eps
            up, _ = gradients(params, x, y)
            p[idx] = old - eps
            down, _ = gradients(params, x, y)
            p[idx] = old
            assert g[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-8)


def test_fedprox_term_pulls_local_training_towards_the_global_model():
    fed = digits_federation(4, "labels:2", seed=0)
    x, y = fed.shards[0]
    start = init_mlp(np.random.default_rng(1))
    drift = {}
    for mu in (0.0, 1.0, 10.0):
        w = local_train(start, x, y, epochs=3, batch=10, lr=0.1, rng=np.random.default_rng(2), mu=mu)
        drift[mu] = sum(float(np.sum((a - b) ** 2)) for a, b in zip(w, start))
    assert drift[0.0] > drift[1.0] > drift[10.0] > 0


def test_fedavg_e5_needs_fewer_rounds_than_fedsgd_on_iid_digits():
    fed = digits_federation(10, "iid", seed=0)
    fedavg = parse_strategy("fedavg")
    sgd = simulate(fed, fedavg, rounds=150, lr=1.0, epochs=1, batch=None, seed=0, target=TARGET)
    avg = simulate(fed, fedavg, rounds=150, lr=0.3, epochs=5, batch=10, seed=0, target=TARGET)
    r_sgd, r_avg = sgd.rounds_to(TARGET), avg.rounds_to(TARGET)
    assert r_sgd is not None and r_avg is not None, (sgd.accuracy[-5:], avg.accuracy[-5:])
    assert r_avg * 3 <= r_sgd, (r_avg, r_sgd)
    assert sgd.accuracy[0] < 0.3  # both start from an untrained model


def test_one_byzantine_worker_of_seven_breaks_the_mean_but_not_robust_rules():
    target, rounds = 0.94, 40
    fed = digits_federation(7, "iid", seed=0)

    def run(rule, attack=None, cap=rounds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a diverging model overflows
            return simulate(fed, parse_strategy(rule), rounds=cap, lr=0.1, epochs=1, batch=10, seed=0,
                            target=target, attack=attack)

    assert run("fedavg").rounds_to(target) is not None  # without the attacker the mean gets there
    for attack, rules in ((Attack("scaled", -10.0), ["median", "trimmed:0.15", "krum:1"]),
                          (Attack("random", 10.0), ["median", "krum:1"])):
        mean = run("fedavg", attack, cap=30)
        assert mean.rounds_to(target) is None and max(mean.accuracy[1:]) < 0.9, attack
        for rule in rules:
            got = run(rule, attack)
            assert got.rounds_to(target) is not None, (attack, rule, got.accuracy[-5:])


@pytest.mark.parametrize("strategy", [parse_strategy("fedavg"), parse_strategy("fedadam", server_lr=0.05),
                                      parse_strategy("median"), Strategy(weighted_mean(np.float32), fedadam())],
                         ids=["fedavg", "fedadam", "median", "float32 sum"])
def test_simulated_rounds_equal_the_plain_numpy_rounds_bit_for_bit(strategy):
    """The simulation finishes its rounds with finish_round, reusing buffers; plain numpy gives the same bits."""
    fed = digits_federation(3, "iid", seed=1)
    got = simulate(fed, strategy, rounds=4, lr=0.1, epochs=1, batch=20, seed=3, hidden=16)
    weights = init_mlp(np.random.default_rng(3), hidden=16)
    rngs = [np.random.default_rng([3, k]) for k in range(3)]
    state = strategy.transform.init(weights)
    curve = [accuracy(weights, *fed.holdout)]
    for _ in range(4):
        acc = strategy.reducer.init([w.shape for w in weights])
        for k, (x, y) in enumerate(fed.shards):
            acc = strategy.reducer.add(acc, local_train(weights, x, y, epochs=1, batch=20, lr=0.1, rng=rngs[k]),
                                       len(y))
        delta = [c - w for c, w in zip(strategy.reducer.result(acc), weights)]
        out, state = strategy.transform.update(delta, state, weights)
        weights = [(w.astype(np.float64) + np.asarray(d, np.float64)).astype(w.dtype) for w, d in zip(weights, out)]
        curve.append(accuracy(weights, *fed.holdout))
    assert got.accuracy == curve
    for a, b in zip(got.weights, weights):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
