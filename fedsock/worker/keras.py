"""``FederatedCallback``: federated averaging inside ``model.fit``."""

from __future__ import annotations

import logging
from typing import Any

import keras

from fedsock.worker.client import Client
from fedsock.worker.evaluation import training_metrics, validation_metrics

log = logging.getLogger("fedsock.worker")


class FederatedCallback(keras.callbacks.Callback):
    """Sync the model with the chief every ``sync_every`` training steps.

    At the start of training the model takes the global weights (or, if the
    chief has none yet, proposes its own). Every ``sync_every`` steps it sends
    its weights with the number of examples trained since the last sync and
    continues from the average. When the chief says the run is over, the
    model holds the final weights and ``fit`` stops.

    FedProx: with ``mu > 0`` (from the chief's plan, ``--strategy fedprox
    --mu MU``), the local objective is ``loss(w) + mu/2 * ||w - w_global||^2``
    where ``w_global`` is the model received at the last sync. The callback
    optimizes it by proximal gradient (forward-backward splitting): after
    every optimizer step on the loss, each trainable variable takes the exact
    proximal step of the quadratic term with the optimizer's current
    learning rate ``lr``::

        w <- w_global + (w - w_global) / (1 + lr * mu)

    For plain SGD this is the gradient step on the FedProx objective to first
    order in ``lr * mu`` (and stable for any ``lr * mu``); with momentum or
    Adam it is a decoupled proximal term, the way AdamW decouples weight
    decay. Non-trainable variables (e.g. batch-norm statistics) are not pulled.

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
        mu: FedProx coefficient (default: the plan's, 0 = plain FedAvg).
        validation_data: ``(x, y)`` this worker never trains on: every global
            model received is evaluated on it with the model's compiled
            metrics before training continues from it, and the result goes
            with the next sync as ``val_<metric>`` and ``val_examples``
            (training metrics as ``train_<metric>``, then counted since the
            previous sync). ``final_metrics`` holds the final model's (and the
            client's ``final_metrics``, which its final report sends). While the
            worker is held (not sampled), the chief's evaluation requests are
            answered on it too (``client.evaluator``), the model's own weights
            restored afterwards; a Client made with ``evaluations=True`` says so
            to the chief (``worker.py`` does when it has a validation split).
    """

    def __init__(self, client: Client, sync_every: int | None = None, batch_size: int | None = None,
                 num_examples: int | None = None, progress: bool = False, mu: float | None = None,
                 validation_data: tuple[Any, Any] | None = None) -> None:
        super().__init__()
        self.client = client
        self.sync_every = sync_every or client.plan.sync_every
        self.batch_size = batch_size or client.plan.batch_size
        self.num_examples = num_examples
        self.progress = progress
        self.mu = client.plan.mu if mu is None else float(mu)
        self._steps = 0
        self._examples = 0
        self._bar: keras.utils.Progbar | None = None
        self._anchor: list[Any] = []
        self._last: list[Any] | None = None  # the model last received, already copied into the model
        self.validation_data = validation_data
        self._val: dict[str, float] = {}  # the validation metrics of the model last received
        #: The validation metrics of the final model (with ``validation_data``, once the run is over).
        self.final_metrics: dict[str, float] = {}
        if validation_data is not None:
            client.evaluator = self._evaluate

    def _evaluate(self, weights: list[Any]) -> dict[str, float]:
        """``weights`` (a model the chief asks about) on ``validation_data``; the model keeps its own."""
        assert self.validation_data is not None
        x, y = self.validation_data
        own = self.model.get_weights()
        self.model.set_weights(weights)
        try:
            result = self.model.evaluate(x, y, batch_size=max(self.batch_size, 256), verbose=0, return_dict=True)
        finally:
            self.model.set_weights(own)
            self.model.reset_metrics()
        return {**{k: float(v) for k, v in result.items() if _is_number(v)}, "examples": float(len(y))}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._last = self.client.join(self.model.get_weights())
        self.model.set_weights(self._last)
        self._validate()
        self._steps = self._examples = 0
        self._set_anchor()
        if self.mu:
            log.info("FedProx: proximal term mu/2 ||w - w_global||^2 with mu = %g", self.mu)
        if self.client.finished:
            self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps += 1
        self._examples += self._batch_examples(batch)
        if self.progress:
            self._show(logs)
        if self.mu:
            self._proximal_step()
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

    def _set_anchor(self) -> None:
        """Remember the global model the proximal term pulls towards."""
        if self.mu:
            self._anchor = [keras.ops.copy(v.value) for v in self.model.trainable_variables]

    def _proximal_step(self) -> None:
        lr = float(self.model.optimizer.learning_rate)  # the current value, also under a schedule
        shrink = 1.0 / (1.0 + lr * self.mu)
        for v, anchor in zip(self.model.trainable_variables, self._anchor):
            v.assign(anchor + (v.value - anchor) * shrink)

    def _batch_examples(self, batch: int) -> int:
        if self.num_examples is None:
            return self.batch_size
        return max(0, min(self.batch_size, self.num_examples - batch * self.batch_size))

    def _validate(self) -> None:
        """Evaluate the global model just set on ``validation_data`` (its compiled metrics)."""
        if self.validation_data is None:
            return
        x, y = self.validation_data
        result = self.model.evaluate(x, y, batch_size=max(self.batch_size, 256), verbose=0, return_dict=True)
        self.model.reset_metrics()  # evaluate shares the training metrics' state: start them afresh
        self._val = validation_metrics({k: float(v) for k, v in result.items() if _is_number(v)}, len(y))
        if self.client.finished:
            self.final_metrics = dict(self._val)
            self.client.final_metrics = dict(self._val)
        log.info("round %d: global model on %d local validation examples: %s", self.client.round, len(y),
                 ", ".join(f"{k} {v:.4f}" for k, v in self._val.items() if k != "val_examples"))

    def _sync(self, logs: dict[str, Any] | None) -> None:
        metrics = {**self._val, **training_metrics({k: float(v) for k, v in (logs or {}).items() if _is_number(v)})}
        # set_weights copies: the model received last time is ours to hand back for the new one
        new = self.client.sync(self.model.get_weights(), self._examples, metrics, reuse=self._last)
        self.model.set_weights(new)
        self._last = new
        self._validate()
        self._set_anchor()
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
