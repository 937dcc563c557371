"""Local training as ``fedsock worker`` does it: ``model.fit`` on the chief's ``digits_mlp``, synced every N steps.

``simulate`` trains E epochs from scratch each round, as McMahan et al.
describe FedAvg. The real worker runs one long ``model.fit`` with the
chief's compiled optimizer and hands its weights to the chief every
``sync_every`` steps (``fedsock.keras.FederatedCallback``). ``FitWorker``
mirrors that: minibatches of ``batch_size`` drawn from a fresh permutation
of the shard each epoch (the last batch of an epoch partial, as Keras
shuffles), SGD with momentum (Keras' update ``v = m v - lr g; w += v``)
whose velocity carries over from round to round as the optimizer's does, a
validation share held out as the worker's ``--val-split`` does, examples
counted per batch, and FedProx's proximal step after every optimizer step.
``simulate_fit`` runs the demo's setup this way in a fraction of a second
per run: ``bench/strategy_defaults.py`` tunes the strategies' defaults on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsock.aggregation import Strategy
from fedsock.sim.federation import Attack, Federation, RunResult, federate
from fedsock.sim.mlp import Params, gradients
from fedsock.worker.evaluation import split_validation


@dataclass(frozen=True)
class FitPlan:
    """What a worker trains with; the defaults are what ``fedsock demo`` runs.

    Attributes:
        sync_every: optimizer steps between syncs (the demo's chief: ``--sync-every 10``).
        batch_size: examples per step (``--batch-size 32``).
        lr, momentum: the SGD optimizer ``fedsock.models.digits_mlp`` compiles (0.05, 0.9).
        val_split: share of each shard held out for validation (the worker's ``--val-split``, 0.1).
    """

    sync_every: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    val_split: float = 0.1


class FitWorker:
    """One worker's ``model.fit``: its minibatch stream and optimizer state across rounds.

    Args:
        x, y: the examples it trains on.
        plan: steps, batch, optimizer.
        rng: shuffles each epoch.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, plan: FitPlan, rng: np.random.Generator) -> None:
        self.x, self.y, self.plan, self.rng = x, y, plan, rng
        self._order = np.empty(0, np.int64)
        self._pos = 0
        self._velocity: Params | None = None

    def _batch(self) -> np.ndarray:
        if self._pos >= len(self._order):  # a new epoch
            self._order, self._pos = self.rng.permutation(len(self.y)), 0
        idx = self._order[self._pos : self._pos + self.plan.batch_size]
        self._pos += len(idx)
        return idx

    def train(self, params: Params, mu: float = 0.0) -> tuple[Params, int]:
        """``sync_every`` steps from the global ``params`` (not modified).

        Returns:
            The trained weights and the examples trained on (FedAvg's weight).
        """
        start = [np.array(p, np.float32) for p in params]
        w = [p.copy() for p in start]
        if self._velocity is None:
            self._velocity = [np.zeros_like(p) for p in w]
        lr, momentum = np.float32(self.plan.lr), np.float32(self.plan.momentum)
        shrink = np.float32(1.0 / (1.0 + self.plan.lr * mu))
        examples = 0
        for _ in range(self.plan.sync_every):
            idx = self._batch()
            _, grads = gradients(w, self.x[idx], self.y[idx])
            for i, g in enumerate(grads):
                v = self._velocity[i]
                v *= momentum
                v -= lr * g.astype(np.float32, copy=False)
                w[i] += v
                if mu:  # FederatedCallback's proximal step
                    w[i] = start[i] + (w[i] - start[i]) * shrink
            examples += len(idx)
        return w, examples


def simulate_fit(fed: Federation, strategy: Strategy, *, rounds: int, seed: int, plan: FitPlan = FitPlan(),
                 target: float | None = None, attack: Attack | None = None, hidden: int = 64) -> RunResult:
    """``simulate`` with workers that train as ``fedsock worker`` does (``FitWorker``).

    Args:
        fed: the workers' shards (each loses ``plan.val_split`` to validation) and the holdout.
        strategy: reducer, server transform and FedProx ``mu``.
        rounds: the most rounds to run.
        seed: initial model and every worker's shuffling.
        plan: the workers' training.
        target, attack, hidden: as ``simulate``.

    Returns:
        The holdout accuracy after each round (index 0: the initial model).
    """
    workers = []
    for k, (x, y) in enumerate(fed.shards):
        xt, yt, _, _ = split_validation(x, y, plan.val_split, 0)
        workers.append(FitWorker(xt, yt, plan, np.random.default_rng([seed, k])))

    def train(k: int, weights: Params) -> tuple[Params, int, np.random.Generator]:
        trained, examples = workers[k].train(weights, strategy.mu)
        return trained, examples, workers[k].rng

    return federate(fed.holdout, len(workers), strategy, train, rounds=rounds, seed=seed, target=target,
                    attack=attack, hidden=hidden)
