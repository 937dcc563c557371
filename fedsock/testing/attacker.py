"""A hostile client for attack tests, built on the real protocol code.

Its connection, ``Hostile`` (hostile.py, importable from here too), speaks
protocol v1 through ``fedsock.protocol.Connection`` and ``fedsock.tls.auth_mac``
like a worker, but is driven by hand, so it can do what a worker never does: connect from another loopback address
(``127.0.0.2`` ... are all loopback on Linux, so a test can play "another
machine"), shrink its receive buffer and stop reading, send several stale
updates in a row, announce frames it never finishes, hold plain TCP
connections idle and reopen them as soon as the chief drops them. This
module holds the attacks that are more than one call on a ``Hostile``:
``stale_update``, ``announce_frame`` and ``IdleFlood``.

    h = Hostile("127.0.0.1:7777", token, source="127.0.0.2")
    welcome = h.join("mallory")
    h.send_all([stale_update(welcome.tensors, welcome.round)] * 16)
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Sequence

from fedsock.protocol import Encoding, Error, Kind, TensorSpec, Update
from fedsock.testing.hostile import Hostile, open_tcp

__all__ = ["Hostile", "IdleFlood", "announce_frame", "open_tcp", "stale_update"]


def stale_update(specs: Sequence[TensorSpec], round_: int) -> Update:
    """An Update for ``round_`` whose every tensor is ``topk`` with ``k = 0``: about
    100 bytes on the wire and no chunks, whatever the model's size."""
    empty = tuple(TensorSpec(s.name, s.dtype, s.shape, enc=Encoding("topk", k=0)) for s in specs)
    return Update(round=round_, num_examples=1, tensors=empty)


def announce_frame(address: str, nbytes: int, source: str = "127.0.0.1",
                   answer_within: float = 2.0) -> tuple[Hostile, Error | None]:
    """Before Auth, announce a Hello frame of ``nbytes`` and, if the chief does not
    refuse the header within ``answer_within`` seconds, send all but the last
    byte of its body (so a chief that buffers it holds ``nbytes - 1`` bytes for
    this connection). The connection is left open for the caller.

    Returns:
        The connection and the chief's Error (None: it sent none).
    """
    h = Hostile(address, None, source=source)
    return h, h.announce(Kind.HELLO, nbytes, answer_within)


class IdleFlood(threading.Thread):
    """Holds ``count`` idle plain TCP connections to the chief from ``source``,
    reopening each as soon as the chief drops it.

    A connection that held a slot (it lived more than ``HELD_S``) is replaced at
    once, so that a slot the chief frees goes back to the flood; connections the
    chief refuses at once are retried at most ``max_rate`` times a second, to
    leave the machine's CPU to the processes under test.

    Use as a context manager, or ``start()`` and ``stop()``.
    """

    HELD_S = 0.5

    def __init__(self, address: str, count: int, source: str = "127.0.0.2", max_rate: float = 200.0) -> None:
        super().__init__(daemon=True, name="idle-flood")
        self.address, self.count, self.source, self.max_rate = address, count, source, max_rate
        #: Connections opened so far (the first ``count`` and every reopening).
        self.opened = 0
        #: Connections the chief closed.
        self.dropped = 0
        self._halt = threading.Event()

    def _open(self, sel: selectors.BaseSelector) -> None:
        try:
            s = open_tcp(self.address, self.source, timeout=5.0)
        except OSError:
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, data=time.monotonic())
        self.opened += 1

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        next_open = 0.0  # rate limit of the refill (a burst of up to max_rate, then max_rate a second)
        try:
            while not self._halt.is_set():
                while len(sel.get_map()) < self.count and time.monotonic() >= next_open:
                    self._open(sel)
                    next_open = max(next_open, time.monotonic() - 1.0) + 1.0 / self.max_rate
                for key, _ in sel.select(timeout=0.005):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        data = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # dropped by the chief
                        sel.unregister(s)
                        s.close()
                        self.dropped += 1
                        if time.monotonic() - key.data > self.HELD_S:
                            self._open(sel)  # it held a slot: take the freed slot back at once
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            sel.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def __enter__(self) -> IdleFlood:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
