"""The chief's shell around secure aggregation: it moves SecAgg messages and waits.

``SecureAggregation`` keeps the attempt under way (a pure
``fedsock.secagg.chief.ChiefRound``), routes the workers' messages to it, and
drives an attempt through its phases once the round controller says enough
workers are ready. A phase waits until every worker it expects has answered
or hung up, or ``secagg_timeout`` passes. An attempt left with too few
workers is abandoned: its workers get ``SecAggAbort`` and start over with
fresh keys, and the round stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsock.chief.config import ChiefConfig
from fedsock.chief.rounds import Accepted, Duplicate, RoundController, Verdict
from fedsock.protocol.messages import TensorSpec
from fedsock.protocol.secagg import SecAggAbort, SecAggKeys, SecAggReveal, SecAggShares
from fedsock.secagg import fixedpoint
from fedsock.secagg.chief import ChiefRound, TooFewWorkers

log = logging.getLogger("fedsock.chief")

#: Sends a message to a worker; False if it could not.
Send = Callable[[int, object], Awaitable[bool]]


@dataclass
class Outcome:
    """A finished secure round: the weighted average and who is in it."""

    average: list[np.ndarray]
    workers: tuple[int, ...]
    weight: int
    dropped: tuple[int, ...]
    attempt: int
    unmask_s: float  # the chief's time to rebuild the secrets and remove the masks


@dataclass
class SecureAggregation:
    """Secure-aggregation state of the chief (one attempt at a time)."""

    config: ChiefConfig
    controller: RoundController
    attempt: ChiefRound | None = None
    late: set[int] = field(default_factory=set)  # sent keys after the roster went out
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def _words(self) -> int:
        specs = self.controller.specs
        assert specs is not None
        return sum(s.size for s in specs) + 1

    def current(self) -> ChiefRound:
        """The attempt at the round being collected (a new one when the round changed)."""
        ctrl = self.controller
        if self.attempt is None or self.attempt.round != ctrl.collecting:
            self.attempt = self._new(ctrl.collecting, 1)
            self.late = set()
        return self.attempt

    def _new(self, round_: int, attempt: int) -> ChiefRound:
        return ChiefRound(round_, attempt, self._words(), threshold=self.config.secagg_threshold,
                          neighbours=self.config.secagg_neighbours)

    def is_current(self, round_: int, attempt: int) -> bool:
        a = self.attempt
        return a is not None and (a.round, a.attempt) == (round_, attempt)

    # --- messages from workers ------------------------------------------

    def on_keys(self, worker: int, msg: SecAggKeys, connection: int) -> Verdict:
        """A worker is ready: its keys join the attempt, or it waits for the next one."""
        verdict = self.controller.reserve(worker, msg.round, connection)
        if isinstance(verdict, Accepted | Duplicate):
            att = self.current()
            if att.phase == "keys":
                att.add_keys(worker, msg)
            else:
                self.late.add(worker)
            self.progress.set()
        return verdict

    def on_shares(self, worker: int, msg: SecAggShares) -> None:
        if self.is_current(msg.round, msg.attempt):
            assert self.attempt is not None
            self.attempt.add_shares(worker, msg)
            self.progress.set()

    def on_reveal(self, worker: int, msg: SecAggReveal) -> None:
        if self.is_current(msg.round, msg.attempt):
            assert self.attempt is not None
            self.attempt.add_reveal(worker, msg)
            self.progress.set()

    def check_masked(self, worker: int, round_: int, attempt: int, specs: Sequence[TensorSpec]) -> bool:
        """Before reading a masked update: True if it belongs to the attempt (raises if it does not fit)."""
        if not self.is_current(round_, attempt):
            return False
        assert self.attempt is not None and self.controller.specs is not None
        self.attempt.check_masked(worker, round_, attempt, specs, [s.shape for s in self.controller.specs])
        return True

    def add_masked(self, worker: int, round_: int, attempt: int, arrays: Sequence[np.ndarray]) -> None:
        if self.is_current(round_, attempt):
            assert self.attempt is not None
            self.attempt.add_masked(worker, arrays)
            self.progress.set()

    def left(self, worker: int) -> None:
        """A worker's connection ended."""
        att = self.attempt
        if att is not None and att.phase == "keys" and worker in att.keys:
            att.drop_keys(worker)
            self.controller.withdraw(worker)
        self.progress.set()

    # --- driving an attempt ---------------------------------------------

    async def run(self, send: Send, alive: Callable[[int], bool]) -> Outcome | None:
        """Take the attempt through its phases; None if it had to be abandoned (workers told)."""
        att = self.current()
        for w in [w for w in att.keys if not alive(w)]:
            att.drop_keys(w)
        try:
            rosters = att.rosters(self.config.min_workers)
            log.info("round %d: secure aggregation attempt %d with %d workers (threshold %d%s)", att.round,
                     att.attempt, len(rosters), att.threshold,
                     f", {self.config.secagg_neighbours} neighbours each" if self.config.secagg_neighbours else "")
            await asyncio.gather(*(send(w, m) for w, m in rosters.items()))
            await self._wait(att, alive)
            await asyncio.gather(*(send(w, m) for w, m in att.inboxes().items()))
            await self._wait(att, alive)
            unmask = att.unmask()
            await asyncio.gather(*(send(w, unmask) for w in unmask.survivors))
            await self._wait(att, alive)
            started = time.perf_counter()
            total = await asyncio.to_thread(att.finish)
            unmask_s = time.perf_counter() - started
            assert self.controller.specs is not None
            average, weight = fixedpoint.decode(total, [s.shape for s in self.controller.specs])
            if not all(np.all(np.isfinite(a)) for a in average):
                raise TooFewWorkers("the unmasked average is not finite")
        except (TooFewWorkers, fixedpoint.RangeError) as exc:
            await self._abort(att, str(exc), send)
            return None
        if unmask.dropped:
            log.warning("round %d: %s dropped out after sharing keys; their masks were removed",
                        att.round, ", ".join(map(str, unmask.dropped)))
        return Outcome(average, unmask.survivors, weight, unmask.dropped, att.attempt, unmask_s)

    async def _wait(self, att: ChiefRound, alive: Callable[[int], bool]) -> None:
        deadline = time.monotonic() + self.config.secagg_timeout
        while True:
            pending = {w for w in att.waiting() if alive(w)}
            if not pending:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("round %d attempt %d: no answer from %s within %g s; going on without them",
                            att.round, att.attempt, ", ".join(map(str, sorted(pending))),
                            self.config.secagg_timeout)
                return
            self.progress.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)

    async def _abort(self, att: ChiefRound, reason: str, send: Send) -> None:
        told = set(att.keys) | self.late
        log.warning("round %d: secure aggregation attempt %d failed (%s); the round stays open and "
                    "starts over with fresh keys", att.round, att.attempt, reason)
        self.attempt = self._new(att.round, att.attempt + 1)
        self.late = set()
        self.controller.restart(time.monotonic())
        msg = SecAggAbort(att.round, att.attempt, reason)
        await asyncio.gather(*(send(w, msg) for w in sorted(told)))

    def waiting_for_model(self) -> set[int]:
        """Workers who sent keys in this round and wait for its model (after a successful attempt)."""
        att = self.attempt
        return (set(att.keys) if att is not None else set()) | self.late
