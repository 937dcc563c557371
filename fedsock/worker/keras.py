"""``FederatedCallback``: federated averaging inside ``model.fit``."""

from __future__ import annotations

import logging
from typing import Any

import keras

from fedsock.worker.client import Client

log = logging.getLogger("fedsock.worker")


class FederatedCallback(keras.callbacks.Callback):
    """Sync the model with the chief every ``sync_every`` training steps.

    At the start of training the model takes the global weights (or, if the
    chief has none yet, proposes its own). Every ``sync_every`` steps it sends
    its weights with the number of examples trained since the last sync and
    continues from the average. When the chief says the run is over, the
    model holds the final weights and ``fit`` stops.

    Args:
        client: a connected ``fedsock.Client``.
        sync_every: steps between syncs (default: the chief's plan).
        batch_size: the batch size given to ``fit`` (default: the plan's),
            used to count examples.
        num_examples: size of the training set; makes the count exact for the
            last, partial batch of an epoch.
        progress: show a Keras progress bar of the local steps towards each
            sync (use with ``fit(verbose=0)``: fit's own bar counts epochs,
            which mean little here).
    """

    def __init__(self, client: Client, sync_every: int | None = None, batch_size: int | None = None,
                 num_examples: int | None = None, progress: bool = False) -> None:
        super().__init__()
        self.client = client
        self.sync_every = sync_every or client.plan.sync_every
        self.batch_size = batch_size or client.plan.batch_size
        self.num_examples = num_examples
        self.progress = progress
        self._steps = 0
        self._examples = 0
        self._bar: keras.utils.Progbar | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.model.set_weights(self.client.join(self.model.get_weights()))
        self._steps = self._examples = 0
        if self.client.finished:
            self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps += 1
        self._examples += self._batch_examples(batch)
        if self.progress:
            self._show(logs)
        if self._steps % self.sync_every == 0:
            self._sync(logs)

    def _show(self, logs: dict[str, Any] | None) -> None:
        numbers = [(k, float(v)) for k, v in (logs or {}).items() if _is_number(v)]
        if self._bar is None:
            print(f"round {self.client.round + 1}/{self.client.plan.rounds}", flush=True)
            self._bar = keras.utils.Progbar(self.sync_every, stateful_metrics=[k for k, _ in numbers],
                                            unit_name="step")
        step = (self._steps - 1) % self.sync_every + 1
        self._bar.update(step, values=numbers, finalize=step == self.sync_every)
        if step == self.sync_every:
            self._bar = None

    def _batch_examples(self, batch: int) -> int:
        if self.num_examples is None:
            return self.batch_size
        return max(0, min(self.batch_size, self.num_examples - batch * self.batch_size))

    def _sync(self, logs: dict[str, Any] | None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        new = self.client.sync(self.model.get_weights(), self._examples, metrics)
        self.model.set_weights(new)
        log.info("round %d: synced after %d local examples (%s)", self.client.round, self._examples,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "no metrics")
        self._examples = 0
        if self.client.finished:
            self.model.stop_training = True


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
