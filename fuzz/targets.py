"""The fuzz targets: one function per kind of untrusted input, and the errors it may raise.

Each target takes one input (bytes) and feeds it to the real code; the only exceptions it
lets through are bugs: the *documented* errors of that input are caught here, one narrow
tuple per target (``ALLOWED``). Nothing in fedsock turns an unexpected exception into a
documented one (docs/architecture.md, "Errors are split by blame"), so a crash the fuzzer
reports is a real bug.

- ``protocol``: a byte stream into a ``Connection`` (either role, with the in-place chunk path),
  answered like a real peer (a status query gets a Status), so it reaches the established phase
  and weights messages.
- ``secagg``: secure-aggregation messages into the state machines that act on them: a
  worker's ``WorkerRound`` fed the chief's Roster/Inbox/Unmask/Abort (and masking its update
  and metrics as the engine does), or a ``ChiefRound`` with three honest workers fed a fourth
  worker's Keys/Shares/Masked/Reveal, through a ``Connection`` in the established phase, up to
  the unmasked sum and its decoded model and metrics.
- ``status``: a chief's answer to ``fedsock status`` (Challenge, then Status) into the
  status client's ``Connection``, then the report and the JSON it prints.
- ``checkpoint``: the bytes of a checkpoint file into ``checkpoint.decode`` and what resuming
  reads from it (``records.read_resume``: aggregation state, sampling state, metrics lines).

The first byte of every input holds flags for the target; the rest is its stream or file.
``fuzz/make_corpus.py`` writes real inputs, made by the real encoders, into ``fuzz/corpus*/``.
"""

from __future__ import annotations

import contextlib
import random
import types
from collections.abc import Callable, Iterator

import numpy as np

from fedsock import checkpoint as ckpt_mod
from fedsock.aggregation import fedadam
from fedsock.chief.intake import decode_update
from fedsock.chief.records import read_resume
from fedsock.errors import ConfigError, PeerMisbehaved, RangeError, RemoteProtocolError, TooFewWorkers
from fedsock.protocol import (
    ACK_CAPABILITY,
    EVAL_CAPABILITY,
    NEED_DATA,
    STATUS_CAPABILITY,
    Auth,
    Challenge,
    Chunk,
    Connection,
    ConnectionClosed,
    Done,
    EndOfMessage,
    EvalRequest,
    Global,
    Hello,
    Phase,
    Plan,
    Role,
    SecAggAbort,
    SecAggInbox,
    SecAggKeys,
    SecAggMasked,
    SecAggReveal,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    Status,
    TensorAssembler,
    Update,
    Welcome,
)
from fedsock.secagg import crypto, fixedpoint, shamir
from fedsock.secagg import metrics as metric_words
from fedsock.secagg.chief import ChiefRound
from fedsock.secagg.worker import WorkerRound
from fedsock.status import format_status, status_json

#: The errors each target's input may cause on purpose; anything else escaping is a bug.
ALLOWED: dict[str, tuple[type[BaseException], ...]] = {
    "protocol": (RemoteProtocolError,),
    "secagg": (RemoteProtocolError, TooFewWorkers, PeerMisbehaved, RangeError),
    "status": (RemoteProtocolError,),
    "checkpoint": (ConfigError,),
}

# --- protocol ---------------------------------------------------------------

WELCOME = Welcome(1, 0, Plan(3, 1, 1), tensors=(), has_weights=False, reconnect_secret=bytes(32))
STATUS = Status(1, 3, False, 0, 1, 5.0, connected=1, known=1)


def protocol(data: bytes) -> None:
    """Flags (bit 0: the receiver is the chief; bit 1: chunk data placed in place with
    ``direct_chunk``, as the chief's event loop does; bit 2: a worker's Hello asks for Acks and
    evaluation requests), a piece size byte, then the stream."""
    if len(data) < 2:
        return
    role = Role.CHIEF if data[0] & 1 else Role.WORKER
    direct = bool(data[0] & 2)
    piece = 1 + data[1]
    stream = data[2:]
    conn = Connection(role)
    if role is Role.WORKER:
        caps = (ACK_CAPABILITY, EVAL_CAPABILITY) if data[0] & 4 else ()
        conn.send(Hello(name="fuzz", capabilities=caps, instance=bytes(16)))
    assembler: TensorAssembler | None = None
    head: object = None
    pos = 0
    while True:
        d = conn.direct_chunk() if direct else None
        if isinstance(d, tuple):
            dest = memoryview(bytearray(d[2]))
            placed = conn.take_chunk_data(dest)
            rest = stream[pos : pos + d[2] - placed]
            pos += len(rest)
            dest[placed : placed + len(rest)] = rest
            conn.chunk_data_received(len(rest))
            if placed + len(rest) < d[2]:
                conn.receive_data(b"")
            continue
        ev = conn.next_event()
        if ev is NEED_DATA:
            feed = stream[pos : pos + (min(d, piece) if isinstance(d, int) else piece)]
            pos += len(feed)
            conn.receive_data(feed)  # b"" once the stream is exhausted: the peer closed
            continue
        if isinstance(ev, ConnectionClosed):
            return
        if isinstance(ev, Hello):
            conn.send(Challenge(b"c" * 32))
        elif isinstance(ev, Auth):  # a status query gets Status, as the chief answers it, else Welcome
            conn.send(STATUS if conn.status_query else WELCOME)
        elif isinstance(ev, Challenge):
            conn.send(Auth(b"a" * 32))
        elif isinstance(ev, (Update, Global, Done, Welcome, EvalRequest)):
            small = sum(s.wire_nbytes for s in ev.tensors) < 1 << 20
            assembler, head = (TensorAssembler(ev.tensors), ev) if small else (None, None)
        elif isinstance(ev, Chunk) and assembler is not None:
            assembler.add(ev)
        elif isinstance(ev, EndOfMessage) and assembler is not None and not direct:
            if isinstance(head, Update):  # the chief decodes compressed deltas against its model (intake.py)
                base = [np.zeros(s.shape, s.dtype) for s in head.tensors]
                list(decode_update(head.tensors, assembler.arrays(), base))
            assembler = head = None


# --- secure aggregation -----------------------------------------------------

SECAGG_WORKERS = (1, 2, 3, 4)
SECAGG_SHAPES = ((2, 3),)
SECAGG_WORDS = 7  # model elements + the weight
SECAGG_METRICS = ("loss", "val_accuracy")  # the metrics that ride in the masked vector (one transcript)
PLAN = Plan(1, 1, 1, secure_agg=True)
FUZZED = 4  # the chief-side target's untrusted worker
ME = 1  # the worker-side target's own id


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Deterministic Shamir coefficients and sealing nonces (only while the fixed transcripts are made)."""
    rng = random.Random(seed)
    saved = shamir.secrets, crypto.os
    shamir.secrets = types.SimpleNamespace(randbelow=rng.randrange)  # type: ignore[assignment]
    crypto.os = types.SimpleNamespace(urandom=rng.randbytes)  # type: ignore[assignment]
    try:
        yield
    finally:
        shamir.secrets, crypto.os = saved


def worker_state(wid: int) -> WorkerRound:
    """Worker ``wid``'s fixed keys and self-mask seed for round 1 (deterministic, so seeds can match)."""
    def key(tag: int) -> bytes:
        return bytes([wid, tag]) * 16

    return WorkerRound(1, crypto.private_from_bytes(key(1)), crypto.private_from_bytes(key(2)), key(3))


def keys_of(w: WorkerRound) -> SecAggKeys:
    return SecAggKeys(w.round, crypto.public_bytes(w.share_sk), crypto.public_bytes(w.mask_sk))


def transcript(dropout: int | None) -> dict[str, dict[int, object]]:
    """An honest attempt of round 1 by workers 1-4 (``dropout`` sends no masked update; without it,
    metrics ride in the masked vector), with the chief's and every worker's messages: real
    encoders, real state machines."""
    from fedsock.worker.secure import masked_update

    metrics = () if dropout else SECAGG_METRICS
    with seeded(dropout or 0):
        ws = {i: worker_state(i) for i in SECAGG_WORKERS}
        cr = ChiefRound(1, 1, SECAGG_WORDS)
        out: dict[str, dict[int, object]] = {k: {} for k in ("keys", "roster", "shares", "inbox", "masked",
                                                              "unmask", "reveal")}
        for i, w in ws.items():
            out["keys"][i] = keys_of(w)
            cr.add_keys(i, keys_of(w))
        out["roster"] = dict(cr.rosters(min_workers=2, metrics=metrics))
        for i, w in ws.items():
            out["shares"][i] = s = w.on_roster(out["roster"][i])  # type: ignore[arg-type]
            cr.add_shares(i, s)  # type: ignore[arg-type]
        out["inbox"] = dict(cr.inboxes())
        for i, w in ws.items():
            w.on_inbox(out["inbox"][i])  # type: ignore[arg-type]
        for i, w in ws.items():
            if i == dropout:
                continue
            weights = [np.full(s, 0.25 * i, np.float32) for s in SECAGG_SHAPES]
            msg, arrays = masked_update(w, weights, 10 * i, PLAN, ["dense"], {"loss": 1.0 / i, "val_accuracy": 0.5,
                                                                               "val_examples": 20.0})
            out["masked"][i] = (msg, arrays)
            cr.check_masked(i, msg.round, msg.attempt, msg.tensors, SECAGG_SHAPES, msg.excluded)
            cr.add_masked(i, arrays)
        unmask = cr.unmask()
        for i, w in ws.items():
            out["unmask"][i] = unmask
            if i != dropout:
                out["reveal"][i] = r = w.on_unmask(unmask)
                cr.add_reveal(i, r)
        total = cr.finish()
        fixedpoint.decode(total[:SECAGG_WORDS], SECAGG_SHAPES)
        metric_words.decode(total[SECAGG_WORDS:], metrics)
        out["workers"] = dict(ws)
        out["metrics"] = {0: metrics}  # their state after masking: they answer the Unmask a fuzzed run ends with
    return out


HONEST = {None: transcript(None), 3: transcript(3)}


def _events(conn: Connection, stream: bytes) -> Iterator[object]:
    """The events of ``stream``, weights messages assembled: (message, arrays) for SecAggMasked."""
    conn.receive_data(stream)
    conn.receive_data(b"")
    asm: TensorAssembler | None = None
    head: SecAggMasked | None = None
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
            return
        if isinstance(ev, SecAggMasked):
            head, asm = ev, TensorAssembler(ev.tensors)
        elif isinstance(ev, Chunk) and asm is not None:
            asm.add(ev)
        elif isinstance(ev, EndOfMessage) and asm is not None and head is not None:
            yield head, asm.arrays()
            head = asm = None
        else:
            yield ev


def secagg(data: bytes) -> None:
    """Flags (bit 0: the chief's side, else a worker's; bit 1: honest worker 3 drops out after
    sharing), then the untrusted peer's stream of frames (established phase)."""
    if not data:
        return
    if data[0] & 1:
        _secagg_chief(data[1:], HONEST[3 if data[0] & 2 else None])
    else:
        _secagg_worker(data[1:])


def _secagg_worker(stream: bytes) -> None:
    """Worker 1 in round 1 (its fixed keys) answers whatever the chief sends, as the engine does."""
    from fedsock.worker.secure import masked_update

    me = worker_state(ME)
    for ev in _events(Connection(Role.WORKER, phase=Phase.ESTABLISHED), stream):
        if isinstance(ev, SecAggAbort):
            me = worker_state(ME)
        elif isinstance(ev, SecAggRoster):
            me.on_roster(ev)
        elif isinstance(ev, SecAggInbox):
            me.on_inbox(ev)
            if me.phase == "inbox":  # its update and metrics, encoded for the roster's layout, then masked
                masked_update(me, [np.full(s, 0.5, np.float32) for s in SECAGG_SHAPES], 10, PLAN, ["dense"],
                              {"loss": 0.25, "val_accuracy": 0.75, "val_examples": 20.0})
        elif isinstance(ev, SecAggUnmask):
            me.on_unmask(ev)


def _secagg_chief(stream: bytes, honest: dict[str, dict[int, object]]) -> None:
    """A ChiefRound with honest workers 1-3 and the untrusted worker 4; each phase closes when
    worker 4 sends the next phase's message (or its stream ends), as the chief's deadlines would."""
    cr = ChiefRound(1, 1, SECAGG_WORDS)
    for i in (1, 2, 3):
        cr.add_keys(i, honest["keys"][i])  # type: ignore[arg-type]
    order = ["keys", "shares", "masked", "reveal", "finish"]

    def advance(to: str) -> None:
        while order.index(cr_phase[0]) < order.index(to):
            step = cr_phase[0]
            if step == "keys":
                if FUZZED not in cr.keys:  # its keys came before the stream: the honest shares expect them
                    cr.add_keys(FUZZED, honest["keys"][FUZZED])  # type: ignore[arg-type]
                cr.rosters(min_workers=2, metrics=honest["metrics"][0])  # type: ignore[arg-type]
                for i in (1, 2, 3):
                    if i in cr.hoods:
                        cr.add_shares(i, honest["shares"][i])  # type: ignore[arg-type]
                cr_phase[0] = "shares"
            elif step == "shares":
                cr.inboxes()
                for i, (msg, arrays) in honest["masked"].items():  # type: ignore[misc]
                    if i != FUZZED and i in cr.shared and cr.check_masked(
                            i, msg.round, msg.attempt, msg.tensors, SECAGG_SHAPES, msg.excluded):
                        cr.add_masked(i, arrays)
                cr_phase[0] = "masked"
            elif step == "masked":
                req = cr.unmask()
                for i, w in honest["workers"].items():
                    if i != FUZZED and i in cr.survivors:
                        w.phase = "masked"  # type: ignore[attr-defined]  # each run asks them anew
                        cr.add_reveal(i, w.on_unmask(req))  # type: ignore[attr-defined]
                cr_phase[0] = "reveal"
            else:  # the unmasked sum, decoded as the chief's SecureAggregation does
                total = cr.finish()
                fixedpoint.decode(total[:SECAGG_WORDS], SECAGG_SHAPES)
                metric_words.federated(metric_words.decode(total[SECAGG_WORDS:], cr.metrics))
                cr_phase[0] = "finish"

    cr_phase = ["keys"]
    for ev in _events(Connection(Role.CHIEF, phase=Phase.ESTABLISHED), stream):
        if isinstance(ev, SecAggKeys):
            cr.add_keys(FUZZED, ev)  # after the key phase the ChiefRound refuses it (out_of_order)
        elif isinstance(ev, SecAggShares):
            advance("shares")
            cr.add_shares(FUZZED, ev)
        elif isinstance(ev, tuple):
            msg, arrays = ev
            advance("masked")
            if cr.check_masked(FUZZED, msg.round, msg.attempt, msg.tensors, SECAGG_SHAPES, msg.excluded):
                cr.add_masked(FUZZED, arrays)
        elif isinstance(ev, SecAggReveal):
            advance("reveal")
            cr.add_reveal(FUZZED, ev)
    advance("finish")


# --- status -----------------------------------------------------------------

def status(data: bytes) -> None:
    """Flags (unused, for the corpus's layout), then the chief's stream to a status client."""
    if not data:
        return
    conn = Connection(Role.WORKER)
    conn.send(Hello(name="status-fuzz", capabilities=(STATUS_CAPABILITY,), instance=bytes(16)))
    conn.receive_data(data[1:])
    conn.receive_data(b"")
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA or isinstance(ev, ConnectionClosed):
            return
        if isinstance(ev, Challenge):
            conn.send(Auth(b"a" * 32))
        elif isinstance(ev, Status):
            format_status(ev, "127.0.0.1:7777")
            status_json(ev)


# --- checkpoint -------------------------------------------------------------

_TEMPLATES: dict[int, Callable[[list[np.ndarray]], object]] = {
    0: lambda w: (),  # plain FedAvg: no state
    1: fedadam().init,  # server Adam: moments shaped like the model
}


def checkpoint(data: bytes) -> None:
    """Flags (bit 0: the chief's aggregation is FedAdam, else FedAvg), then the file's bytes."""
    if not data:
        return
    ck = ckpt_mod.decode(data[1:], "fuzz.fsck")
    read_resume(ck, _TEMPLATES[data[0] & 1](ck.weights))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "protocol": protocol, "secagg": secagg, "status": status, "checkpoint": checkpoint,
}


def run_one(target: str, data: bytes) -> None:
    """``target`` on ``data``; its documented errors are the expected outcome, any other exception escapes."""
    try:
        TARGETS[target](data)
    except ALLOWED[target]:
        pass
