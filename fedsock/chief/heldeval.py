"""Held workers evaluating on request, as plain data: whom to ask, and what their answers count for.

With client sampling (``--fraction``), a worker whose update is not sampled
for the open round is *held*: it trains no more until a round samples it.
Every ``--eval-every`` N-th round (rounds N, 2N, ..., as Keras'
``validation_freq``) the chief sends each held worker the round's starting
model in an ``EvalRequest``; the worker evaluates it on its validation split
without training and answers with one ``EvalResult``. ``HeldEvaluations``
decides who is asked and what an answer is:

* a worker is asked at most once per round and has at most
  ``MAX_EVAL_REQUESTS_PER_WORKER`` request outstanding (it is not asked again
  while one is);
* an answer must match the worker's outstanding request (its round), else it
  is refused (``out_of_order``): one answer per request, none unasked;
* an answer that arrives while its round is still being collected counts for
  that round, its ``val_*`` metrics only (within ``KEPT_METRICS`` and
  ``KEPT_METRIC_NAME_BYTES``), exactly like a trained worker's; one that
  arrives after the round closed is dropped (counted in ``late``): the round
  never waits for held workers.

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedsock.chief.evaluation import VAL, WorkerEval, WorkerMetrics
from fedsock.errors import ErrorCode, RemoteProtocolError


@dataclass
class HeldEvaluations:
    """The evaluation requests to held workers and their answers, per round.

    Args:
        every: ``--eval-every``: rounds N, 2N, ... ask (0: never).
    """

    every: int = 1
    #: Answers that arrived after their round had closed (dropped).
    late: int = 0
    #: worker -> the model round of its one outstanding request (limits.MAX_EVAL_REQUESTS_PER_WORKER)
    _outstanding: dict[int, int] = field(default_factory=dict)
    _asked: dict[int, set[int]] = field(default_factory=dict)  # round collected -> workers asked in it
    _answers: WorkerMetrics = field(default_factory=WorkerMetrics)

    def due(self, collecting: int) -> bool:
        """Whether held workers are asked while round ``collecting`` is collected."""
        return self.every > 0 and collecting % self.every == 0

    def should_ask(self, worker: int, collecting: int) -> bool:
        """Whether ``worker`` (held, able to evaluate) is to be asked now, in round ``collecting``."""
        return (self.due(collecting) and worker not in self._outstanding  # MAX_EVAL_REQUESTS_PER_WORKER: 1
                and worker not in self._asked.get(collecting, ()))

    def asked(self, worker: int, collecting: int) -> None:
        """``worker`` is sent the model round ``collecting`` started from (round ``collecting - 1``)."""
        self._outstanding[worker] = collecting - 1
        self._asked.setdefault(collecting, set()).add(worker)

    def cancel(self, worker: int) -> None:
        """``worker``'s request will not be answered (it was not sent, or its connection ended)."""
        self._outstanding.pop(worker, None)

    def answer(self, worker: int, model_round: int, metrics: Mapping[str, float], collecting: int) -> bool:
        """``worker`` evaluated the model of ``model_round``; ``collecting`` is the round being collected now.

        Returns:
            True if the answer counts for its round, False if it came after the round closed.

        Raises:
            RemoteProtocolError: ``out_of_order``: no request to this worker for that model is outstanding.
        """
        if self._outstanding.get(worker) != model_round:
            raise RemoteProtocolError(
                f"an EvalResult for round {model_round} that the chief did not ask for (it answers one "
                "EvalRequest, once)", code=ErrorCode.OUT_OF_ORDER)
        del self._outstanding[worker]
        if model_round + 1 != collecting:
            self.late += 1
            return False
        self._answers.put(collecting, worker, 0, {k: v for k, v in metrics.items() if k.startswith(VAL)})
        return True

    def take(self, round_: int) -> tuple[dict[int, WorkerEval], int]:
        """The answers that count for closed round ``round_`` (by worker) and how many workers were
        asked in it; that round and older ones are forgotten."""
        asked = self._asked.get(round_, set())
        answers = self._answers.take(round_, tuple(sorted(asked)))
        for r in [r for r in self._asked if r <= round_]:
            del self._asked[r]
        return answers, len(asked)

    @property
    def outstanding(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._outstanding)
