"""The chief's shell around secure aggregation: it moves SecAgg messages and waits.

``SecureAggregation`` keeps the attempt under way (a pure
``fedsock.secagg.chief.ChiefRound``), routes the workers' messages to it, and
drives an attempt through its phases once the round controller says enough
workers are ready. A phase waits until every worker it expects has answered
or hung up, or ``secagg_timeout`` passes. An attempt left with too few
workers is abandoned: its workers get ``SecAggAbort`` and start over with
fresh keys, and the round stays open.

Nothing a worker sends can stop the chief: every failure while finishing an
attempt abandons only that attempt. Workers that misbehave (keys that are not
usable points, named by a neighbour whose shares or key agreement they broke,
reveal shares that disagree with the others) are left out of the rest of the
round (``excluded``): their keys are not taken into any further attempt, and
they get the round's model when it closes. A worker can name neighbours once
per round; naming again in the same round leaves it out too (the chief cannot
tell whether the named worker or the one naming it lies, and one of them
keeps the round from closing).
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
from fedsock.errors import PeerMisbehaved, RemoteProtocolError
from fedsock.protocol.messages import TensorSpec
from fedsock.protocol.secagg import SecAggAbort, SecAggKeys, SecAggReveal, SecAggShares
from fedsock.secagg import fixedpoint
from fedsock.secagg import metrics as metric_words
from fedsock.secagg.chief import ChiefRound, TooFewWorkers, check_keys

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
    #: The federated metrics (``fed_*``) decoded from the sum; never any worker's own value.
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SecureAggregation:
    """Secure-aggregation state of the chief (one attempt at a time)."""

    config: ChiefConfig
    controller: RoundController
    attempt: ChiefRound | None = None
    late: set[int] = field(default_factory=set)  # sent keys after the roster went out
    #: In the attempt, but on a connection that has since been replaced: the new one started over (7.8).
    gone: set[int] = field(default_factory=set)
    excluded: set[int] = field(default_factory=set)  # left out of the rest of the round for misbehaving
    reporters: set[int] = field(default_factory=set)  # named neighbours in this round
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    #: The metrics whose sums ride in the masked vector (``metric_words.names_for``; set at start).
    metric_names: tuple[str, ...] = ()
    #: Workers whose latest keys came on a connection whose Hello lacks ``secagg_metrics``: an
    #: attempt with one of them announces no metrics (its vector would not have their words).
    without_metrics: set[int] = field(default_factory=set)
    _told: set[int] = field(default_factory=set)  # of those, the ones the log has named

    def announce_metrics(self, compile_json: str | None) -> None:
        """Choose the metrics whose sums ride in the masked vector (``--secagg-metrics``; ``compile_json``:
        the ``--model``'s compile config, None without one) and log them."""
        self.metric_names = metric_words.names_for(self.config.secagg_metrics, compile_json)
        if self.metric_names:
            log.info("secure aggregation: the workers' metrics reach this chief only as sums inside the masked "
                     "vector: %s", ", ".join(self.metric_names))
        else:
            log.info("secure aggregation: no metrics in the masked vector (--secagg-metrics none)")

    def _words(self) -> int:
        specs = self.controller.specs
        assert specs is not None
        return sum(s.size for s in specs) + 1

    def current(self) -> ChiefRound:
        """The attempt at the round being collected (a new one when the round changed)."""
        ctrl = self.controller
        if self.attempt is None or self.attempt.round != ctrl.collecting:
            self.attempt = self._new(ctrl.collecting, 1)
            self.late, self.excluded, self.reporters, self.gone = set(), set(), set(), set()
        return self.attempt

    def _new(self, round_: int, attempt: int) -> ChiefRound:
        return ChiefRound(round_, attempt, self._words(), threshold=self.config.secagg_threshold,
                          neighbours=self.config.secagg_neighbours)

    def is_current(self, round_: int, attempt: int) -> bool:
        a = self.attempt
        return a is not None and (a.round, a.attempt) == (round_, attempt)

    # --- messages from workers ------------------------------------------

    def on_keys(self, worker: int, msg: SecAggKeys, connection: int, metrics: bool = False) -> Verdict:
        """A worker is ready: its keys join the attempt, or it waits for the next one.

        ``metrics``: its Hello listed ``secagg_metrics`` (it puts the roster's metrics in its vector).

        Raises:
            RemoteProtocolError: a key that is not a usable X25519 point (the
                worker's connection ends; it is left out of the round).
        """
        try:
            check_keys(msg)
        except RemoteProtocolError:
            if self.attempt is not None and self.attempt.round == msg.round:
                self.excluded.add(worker)
            raise
        if metrics:
            self.without_metrics.discard(worker)
        else:
            self.without_metrics.add(worker)
        verdict = self.controller.reserve(worker, msg.round, connection)
        if isinstance(verdict, Accepted | Duplicate):
            att = self.current()
            if att.phase == "keys" and worker not in self.excluded:
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

    def check_masked(self, worker: int, round_: int, attempt: int, specs: Sequence[TensorSpec],
                     excluded: tuple[int, ...] = ()) -> bool:
        """Before reading a masked update: True if it belongs to the attempt (raises if it does not fit)."""
        if not self.is_current(round_, attempt):
            return False
        assert self.attempt is not None and self.controller.specs is not None
        ours = self.attempt.check_masked(worker, round_, attempt, specs, [s.shape for s in self.controller.specs],
                                         excluded)
        if excluded:
            self.progress.set()
        return ours

    def add_masked(self, worker: int, round_: int, attempt: int, arrays: Sequence[np.ndarray]) -> None:
        """Fold a masked update, if its sender still counts in the attempt's masking phase."""
        if self.is_current(round_, attempt):
            assert self.attempt is not None
            if not self.attempt.add_masked(worker, arrays):
                log.warning("round %d attempt %d: worker %d's masked update came after the masking phase "
                            "closed; discarded", round_, attempt, worker)
            self.progress.set()

    def left(self, worker: int) -> None:
        """A worker's connection ended."""
        att = self.attempt
        if att is not None and att.phase == "keys" and worker in att.keys:
            att.drop_keys(worker)
            self.controller.withdraw(worker)
        self.without_metrics.discard(worker)  # its next connection says again (its rosters are out already)
        self.progress.set()

    def joined(self, worker: int) -> None:
        """A new connection of ``worker`` (a reconnect, or a restarted process). It throws away any
        attempt it was in and sends fresh keys (protocol 7.8), so the attempt under way gets none of
        its answers and it none of the attempt's messages: before the roster its old keys go; after
        it, it counts as gone from the attempt (dropped, or in the sum once if it had masked)."""
        att = self.attempt
        self.late.discard(worker)  # its new connection's keys, if late, put it back
        if att is None or worker not in att.keys:
            return
        if att.phase == "keys":
            att.drop_keys(worker)
            self.controller.withdraw(worker)
        else:
            self.gone.add(worker)
        self.progress.set()

    # --- driving an attempt ---------------------------------------------

    async def run(self, send: Send, alive: Callable[[int], bool]) -> Outcome | None:
        """Take the attempt through its phases; None if it had to be abandoned (workers told)."""
        att = self.current()
        alive = self._in_attempt(alive)
        send = self._to_attempt(send)
        for w in [w for w in att.keys if not alive(w)]:
            att.drop_keys(w)
        try:
            for w in [w for w in att.keys if w in self.excluded]:
                att.drop_keys(w)
            rosters = att.rosters(self.config.min_workers, self._metrics_for(att))
            log.info("round %d: secure aggregation attempt %d with %d workers (threshold %d%s)", att.round,
                     att.attempt, len(rosters), att.threshold,
                     f", {self.config.secagg_neighbours} neighbours each" if self.config.secagg_neighbours else "")
            await asyncio.gather(*(send(w, m) for w, m in rosters.items()))
            await self._wait(att, alive)
            self._reported(att)
            await asyncio.gather(*(send(w, m) for w, m in att.inboxes().items()))
            await self._wait(att, alive)
            self._reported(att)
            unmask = att.unmask()
            await asyncio.gather(*(send(w, unmask) for w in unmask.survivors))
            await self._wait(att, alive)
            started = time.perf_counter()
            total = await asyncio.to_thread(att.finish)
            unmask_s = time.perf_counter() - started
            assert self.controller.specs is not None
            average, weight = fixedpoint.decode(total[:att.words], [s.shape for s in self.controller.specs])
            if not all(np.all(np.isfinite(a)) for a in average):
                raise TooFewWorkers("the unmasked average is not finite")
            metrics = self._decode_metrics(att, total[att.words:])
        except PeerMisbehaved as exc:
            self.excluded |= exc.workers
            if exc.workers:
                log.warning("round %d: leaving worker(s) %s out of the round: %s", att.round,
                            ", ".join(map(str, sorted(exc.workers))), exc)
            await self._abort(att, str(exc), send)
            return None
        except (TooFewWorkers, fixedpoint.RangeError) as exc:
            await self._abort(att, str(exc), send)
            return None
        except Exception as exc:  # whatever the workers sent, it costs this attempt, not the chief
            log.error("round %d attempt %d: unexpected failure; abandoning the attempt", att.round, att.attempt,
                      exc_info=exc)
            await self._abort(att, f"internal error ({type(exc).__name__})", send)
            return None
        if unmask.dropped:
            log.warning("round %d: %s dropped out after sharing keys; their masks were removed",
                        att.round, ", ".join(map(str, unmask.dropped)))
        return Outcome(average, unmask.survivors, weight, unmask.dropped, att.attempt, unmask_s, metrics)

    def _in_attempt(self, alive: Callable[[int], bool]) -> Callable[[int], bool]:
        return lambda w: w not in self.gone and alive(w)

    def _to_attempt(self, send: Send) -> Send:
        async def to(w: int, msg: object) -> bool:
            return False if w in self.gone else await send(w, msg)
        return to

    def _metrics_for(self, att: ChiefRound) -> tuple[str, ...]:
        """The metrics this attempt's rosters announce: none if one of its workers cannot add them."""
        lacking = set(att.keys) & self.without_metrics
        if not self.metric_names or not lacking:
            return self.metric_names
        new = lacking - self._told
        if new:
            self._told |= new
            log.warning("round %d: worker(s) %s do not put metrics into the masked vector (their Hello lacks "
                        "the secagg_metrics feature); rounds with them have no federated metrics",
                        att.round, ", ".join(map(str, sorted(new))))
        return ()

    def _decode_metrics(self, att: ChiefRound, words: np.ndarray) -> dict[str, float]:
        """The attempt's federated metrics; none if their words are out of range (some worker sent bad
        ones: the model's sum checked out, so the round goes on without metrics)."""
        try:
            return metric_words.federated(metric_words.decode(words, att.metrics))
        except metric_words.RangeError as exc:
            log.warning("round %d: no federated metrics: %s", att.round, exc)
            return {}

    def _reported(self, att: ChiefRound) -> None:
        """Neighbours named by workers leave the round; so does a worker naming for the second time.

        Raises:
            PeerMisbehaved: some worker named neighbours in this attempt.
        """
        if not att.reported:
            return
        out: set[int] = set()
        for reporter, accused in sorted(att.reported.items()):
            log.warning("round %d attempt %d: worker %d could not use the key or shares of worker(s) %s",
                        att.round, att.attempt, reporter, ", ".join(map(str, sorted(accused))))
            if reporter in self.reporters:
                out.add(reporter)
            self.reporters.add(reporter)
            out |= accused
        raise PeerMisbehaved("workers named neighbours whose key or shares did not check out", frozenset(out))

    async def _wait(self, att: ChiefRound, alive: Callable[[int], bool]) -> None:
        deadline = time.monotonic() + self.config.secagg_timeout
        while not att.reported:
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
        told = (set(att.keys) - self.gone) | self.late  # a gone worker's new connection started over already
        log.warning("round %d: secure aggregation attempt %d failed (%s); the round stays open and "
                    "starts over with fresh keys", att.round, att.attempt, reason)
        self.attempt = self._new(att.round, att.attempt + 1)
        self.late, self.gone = set(), set()
        self.controller.restart(time.monotonic())
        msg = SecAggAbort(att.round, att.attempt, reason)
        await asyncio.gather(*(send(w, msg) for w in sorted(told)))

    def waiting_for_model(self) -> set[int]:
        """Workers who sent keys in this round and wait for its model (after a successful attempt)."""
        att = self.attempt
        return (set(att.keys) if att is not None else set()) | self.late
