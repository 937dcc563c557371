"""Simulated federated rounds: workers train in-process, the chief's aggregation combines them.

One round is what the chief does: fold every worker's weights into the
strategy's reducer (weighted by its example count), then
``fedsock.aggregation.finish_round``, the function the chief's round
controller finishes a round with: the combined weights minus the global
weights are the delta, the strategy's server transform runs on it and the
result is added to the global model. Only the transport is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedsock.aggregation import BufferPool, Strategy, finish_round, init_accumulator
from fedsock.data import Partition, load_digits_arrays, partition_indices
from fedsock.sim.mlp import Params, accuracy, init_mlp, local_train


@dataclass(frozen=True)
class Federation:
    """Each worker's ``(x, y)`` and the chief's holdout ``(x, y)``."""

    shards: list[tuple[np.ndarray, np.ndarray]]
    holdout: tuple[np.ndarray, np.ndarray]


def digits_federation(workers: int, partition: str, seed: int, holdout: float = 0.2) -> Federation:
    """scikit-learn's bundled digits split like ``fedsock shard`` does.

    The holdout is drawn first (``holdout`` share), the rest is partitioned
    among ``workers`` with ``fedsock.data.partition_indices``.

    Raises:
        ConfigError: bad partition text or a split that leaves a worker empty.
    """
    x, y = load_digits_arrays()
    perm = np.random.default_rng(seed + 7919).permutation(len(y))
    n_hold = int(round(len(y) * holdout))
    hold, rest = perm[:n_hold], perm[n_hold:]
    xr, yr = x[rest], y[rest]
    parts = partition_indices(yr, workers, Partition.parse(partition), seed)
    return Federation([(xr[i], yr[i]) for i in parts], (x[hold], y[hold]))


@dataclass(frozen=True)
class Attack:
    """What Byzantine workers send instead of their honestly trained weights.

    Attributes:
        kind: ``"scaled"``: ``w_global + factor * (w_trained - w_global)``
            (e.g. factor -10 pushes hard the wrong way); ``"random"``:
            ``w_global`` plus Gaussian noise of standard deviation ``factor``.
        factor: the scale or the noise level.
        workers: how many workers attack (the first ones of the federation).
    """

    kind: str
    factor: float
    workers: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("scaled", "random"):
            raise ValueError(f"attack kind must be 'scaled' or 'random', got {self.kind!r}")

    def apply(self, global_w: Params, trained: Params, rng: np.random.Generator) -> Params:
        """The weights an attacker sends."""
        if self.kind == "scaled":
            return [(g + self.factor * (t - g)).astype(np.float32) for g, t in zip(global_w, trained)]
        return [(g + rng.normal(0.0, self.factor, g.shape)).astype(np.float32) for g in global_w]


@dataclass
class RunResult:
    """Holdout accuracy after each round (index 0: the initial model), and the last model."""

    accuracy: list[float] = field(default_factory=list)
    diverged: bool = False
    weights: Params = field(default_factory=list)

    def rounds_to(self, target: float) -> int | None:
        """First round whose model reaches ``target`` holdout accuracy (None: never)."""
        return rounds_to(self.accuracy, target)


def rounds_to(curve: list[float], target: float) -> int | None:
    """First index of ``curve`` at or above ``target``, or None."""
    for r, a in enumerate(curve):
        if a >= target:
            return r
    return None


def simulate(fed: Federation, strategy: Strategy, *, rounds: int, lr: float, epochs: int,
             batch: int | None, seed: int, target: float | None = None, attack: Attack | None = None,
             hidden: int = 64) -> RunResult:
    """Run up to ``rounds`` federated rounds with every worker taking part in each.

    Args:
        fed: the workers' data and the holdout.
        strategy: reducer, server transform and FedProx ``mu`` (workers add
            the proximal term when ``strategy.mu > 0``).
        rounds: the most rounds to run.
        lr: the workers' SGD learning rate.
        epochs, batch: local epochs E and minibatch size B (None = full
            shard; E=1, B=None is FedSGD).
        seed: initial model and every worker's shuffling.
        target: stop once the holdout accuracy reaches it.
        attack: make some workers Byzantine.
        hidden: hidden units of the MLP.

    Returns:
        The accuracy curve; ``diverged`` if the model stopped being finite.
    """
    worker_rngs = [np.random.default_rng([seed, k]) for k in range(len(fed.shards))]

    def train(k: int, weights: Params) -> tuple[Params, int, np.random.Generator]:
        x, y = fed.shards[k]
        trained = local_train(weights, x, y, epochs=epochs, batch=batch, lr=lr, rng=worker_rngs[k], mu=strategy.mu)
        return trained, len(y), worker_rngs[k]

    return federate(fed.holdout, len(fed.shards), strategy, train, rounds=rounds, seed=seed, target=target,
                    attack=attack, hidden=hidden)


#: One worker's local training: (worker index, global weights) -> (trained weights, examples, its rng).
LocalTraining = Callable[[int, Params], tuple[Params, int, np.random.Generator]]


def federate(holdout: tuple[np.ndarray, np.ndarray], workers: int, strategy: Strategy, train: LocalTraining, *,
             rounds: int, seed: int, target: float | None = None, attack: Attack | None = None,
             hidden: int = 64) -> RunResult:
    """The rounds of ``simulate`` with any local training: each round every worker trains
    (``train``), the strategy combines the results, weighted by their examples.

    Args:
        holdout: the chief's ``(x, y)``.
        workers: how many workers take part (``train`` is called with 0 .. workers - 1).
        seed: the initial model.
        The others: as ``simulate``.
    """
    rng = np.random.default_rng(seed)
    weights = init_mlp(rng, hidden=hidden)
    state = strategy.transform.init(weights)
    # The sums and spent deltas of a round are reused by the next; nothing outside this loop
    # holds the global model, so each round overwrites it (reuse_weights).
    pool = BufferPool(max_bytes=2 * 8 * sum(w.size for w in weights))
    hx, hy = holdout
    result = RunResult([accuracy(weights, hx, hy)])
    for _ in range(rounds):
        if target is not None and result.accuracy[-1] >= target:
            break
        acc = init_accumulator(strategy.reducer, [w.shape for w in weights], pool)
        for k in range(workers):
            trained, examples, worker_rng = train(k, weights)
            if attack is not None and k < attack.workers:
                trained = attack.apply(weights, trained, worker_rng)
            acc = strategy.reducer.add(acc, trained, examples)
        combined = strategy.reducer.result(acc)
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging model overflows
            weights, state, _ = finish_round(weights, combined, strategy.transform, state, pool, spent=True,
                                             reuse_weights=True)
        if not all(np.isfinite(w).all() for w in weights):
            result.diverged = True
            result.accuracy.append(0.0)
            break
        result.accuracy.append(accuracy(weights, hx, hy))
    result.weights = weights
    return result
