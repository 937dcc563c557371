"""How a round is finished once the controller says it may close: one interface, three closers.

- ``LocalCloser``: the chief's own reducer and server transform.
- ``SecureCloser``: a secure-aggregation attempt; the chief sees only the sum.
- ``RelayCloser``: the round's combined update goes to an upstream chief,
  whose answer becomes the model.

New ways of finishing a round are a new closer, not an edit of the chief.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from fedsock.chief.evaluation import WorkerMetrics, relayed
from fedsock.chief.outcomes import RoundResult
from fedsock.chief.relay import Relay
from fedsock.chief.rounds import RoundController
from fedsock.chief.secure import SecureAggregation, Send

log = logging.getLogger("fedsock.chief")


class RoundCloser(Protocol):
    async def close(self, ctrl: RoundController, now: float) -> RoundResult | None:
        """Finish the open round (``ctrl.should_close(now)`` holds).

        Returns:
            The closed round, or None if it stays open (e.g. a failed secure
            aggregation attempt that starts over).
        """


class LocalCloser:
    """Combines the round here, with the strategy's reducer and transform."""

    async def close(self, ctrl: RoundController, now: float) -> RoundResult | None:
        return ctrl.close(now)


class SecureCloser:
    """Runs a secure-aggregation attempt over the workers who sent keys.

    Args:
        secure: the chief's secure-aggregation state.
        send: sends a message to a worker (False if it could not).
        alive: whether a worker is still connected.
        hold: marks a worker as waiting for the round's model.
    """

    def __init__(self, secure: SecureAggregation, send: Send, alive: Callable[[int], bool],
                 hold: Callable[[int], None]) -> None:
        self.secure, self.send, self.alive, self.hold = secure, send, alive, hold

    async def close(self, ctrl: RoundController, now: float) -> RoundResult | None:
        outcome = await self.secure.run(self.send, self.alive)
        if outcome is None:
            return None
        for worker in sorted(self.secure.waiting_for_model()):
            if self.alive(worker):
                self.hold(worker)
        result = ctrl.close_with(time.monotonic(), outcome.average, outcome.workers, outcome.weight)
        return replace(result, extra={"secure_agg": {"attempt": outcome.attempt, "dropped": len(outcome.dropped),
                                                     "unmask_s": round(outcome.unmask_s, 4)}},
                       federated=outcome.metrics)


class RelayCloser:
    """Sends the round's weighted mean upstream, weighted by its total examples; the upstream's
    answer becomes the global model (and its Done ends this relay's run)."""

    def __init__(self, relay: Relay, metrics: WorkerMetrics | None = None) -> None:
        self.relay = relay
        self.metrics = metrics  # the workers' metrics, whose federated averages go upstream with the mean

    async def close(self, ctrl: RoundController, now: float) -> RoundResult | None:
        client = self.relay.client
        mean, examples = ctrl.combined()
        log.info("relay: round %d: sending the mean of %d updates (%d examples) upstream",
                 ctrl.collecting, len(ctrl.submitted), examples)
        evals = {} if self.metrics is None else self.metrics.get(ctrl.collecting, tuple(sorted(ctrl.submitted)))
        model = await asyncio.to_thread(client.sync, mean, examples, relayed({str(w): e for w, e in evals.items()}))
        if client.finished:
            ctrl.rounds = client.round
        return ctrl.adopt(time.monotonic(), client.round, model)
