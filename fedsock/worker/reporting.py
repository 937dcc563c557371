"""The evaluations a chief asks of a ``Client``: answering while held, and the final report.

A part of ``fedsock.Client`` (a mixin over its state, as ``RoundClock`` is of
the chief's round controller): ``WorkerEngine`` decides what is sent
(``ReadEval`` -> ``evaluated``, ``Done.report`` -> ``final_report``); this reads
an ``EvalRequest``'s weights into scratch memory, runs the worker's evaluator
on them and sends the answer, and sends the final evaluation once. What
``--share-metrics`` keeps back is kept back here too: these messages never
travel inside a secure-aggregation sum (docs/evaluation.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedsock.errors import FedsockError
from fedsock.transport.errors import ConnectionLost
from fedsock.worker.engine import Action, ReadEval, Send, WorkerEngine
from fedsock.worker.evaluation import Evaluation, MetricSharing, answer_request

if TYPE_CHECKING:
    from fedsock.protocol.connection import AnyMessage
    from fedsock.transport.channel import BlockingChannel
    from fedsock.worker.buffers import ModelMemory

log = logging.getLogger("fedsock.worker")


class Reporting:
    """The Client's answers to evaluation requests and its final report; the state is the Client's."""

    if TYPE_CHECKING:  # the Client's fields these methods use (declared for type checkers only)
        evaluation: Evaluation
        evaluator: Callable[[list[np.ndarray]], Mapping[str, float]] | None
        final_metrics: dict[str, float]
        sharing: MetricSharing
        _engine: WorkerEngine
        _lock: threading.Lock
        _channel: BlockingChannel
        _memory: ModelMemory

        @property
        def finished(self) -> bool: ...

        def _send(self, msg: AnyMessage, arrays: Sequence[np.ndarray] = ()) -> None: ...

    def _evaluated(self, model: list[np.ndarray]) -> list[np.ndarray]:
        """``model`` (just returned by the chief) through the ``evaluate`` callable; the final one's
        metrics become ``final_metrics``."""
        model = self.evaluation.evaluate(model)
        if self.finished and self.evaluation.fn is not None:
            self.final_metrics = dict(self.evaluation.last)
        return model

    @property
    def report_due(self) -> bool:
        """The chief's Done asked for this worker's final evaluation and ``report`` has not sent it."""
        return self._engine.report_due

    def report(self, metrics: Mapping[str, float] | None = None) -> bool:
        """Send the final evaluation to the chief, once, if its Done asked for it (docs/evaluation.md).

        Args:
            metrics: ``val_*`` with ``val_examples`` (the final model on the validation split) and,
                after local fine-tuning, ``personalized_val_*`` with ``personalized_val_examples``;
                default ``final_metrics`` (``close`` sends that if this was never called).

        Returns:
            Whether it was sent (not: the chief asked for none, e.g. with secure aggregation; sent
            already; the connection is gone).
        """
        with self._lock:
            # never inside a secure sum: --share-metrics aggregate-only and none send nothing here
            shared = self.sharing.shared(False, self.final_metrics if metrics is None else metrics)
            actions = self._engine.final_report(shared)
            for act in actions:
                assert isinstance(act, Send)
                try:
                    self._send(act.msg)
                except (OSError, FedsockError) as exc:
                    log.info("could not send the final evaluation to the chief (%s)", exc)
                    return False
            return bool(actions)

    def _answer_request(self, act: ReadEval) -> list[Action]:
        """Read an EvalRequest's weights into scratch memory and evaluate them (the held model stays)."""
        msg = act.msg
        buf = self._memory.scratch(sum(s.wire_nbytes for s in msg.tensors))  # the engine checked: the model's size
        try:
            weights = self._channel.read_weights(msg.tensors, buf)
        except ConnectionLost as exc:
            return self._engine.lost(str(exc))
        metrics = answer_request(self.evaluator, weights, msg.round)
        return self._engine.evaluated(msg, self.sharing.shared(False, metrics))
