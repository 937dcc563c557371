"""Publishing a round's model: fan-out, the release gate, byte accounting.

A closed round's model streams out to its recipients at once, while it is
evaluated and recorded (the callbacks' ``on_round_end``: metrics line,
checkpoint, TensorBoard, ...) on a thread. The last bytes of every send wait
for that (the release gate): a worker holds the new model only once the
round is on disk, so a restart never resumes behind what workers hold nor
repeats a metrics line. Every weights message is sent within the send caps
(``SendSlots``: in all, per address, per worker) and a deadline.

Every use of a model off the event loop holds it in the controller's
``ModelHolds`` for exactly as long as a thread may read it: a send from its
start (before it waits for a slot) until its I/O thread has stopped, the
evaluation and checkpoint until their thread returns. A later round writes
its model into those buffers only when no hold is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from fedsock import limits
from fedsock.aggregation import BufferPool, ModelHolds
from fedsock.chief.callbacks import ChiefCallback, RoundRecord
from fedsock.chief.outcomes import RoundResult, Snapshot
from fedsock.chief.sendslots import SendSlots
from fedsock.protocol import Done, Global, Welcome
from fedsock.protocol.connection import message_bytes
from fedsock.transport.aio import Session

log = logging.getLogger("fedsock.chief")
MAX_CONCURRENT_SENDS = limits.MAX_CONCURRENT_SENDS
T = TypeVar("T")


async def on_thread_holding(holds: ModelHolds, weights: Sequence[np.ndarray], fn: Callable[[], T]) -> T:
    """``fn()`` on a thread, with ``weights`` held until that thread is done with them.

    The hold is released by the thread that ran ``fn`` (handed to the event
    loop), or here if ``fn`` never started (cancelled before a thread took it),
    never while ``fn`` may still read ``weights``.
    """
    loop = asyncio.get_running_loop()
    holds.acquire(weights)
    lock, state = threading.Lock(), {"started": False, "abandoned": False}

    def run() -> T:
        with lock:
            if state["abandoned"]:
                raise asyncio.CancelledError
            state["started"] = True
        try:
            return fn()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to reuse the model
                loop.call_soon_threadsafe(holds.release, weights)

    try:
        return await asyncio.to_thread(run)
    except BaseException:
        with lock:
            if not state["started"]:
                state["abandoned"] = True
                holds.release(weights)
        raise


class Publisher:
    """Sends weights messages and accounts for the bytes of each round.

    Args:
        send_timeout: deadline of one weights message (once released).
        callbacks: what records a round before its model is released.
        evaluate: holdout metrics of a model ({} without holdout data).
        holds: the round controller's ``ModelHolds``: every send, evaluation
            and checkpoint here holds the model it reads.
    """

    def __init__(self, send_timeout: float, callbacks: ChiefCallback,
                 evaluate: Callable[[Sequence[np.ndarray]], dict[str, float]],
                 holds: ModelHolds | None = None) -> None:
        self.send_timeout = send_timeout
        self.holds = holds if holds is not None else ModelHolds(BufferPool())
        self.callbacks = callbacks
        self.evaluate = evaluate
        self.slots = SendSlots(MAX_CONCURRENT_SENDS)  # replies: Welcome, a stale update's Global, a late Done
        self.fanout = SendSlots(MAX_CONCURRENT_SENDS, per_address=None)  # a round's model (see sendslots.py)
        self.bytes_in = 0  # of the open round: updates and secure-aggregation messages received
        self.bytes_out = 0  # of the open round, besides the model fan-out (secure aggregation's messages)

    async def send_weights(self, s: Session, msg: Welcome | Global | Done, weights: Sequence[np.ndarray]) -> int:
        """One weights message outside a round's fan-out (Welcome, a late worker's Global or Done).

        ``weights`` is held from this call (before the wait for a slot) until the send has ended:
        ``Session.send`` returns or raises only once its I/O thread has stopped, cancellation and
        timeout included.
        """
        self.holds.acquire(weights)
        try:
            async with self.slots.hold(s.address, s.worker_id):
                return await s.send(msg, weights, timeout=self.send_timeout)
        finally:
            self.holds.release(weights)

    async def send_small(self, s: Session | None, msg: Any) -> bool:
        """A message without weights that belongs to the open round (secure aggregation); False if it
        could not be sent (the connection is dropped)."""
        if s is None:
            return False
        try:
            self.bytes_out += await s.send(msg, timeout=self.send_timeout)
            return True
        except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the round
            log.info("%s: could not send %s (%s)", s.label, type(msg).__name__, exc or type(exc).__name__)
            s.abort()
            return False

    async def publish(self, result: RoundResult, msg: Global | Done, sessions: Sequence[Session],
                      record: Callable[[int, int, dict[str, float]], RoundRecord]) -> tuple[RoundRecord, list[int]]:
        """Fan ``msg`` with ``result.weights`` out to ``sessions``, released once the round is recorded.

        Args:
            record: (bytes_in, bytes_out, metrics) -> the round's record.

        Returns:
            The record, and the bytes sent to each session (0: failed, dropped).
        """
        bytes_out = message_bytes(msg, result.weights) * len(sessions) + self.bytes_out
        bytes_in, self.bytes_in, self.bytes_out = self.bytes_in, 0, 0
        release = threading.Event()
        for _ in sessions:  # now, before any of them starts: each _send_released releases its own
            self.holds.acquire(result.weights)
        sends = asyncio.gather(*(self._send_released(s, msg, result.weights, release) for s in sessions))

        def persist() -> RoundRecord:  # evaluation and fsyncs (the record's snapshot): off the event loop
            rec = record(bytes_in, bytes_out, self.evaluate(result.weights))
            self.callbacks.on_round_end(rec)
            release.set()  # from here, not after a hop back to the event loop: the sends wait for it
            return rec

        try:
            rec = await on_thread_holding(self.holds, result.weights, persist)
        except BaseException:
            for s in sessions:  # not recorded: the model must not reach anyone
                s.abort()
            await asyncio.gather(sends, return_exceptions=True)
            raise
        return rec, await sends

    async def _send_released(self, s: Session, msg: Global | Done, weights: list[np.ndarray],
                             release: threading.Event) -> int:
        """One send of the fan-out; ``weights`` is held for it (``publish`` acquired it) until the send
        task has ended, which is when its I/O thread has stopped, even if this is cancelled first."""
        send: asyncio.Future[int] | None = None
        try:
            async with self.fanout.hold(s.address, s.worker_id):
                send = asyncio.ensure_future(s.send(msg, weights, release, timeout=None))  # bounded below
                send.add_done_callback(lambda _: self.holds.release(weights))
                try:
                    while not release.is_set() and not send.done():
                        await asyncio.wait({send}, timeout=0.02)  # the wait for release is not the peer's time
                    return await asyncio.wait_for(send, self.send_timeout)
                finally:
                    send.cancel()  # if still running: we were cancelled
        except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the round
            # A half-sent weights message leaves the connection unusable: drop it.
            log.info("%s: could not send %s (%s); dropping the connection", s.label,
                     type(msg).__name__, exc or type(exc).__name__)
            s.abort()
            return 0
        finally:
            if send is None:  # never started (cancelled or failed waiting for a slot)
                self.holds.release(weights)


def round_record(result: RoundResult, bytes_in: int, bytes_out: int, metrics: dict[str, float], *,
                 seconds: float, names: Sequence[str], members: Sequence[str], snapshot: Snapshot | None,
                 final: bool, fraction: float, privacy: dict[str, Any]) -> RoundRecord:
    """The ``RoundRecord`` of a closed round (``seconds``: from its opening to its close)."""
    return RoundRecord(
        round=result.round, workers=result.workers, names=tuple(names), examples=result.examples,
        seconds=seconds, bytes_in=bytes_in, bytes_out=bytes_out, time=time.time(),
        metrics=metrics, sampled=len(result.selected) if result.selected is not None else None,
        fraction=fraction if result.selected is not None else None, extra=result.extra, privacy=privacy,
        snapshot=snapshot, members=tuple(members), final=final, aggregate_metrics=result.federated,
    )
