"""Print hex dumps of real fedsock protocol v1 frames, for protocol.md.

Every frame below is produced by the real sans-I/O protocol code
(``fedsock.protocol.Connection.send``) and decoded again by a peer
``Connection``, so the dumps are exactly what fedsock puts on the wire
(inside TLS). The example values are fixed, so the output is reproducible::

    .venv/bin/python tools/protocol_dumps.py
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np

from fedsock import tls
from fedsock.errors import RemoteProtocolError
from fedsock.protocol import (
    ACK_CAPABILITY,
    EVAL_CAPABILITY,
    NEED_DATA,
    Ack,
    Auth,
    Challenge,
    Connection,
    Done,
    EndOfMessage,
    Error,
    EvalRequest,
    EvalResult,
    Global,
    Heartbeat,
    Hello,
    Kind,
    Phase,
    Plan,
    Role,
    Status,
    Update,
    Welcome,
    WorkerStatus,
    check_signature,
    frames,
    iter_chunks,
    make_error,
    reconnect_proof,
    specs_of,
)
from fedsock.protocol.compression import parse_compression
from fedsock.protocol.identity import RESUME_LABEL
from fedsock.protocol.messages import TensorSpec
from fedsock.protocol.secagg import (
    Peer,
    SecAggAbort,
    SecAggInbox,
    SecAggKeys,
    SecAggMasked,
    SecAggReveal,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
)
from fedsock.secagg import crypto, fixedpoint, shamir
from fedsock.secagg import metrics as metric_words
from fedsock.worker.compress import UpdateEncoder

# --- fixed example values ---------------------------------------------------
SECRET = bytes(range(0x00, 0x20))  # the join secret (never sent)
NONCE = bytes(range(0x20, 0x40))  # the chief's challenge
NONCE2 = bytes(range(0x90, 0xB0))  # the challenge of a later connection
FINGERPRINT = bytes(range(0x40, 0x60))  # SHA-256 of the chief's DER certificate
NAME = "worker-1"
INSTANCE = bytes(range(0x60, 0x70))  # the worker process's instance id (random in real use)
RECONNECT_SECRET = bytes(range(0x70, 0x90))  # issued in the Welcome (random in real use)
NAMES = ["dense/kernel", "dense/bias"]
#: The plan of a chief run with --rounds 3 --sync-every 50 --batch-size 32 and the default timing.
PLAN = Plan(rounds=3, sync_every=50, batch_size=32, heartbeat_interval=10.0, idle_timeout=60.0,
            round_timeout=300.0, min_workers=2)


def f32(values: Any) -> np.ndarray:
    return np.array(values, dtype=np.float32)


INITIAL = [f32([[1.0, 2.0], [3.0, 4.0]]), f32([0.5, -0.5])]
TRAINED = [f32([[1.5, 2.0], [3.0, 3.5]]), f32([0.25, -0.25])]
ROUND1 = [f32([[1.25, 2.0], [3.0, 3.75]]), f32([0.375, -0.375])]
FINAL = [f32([[1.0, 1.5], [2.5, 3.0]]), f32([0.125, -0.125])]
SPECS = specs_of(INITIAL, NAMES)


# --- output -----------------------------------------------------------------
def show(obj: Any) -> str:
    """A decoded msgpack body in JSON-like notation; bin values as hex."""
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{show(k)}: {show(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(show(v) for v in obj) + "]"
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"bin({len(obj)}) {bytes(obj).hex()}"
    if isinstance(obj, str):
        return '"' + obj + '"'
    if obj is None:
        return "nil"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    return repr(obj)


def hexdump(data: bytes) -> str:
    """``hexdump -C`` style lines."""
    lines = []
    for off in range(0, len(data), 16):
        row = data[off : off + 16]
        left = " ".join(f"{b:02x}" for b in row[:8])
        right = " ".join(f"{b:02x}" for b in row[8:])
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{off:08x}  {left:<23}  {right:<23}  |{text}|")
    return "\n".join(lines)


def dump(title: str, frame: bytes) -> None:
    magic, version, kind, length = frames.HEADER.unpack(frame[: frames.HEADER_BYTES])
    assert length == len(frame) - frames.HEADER_BYTES
    body = frames.unpack_body(frame[frames.HEADER_BYTES :])
    h = frame[: frames.HEADER_BYTES]
    print(f"--- {title}: {len(frame)} bytes")
    print(
        f"header  {h[0]:02x} {h[1]:02x} | {h[2]:02x} | {h[3]:02x} | {h[4:].hex(' ')}"
        f"   magic {magic.decode()!r}, version {version}, kind {kind} ({Kind(kind).name}),"
        f" body length {length}"
    )
    print(f"body    {show(body)}")
    print(hexdump(frame))
    print()


# --- a conversation -----------------------------------------------------------
def deliver(frame: bytes, to: Connection) -> list[Any]:
    """Feed one frame to the peer and return what it decoded (checks the bytes)."""
    to.receive_data(frame)
    events = []
    while (ev := to.next_event()) is not NEED_DATA:
        events.append(ev)
    return events


def send(title: str, sender: Connection, receiver: Connection, msg: Any,
         arrays: list[np.ndarray] | None = None, quiet: bool = False, chunks_of: int | None = None) -> None:
    """Send ``msg`` (and the chunks of ``arrays``) and dump the frames (``chunks_of``: only that tensor's chunks)."""
    frame = sender.send(msg)
    got = deliver(frame, receiver)
    assert got and got[0] == msg, (got, msg)
    if not quiet:
        dump(title, frame)
    for i, chunk in enumerate(iter_chunks(arrays or [])):
        frame = sender.send(chunk)
        got = deliver(frame, receiver)
        assert bytes(got[0].data) == bytes(chunk.data)
        if not quiet and chunks_of in (None, chunk.tensor):
            dump(f"{title}, Chunk {i + 1} (tensor {chunk.tensor}, offset {chunk.offset})", frame)
    if arrays is not None:
        assert isinstance(got[-1], EndOfMessage), got


def handshake(worker: Connection, chief: Connection, quiet: bool, compress: str = "none") -> None:
    send("Hello (worker -> chief)", worker, chief, Hello(name=NAME, instance=INSTANCE), quiet=quiet)
    send("Challenge (chief -> worker)", chief, worker, Challenge(NONCE), quiet=quiet)
    mac = tls.auth_mac(SECRET, NONCE, FINGERPRINT, NAME)
    send("Auth (worker -> chief)", worker, chief, Auth(mac), quiet=quiet)
    welcome = Welcome(worker_id=1, round=0, plan=PLAN, tensors=SPECS, has_weights=True, compress=compress,
                      reconnect_secret=RECONNECT_SECRET)
    title = "Welcome (chief -> worker)" + ("" if compress == "none" else f", compress {compress!r}")
    send(title, chief, worker, welcome, INITIAL, quiet=quiet)


def compressed(mode: str, show_welcome: bool) -> None:
    """A conversation whose chief asks for ``mode``: the Update carries encoded deltas."""
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    handshake(worker, chief, quiet=True)
    if show_welcome:
        dump(f"Welcome (chief -> worker), compress {mode!r} (its weights' Chunks as above)",
             Connection(Role.CHIEF, phase=Phase.WELCOME).send(
                 Welcome(worker_id=1, round=0, plan=PLAN, tensors=SPECS, has_weights=True, compress=mode,
                         reconnect_secret=RECONNECT_SECRET)))
    specs, payloads = UpdateEncoder(parse_compression(mode)).encode(TRAINED, INITIAL, SPECS)
    update = Update(round=1, num_examples=100, tensors=specs, metrics={"loss": 0.125})
    send(f"Update (worker -> chief), {mode}: deltas from the round-0 weights", worker, chief, update, payloads)


def auth_example() -> None:
    token = tls.JoinToken(FINGERPRINT, SECRET)
    label_nonce_fp_name = tls.AUTH_LABEL + NONCE + FINGERPRINT + NAME.encode()
    mac = tls.auth_mac(SECRET, NONCE, FINGERPRINT, NAME)
    print("=== Authentication example (fedsock.tls.auth_mac)")
    print(f"join token   {token}")
    print(f"secret       {SECRET.hex()}")
    print(f"fingerprint  {FINGERPRINT.hex()}")
    print(f"nonce        {NONCE.hex()}")
    print(f"name         {NAME!r} = {NAME.encode().hex()}")
    print(f"HMAC input ({len(label_nonce_fp_name)} bytes):")
    print(hexdump(label_nonce_fp_name))
    print(f"mac          {mac.hex()}")
    print()
    resume_input = RESUME_LABEL + NONCE2 + NAME.encode()
    print("=== Reconnect proof example (fedsock.protocol.reconnect_proof)")
    print(f"reconnect secret  {RECONNECT_SECRET.hex()}")
    print(f"nonce             {NONCE2.hex()}")
    print(f"name              {NAME!r} = {NAME.encode().hex()}")
    print(f"HMAC input ({len(resume_input)} bytes):")
    print(hexdump(resume_input))
    print(f"resume            {reconnect_proof(RECONNECT_SECRET, NONCE2, NAME).hex()}")
    print()


def words(a: np.ndarray) -> str:
    return " ".join(f"{int(v):016x}" for v in a)


def secagg_example() -> None:
    """Two workers (ids 1 and 2, threshold 2) through one attempt of round 1, with fixed keys,
    seeds, Shamir coefficients and GCM nonce (all random in real use)."""
    share_sk = {w: crypto.private_from_bytes(bytes([w]) * 32) for w in (1, 2)}
    mask_sk = {w: crypto.private_from_bytes(bytes([0x10 + w]) * 32) for w in (1, 2)}
    seed = {w: bytes([0xa0 + w]) * 32 for w in (1, 2)}
    coeff = 0x5EED  # f(x) = secret + coeff * x (mod p): degree threshold - 1 = 1

    def share(secret: bytes, x: int) -> int:
        return (int.from_bytes(secret, "big") + coeff * x) % shamir.PRIME

    pub = {w: (crypto.public_bytes(share_sk[w]), crypto.public_bytes(mask_sk[w])) for w in (1, 2)}
    k_share = crypto.agree(share_sk[1], pub[2][0], crypto.SHARE_LABEL, 1, 1)
    k_mask = crypto.agree(mask_sk[1], pub[2][1], crypto.MASK_LABEL, 1, 1)
    assert k_mask == crypto.agree(mask_sk[2], pub[1][1], crypto.MASK_LABEL, 1, 1)
    aad = crypto.share_aad(1, 1, 1, 2)
    plain = (shamir.to_bytes(share(crypto.private_bytes(mask_sk[1]), 2))
             + shamir.to_bytes(share(seed[1], 2)))
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = bytes(12)
    sealed = nonce + AESGCM(k_share).encrypt(nonce, plain, aad)
    encoded = fixedpoint.encode(TRAINED, 100, 2)
    self_mask, pair_mask = crypto.mask(seed[1], len(encoded)), crypto.mask(k_mask, len(encoded))
    masked = encoded + self_mask + pair_mask  # worker 1 < worker 2: + the pairwise mask
    print("=== Secure aggregation example (section 7.10): worker 1 of workers {1, 2}, round 1, attempt 1")
    for w in (1, 2):
        print(f"worker {w} share key  private {crypto.private_bytes(share_sk[w]).hex()}")
        print(f"                     public  {pub[w][0].hex()}")
        print(f"worker {w} mask key   private {crypto.private_bytes(mask_sk[w]).hex()}")
        print(f"                     public  {pub[w][1].hex()}")
        print(f"worker {w} seed               {seed[w].hex()}")
    print(f"HKDF info, share key 1-2  {(crypto.SHARE_LABEL + struct.pack('>QI', 1, 1)).hex()}")
    print(f"share key 1-2             {k_share.hex()}")
    print(f"mask key 1-2              {k_mask.hex()}")
    print(f"GCM additional data       {aad.hex()}")
    print(f"Shamir polynomial         f(x) = secret + 0x{coeff:x} x  (mod 2^521 - 1)")
    print("share plaintext for 2     f_maskkey(2) || f_seed(2), 66 bytes each:")
    print(hexdump(plain))
    print(f"encoded (weight 100)      {words(encoded)}")
    print(f"PRG(seed 1)               {words(self_mask)}")
    print(f"PRG(mask key 1-2)         {words(pair_mask)}")
    print(f"masked = sum mod 2^64     {words(masked)}")
    print()
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    handshake(worker, chief, quiet=True)
    send("SecAggKeys (worker 1 -> chief)", worker, chief, SecAggKeys(1, *pub[1]))
    roster = SecAggRoster(1, 1, 1, 2, 2, 2, tuple(Peer(w, *pub[w]) for w in (1, 2)))
    send("SecAggRoster (chief -> worker 1)", chief, worker, roster)
    send("SecAggShares (worker 1 -> chief)", worker, chief, SecAggShares(1, 1, ((2, sealed),)))
    peer_worker, peer_chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    handshake(peer_worker, peer_chief, quiet=True)
    send("SecAggInbox (chief -> worker 2)", peer_chief, peer_worker, SecAggInbox(1, 1, ((1, sealed),)))
    arrays = [masked[:4].reshape(2, 2), masked[4:6], masked[6:]]
    specs = tuple(TensorSpec(n, "uint64", a.shape) for n, a in zip([*NAMES, "weight"], arrays))
    send("SecAggMasked (worker 1 -> chief)", worker, chief, SecAggMasked(1, 1, specs), arrays)
    send("SecAggUnmask (chief -> worker 1)", chief, worker, SecAggUnmask(1, 1, (1, 2), ()))
    reveal = SecAggReveal(1, 1, ((1, shamir.to_bytes(share(seed[1], 1))), (2, shamir.to_bytes(share(seed[2], 1)))),
                          ())
    send("SecAggReveal (worker 1 -> chief)", worker, chief, reveal)
    send("SecAggAbort (chief -> worker 1), had the attempt failed", chief, worker,
         SecAggAbort(1, 1, "2 workers sent masked updates; 3 needed"))
    secagg_metrics_example(pub, mask_sk, seed[1])


def secagg_metrics_example(pub: dict[int, tuple[bytes, bytes]], mask_sk: dict[int, Any], seed: bytes) -> None:
    """The same attempt had its roster named metrics: the mask key, worker 1's words and the frames that change."""
    names = ("val_examples", "val_loss", "train_loss")
    shared = {"val_examples": 20.0, "val_loss": 0.375, "train_loss": -1.5}
    tail, skipped = metric_words.encode(names, shared, 100)
    assert not skipped
    digest = metric_words.layout_digest(names)
    k_mask = crypto.agree(mask_sk[1], pub[2][1], crypto.MASK_LABEL, 1, 1, digest)
    assert k_mask == crypto.agree(mask_sk[2], pub[1][1], crypto.MASK_LABEL, 1, 1, digest)
    encoded = fixedpoint.encode(TRAINED, 100, 2, tail)
    n = len(encoded)
    masked = encoded + crypto.mask(seed, n) + crypto.mask(k_mask, n)
    print()
    print("=== The same attempt with metrics in the sum (7.10): the roster names val_examples, val_loss, "
          "train_loss;")
    print("=== worker 1 shares val_loss 0.375 on 20 validation examples and train_loss -1.5 (100 examples)")
    print(f"metric names digest       {digest.hex()}")
    print(f"mask key 1-2              {k_mask.hex()}")
    print(f"metric words (lo hi wt)   {words(tail)}")
    print(f"encoded, all 16 words     {words(encoded)}")
    print(f"PRG(seed 1)               {words(crypto.mask(seed, n))}")
    print(f"PRG(mask key 1-2)         {words(crypto.mask(k_mask, n))}")
    print(f"masked = sum mod 2^64     {words(masked)}")
    print()
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    handshake(worker, chief, quiet=True)
    send("SecAggKeys (worker 1 -> chief)", worker, chief, SecAggKeys(1, *pub[1]), quiet=True)
    roster = SecAggRoster(1, 1, 1, 2, 2, 2, tuple(Peer(w, *pub[w]) for w in (1, 2)), names)
    send("SecAggRoster with metrics (chief -> worker 1)", chief, worker, roster)
    arrays = [masked[:4].reshape(2, 2), masked[4:6], masked[6:7], masked[7:]]
    specs = tuple(TensorSpec(nm, "uint64", a.shape) for nm, a in zip([*NAMES, "weight", "metrics"], arrays))
    send("SecAggMasked with metrics (worker 1 -> chief)", worker, chief, SecAggMasked(1, 1, specs), arrays)


def main() -> None:
    auth_example()

    print("=== Frames of one conversation (worker 1, a float32[2, 2] and a float32[2] tensor)")
    print()
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    handshake(worker, chief, quiet=False)
    update = Update(round=1, num_examples=100, tensors=SPECS, metrics={"loss": 0.125})
    send("Update (worker -> chief)", worker, chief, update, TRAINED)
    send("Global (chief -> worker)", chief, worker, Global(round=1, tensors=SPECS), ROUND1)
    send("Heartbeat (either side)", worker, chief, Heartbeat())
    send("Done (chief -> worker)", chief, worker, Done(round=3, tensors=SPECS), FINAL)
    assert chief.we_finished and worker.they_finished

    # A second conversation: an update whose bias has the wrong shape is refused.
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    handshake(worker, chief, quiet=True)
    bad = [TRAINED[0], f32([0.25, -0.25, 0.0])]
    bad_update = Update(round=1, num_examples=100, tensors=specs_of(bad, NAMES))
    send("Update with a wrong shape", worker, chief, bad_update, bad, quiet=True)
    try:
        check_signature(SPECS, bad_update.tensors)  # what the chief's round logic does
    except RemoteProtocolError as exc:
        error = make_error(exc)
    else:  # pragma: no cover
        raise AssertionError("signature check passed")
    assert isinstance(error, Error)
    send("Error (chief -> worker)", chief, worker, error)

    # The same worker reconnecting: its Auth proves it holds the first Welcome's reconnect secret.
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    send("Hello", worker, chief, Hello(name=NAME, instance=INSTANCE), quiet=True)
    send("Challenge", chief, worker, Challenge(NONCE2), quiet=True)
    resume = Auth(tls.auth_mac(SECRET, NONCE2, FINGERPRINT, NAME),
                  resume=reconnect_proof(RECONNECT_SECRET, NONCE2, NAME))
    send("Auth with resume (worker -> chief), on a reconnection", worker, chief, resume)

    # A third: the Welcome of a FedProx chief (--strategy fedprox --mu 0.01), the
    # only case in which the plan carries "mu".
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    send("Hello", worker, chief, Hello(name=NAME, instance=INSTANCE), quiet=True)
    send("Challenge", chief, worker, Challenge(NONCE), quiet=True)
    send("Auth", worker, chief, Auth(tls.auth_mac(SECRET, NONCE, FINGERPRINT, NAME)), quiet=True)
    prox = dataclasses.replace(PLAN, mu=0.01)
    welcome = Welcome(worker_id=1, round=0, plan=prox, tensors=SPECS, has_weights=True,
                      reconnect_secret=RECONNECT_SECRET)
    frame = chief.send(welcome)
    assert deliver(frame, worker) == [welcome]
    dump("Welcome with a FedProx plan (chief -> worker)", frame)

    # A fourth: a worker that asks for acknowledgements (fedsock's worker does), not
    # sampled for round 1 (--fraction), and the Ack that says so.
    print("=== A worker that asks for Ack, not sampled for round 1")
    print()
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    send("Hello asking for acknowledgements (worker -> chief)", worker, chief,
         Hello(name=NAME, capabilities=(ACK_CAPABILITY,), instance=INSTANCE))
    send("Challenge", chief, worker, Challenge(NONCE), quiet=True)
    send("Auth", worker, chief, Auth(tls.auth_mac(SECRET, NONCE, FINGERPRINT, NAME)), quiet=True)
    send("Welcome", chief, worker, Welcome(worker_id=1, round=0, plan=PLAN, tensors=SPECS, has_weights=True,
                                           reconnect_secret=RECONNECT_SECRET), INITIAL, quiet=True)
    send("Update", worker, chief, Update(round=1, num_examples=100, tensors=SPECS), TRAINED, quiet=True)
    send("Ack (chief -> worker)", chief, worker, Ack(round=1, sampled=False, held=1, waiting=1))

    # A fifth: a worker that evaluates on request (capability "eval"), held in round 1 (not
    # sampled) and asked to evaluate the round's starting model; then its final report after Done.
    print("=== A held worker evaluating on request, and its final evaluation report (section 7.12)")
    print()
    worker, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    send("Hello asking for acknowledgements and evaluation requests (worker -> chief)", worker, chief,
         Hello(name=NAME, capabilities=(ACK_CAPABILITY, EVAL_CAPABILITY), instance=INSTANCE))
    send("Challenge", chief, worker, Challenge(NONCE), quiet=True)
    send("Auth", worker, chief, Auth(tls.auth_mac(SECRET, NONCE, FINGERPRINT, NAME)), quiet=True)
    send("Welcome", chief, worker, Welcome(worker_id=1, round=0, plan=PLAN, tensors=SPECS, has_weights=True,
                                           reconnect_secret=RECONNECT_SECRET), INITIAL, quiet=True)
    send("Update", worker, chief, Update(round=1, num_examples=100, tensors=SPECS), TRAINED, quiet=True)
    send("Ack", chief, worker, Ack(round=1, sampled=False, held=1, waiting=1), quiet=True)
    send("EvalRequest (chief -> worker): the model round 1 started from", chief, worker,
         EvalRequest(round=0, tensors=SPECS), INITIAL)
    send("EvalResult (worker -> chief)", worker, chief,
         EvalResult(round=0, metrics={"val_accuracy": 0.75, "val_examples": 40.0, "val_loss": 0.5}))
    done = Done(round=3, tensors=SPECS, report=60.0)
    frame = chief.send(done)
    assert deliver(frame, worker) == [done]
    dump("Done asking for the final report (chief -> worker; its Chunks as above)", frame)
    for chunk in iter_chunks(FINAL):
        deliver(chief.send(chunk), worker)
    assert chief.we_finished and worker.they_finished
    final = EvalResult(round=3, final=True, metrics={
        "val_accuracy": 0.875, "val_examples": 40.0, "val_loss": 0.25,
        "personalized_val_accuracy": 0.9375, "personalized_val_examples": 40.0, "personalized_val_loss": 0.125})
    send("EvalResult, final (worker -> chief), after Done", worker, chief, final)

    print("=== Compressed updates (section 4.1): the same trained weights, encoded")
    print()
    compressed("int8", show_welcome=True)
    compressed("topk:0.5", show_welcome=False)

    # Another conversation: a status query (fedsock status). Challenge and Auth
    # are as above, with the mac computed over the query's name.
    print("=== Frames of a status query (name \"status-1\")")
    print()
    query, chief = Connection(Role.WORKER), Connection(Role.CHIEF)
    send("Hello with the status capability (query -> chief)", query, chief,
         Hello(name="status-1", capabilities=("status",), instance=INSTANCE))
    send("Challenge", chief, query, Challenge(NONCE), quiet=True)
    send("Auth", query, chief, Auth(tls.auth_mac(SECRET, NONCE, FINGERPRINT, "status-1")), quiet=True)
    status = Status(
        round=1, rounds=3, finished=False, submitted=1, waiting=1, uptime=93.5, upstream=None,
        metrics={"accuracy": 0.875, "seconds": 2.5},
        workers=(WorkerStatus("worker-1", 1, True, 0.25, 1, 4096, 2048),), connected=1, known=1,
    )
    send("Status (chief -> query)", chief, query, status)
    assert chief.we_finished and query.they_finished

    secagg_example()


if __name__ == "__main__":
    main()
