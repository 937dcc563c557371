"""Evaluation the chief asks for: held workers during a round, every worker at the end.

``EvalRequests`` is the I/O around ``HeldEvaluations`` and ``FinalReports``
(their rules are there): it sends each held worker's ``EvalRequest`` (the
round's starting model) in the reply pool of send slots, within the send
timeout, never delaying the round (a request still waiting for a slot when
its round closes is not sent); it takes each ``EvalResult`` a worker sends;
and after the last round it puts ``report`` in ``Done``, waits for the
reports and writes ``final_evaluation.json``. Only workers whose Hello had
the ``"eval"`` capability are asked, and nobody with ``--secure-agg``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence

from fedsock.chief import finaleval
from fedsock.chief.config import ChiefConfig
from fedsock.chief.evaluation import WorkerEval
from fedsock.chief.heldeval import HeldEvaluations
from fedsock.chief.publish import Publisher
from fedsock.chief.registry import WorkerRegistry
from fedsock.chief.rounds import RoundController
from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol import Done, EvalRequest, EvalResult, TensorSpec
from fedsock.transport.aio import Session

log = logging.getLogger("fedsock.chief")


class EvalRequests:
    """The chief's evaluation requests and the answers to them. Args are the chief's parts it works with."""

    def __init__(self, config: ChiefConfig, ctrl: RoundController, registry: WorkerRegistry[Session],
                 publisher: Publisher) -> None:
        self.config, self.ctrl, self.registry, self.publisher = config, ctrl, registry, publisher
        self.held = HeldEvaluations(0 if config.secure_agg else config.eval_every)
        self.final = finaleval.FinalReports(config.final_eval_timeout)
        self._on: dict[int, Session] = {}  # worker -> the connection its outstanding request went to
        self._tasks: set[asyncio.Task[None]] = set()

    # --- held workers -------------------------------------------------------

    def ask_held(self) -> None:
        """A round opened: ask the workers it holds (after the previous round's fan-out)."""
        for wid in sorted(self.registry.held):
            s = self.registry.live.get(wid)
            if s is not None:
                self.on_held(s)

    def on_held(self, s: Session) -> None:
        """``s``'s worker is held (not sampled for the open round): ask it if this round asks."""
        ctrl, wid = self.ctrl, s.worker_id
        if (wid is None or not s.conn.evals or not ctrl.is_open or ctrl.finished or ctrl.is_selected(wid)
                or wid not in self.registry.held or not self.held.should_ask(wid, ctrl.collecting)):
            return
        self.held.asked(wid, ctrl.collecting)
        self._on[wid] = s
        task = asyncio.get_running_loop().create_task(self._ask(s, wid, ctrl.collecting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, s: Session, wid: int, collecting: int) -> None:
        ctrl, pub = self.ctrl, self.publisher
        sent = False
        try:
            async with pub.slots.hold(s.address, wid):
                # still the round it was asked in, still held, still this connection: else it is moot
                if (ctrl.collecting != collecting or not ctrl.is_open or wid not in self.registry.held
                        or self.registry.live.get(wid) is not s or ctrl.weights is None or ctrl.specs is None):
                    return
                weights = ctrl.weights
                pub.holds.acquire(weights)
                try:
                    n = await s.send(EvalRequest(ctrl.round, ctrl.specs), weights, timeout=self.config.send_timeout)
                finally:
                    pub.holds.release(weights)
                sent = True
                pub.bytes_out += n
                log.debug("%s: asked to evaluate the model of round %d (held in round %d)", s.label,
                          collecting - 1, collecting)
        except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the round
            log.info("%s: could not send EvalRequest (%s); dropping the connection", s.label,
                     exc or type(exc).__name__)
            s.abort()  # a half-sent weights message leaves the connection unusable
        finally:
            if not sent:
                self._cancel(wid, s)

    def _cancel(self, wid: int, s: Session) -> None:
        if self._on.get(wid) is s:
            del self._on[wid]
            self.held.cancel(wid)

    def take(self, round_: int) -> tuple[dict[int, WorkerEval], int]:
        """The held workers' answers that count for closed round ``round_``, and how many were asked."""
        return self.held.take(round_)

    # --- answers ------------------------------------------------------------

    def on_result(self, s: Session, ev: EvalResult) -> None:
        """An ``EvalResult`` from ``s``'s worker.

        Raises:
            RemoteProtocolError: it answers nothing the chief asked (``out_of_order``).
        """
        wid = s.worker_id
        assert wid is not None
        self.publisher.bytes_in += s.conn.last_frame_bytes
        if ev.final:
            self.final.add(wid, ev.metrics)
            log.info("%s: final evaluation received", s.label)
            return
        if self._on.get(wid) is not s:
            raise RemoteProtocolError("an EvalResult the chief did not ask this connection for",
                                      code=ErrorCode.OUT_OF_ORDER)
        counts = self.held.answer(wid, ev.round, ev.metrics, self.ctrl.collecting)
        del self._on[wid]
        if counts:
            log.debug("%s: evaluated the model of round %d", s.label, ev.round)
        else:
            log.info("%s: its evaluation of the model of round %d came after that round closed; dropped",
                     s.label, ev.round)
        self.on_held(s)  # free again: the open round may ask it

    def left(self, s: Session) -> None:
        """``s`` ended: a request sent on it will not be answered."""
        if s.worker_id is not None:
            self._cancel(s.worker_id, s)

    # --- the final evaluation ---------------------------------------------------

    @property
    def asks_final(self) -> bool:
        """Whether Done asks for final reports."""
        return self.config.final_eval_timeout > 0 and not self.config.secure_agg

    def done(self, round_: int, specs: tuple[TensorSpec, ...]) -> Done:
        """The run's Done: with ``report`` unless nobody is asked."""
        return Done(round_, specs, report=self.config.final_eval_timeout if self.asks_final else None)

    def done_for(self, s: Session, round_: int, specs: tuple[TensorSpec, ...]) -> Done:
        """The Done for a worker that (re)joins after the end: with ``report`` if its report is still
        awaited (it was asked on a connection that ended)."""
        wid = s.worker_id
        due = (self.asks_final and s.conn.evals and wid is not None and wid in self.final.pending([wid])
               and self.waiting([wid]))
        return Done(round_, specs, report=self.config.final_eval_timeout if due else None)

    def expect_final(self, sessions: Sequence[Session]) -> None:
        """The Done with ``report`` is about to go to ``sessions``: their reports are awaited from now
        (a session the Done does not reach is dropped, and a worker not connected is not waited for)."""
        if not self.asks_final:
            return
        now = time.monotonic()
        for s in sessions:
            if s.worker_id is not None and s.conn.evals:
                self.final.expect(s.worker_id, self.registry.name_of(s.worker_id), now)

    def waiting(self, live: Iterable[int]) -> bool:
        """Whether a final report is still due from a connected worker, before the deadline."""
        return self.final.waiting(live, time.monotonic())

    def conclude(self, round_: int, holdout: Mapping[str, float]) -> None:
        """Write ``final_evaluation.json`` and log its table."""
        cfg = self.config
        summary = finaleval.summarize(round_, self.final.reports(), self.final.missing(), holdout, cfg.secure_agg)
        path = finaleval.write(cfg.state_dir, summary)
        log.info("%s\n  (%s)", finaleval.table(summary, cfg.final_eval_timeout), path)
