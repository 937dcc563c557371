"""Write real fedsock inputs, made by the real encoders, as seeds for the fuzz targets (fuzz/targets.py).

    python fuzz/make_corpus.py

fuzz/corpus/ (protocol: whole conversations), fuzz/corpus-secagg/ (secure-aggregation
attempts, both sides), fuzz/corpus-status/ (a chief's answers to a status query),
fuzz/corpus-checkpoint/ (checkpoint files). The first byte of each seed is its target's flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedsock.protocol import (  # noqa: E402
    NEED_DATA,
    Auth,
    Challenge,
    Connection,
    Done,
    Error,
    Global,
    Heartbeat,
    Hello,
    Plan,
    Role,
    Update,
    Welcome,
    iter_chunks,
    specs_of,
)


def conversation() -> tuple[bytes, bytes]:
    """A whole conversation: (worker -> chief bytes, chief -> worker bytes)."""
    w, c = Connection(Role.WORKER), Connection(Role.CHIEF)
    up, down = b"", b""

    def deliver(data: bytes, dst: Connection) -> None:
        dst.receive_data(data)
        while dst.next_event() is not NEED_DATA:
            pass

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float16), np.zeros((0,), np.float32)]
    specs = specs_of(arrays)
    for sender, dst, msg, chunks in [
        (w, c, Hello(name="corpus", instance=bytes(range(16))), ()),
        (c, w, Challenge(b"n" * 32), ()),
        (w, c, Auth(b"m" * 32), ()),
        (c, w, Welcome(1, 0, Plan(2, 5, 8), tensors=specs, has_weights=True, reconnect_secret=bytes(32)), arrays),
        (w, c, Update(1, 10, specs, {"loss": 0.5}), arrays),
        (w, c, Heartbeat(), ()),
        (c, w, Global(1, specs), arrays),
        (w, c, Update(2, 10, specs, {}), arrays),
        (c, w, Done(2, specs), arrays),
        (w, c, Error("shutdown", "bye"), ()),
    ]:
        data = sender.send(msg) + b"".join(sender.send(ch) for ch in iter_chunks(chunks, 8))
        deliver(data, dst)
        if sender is w:
            up += data
        else:
            down += data
    return up, down


def rich_conversation() -> tuple[bytes, bytes]:
    """Every optional field: a Welcome with model, compile config, compression, a full plan; Updates
    with int8, top-k and fp16 encoded deltas. (worker -> chief, chief -> worker) bytes."""
    import json

    from fedsock.protocol.compression import encode, parse_compression
    from fedsock.protocol.specs import TensorSpec

    w, c = Connection(Role.WORKER), Connection(Role.CHIEF)
    up, down = b"", b""
    arrays = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), np.arange(5, dtype=np.float32)]
    specs = specs_of(arrays, ["dense/kernel", "dense/bias"])
    plan = Plan(5, 10, 16, mu=0.01, dp_clip=1.0, dp_noise=0.5, heartbeat_interval=5.0, idle_timeout=30.0,
                round_timeout=60.0, min_workers=2)
    model = json.dumps({"class_name": "Sequential", "config": {"layers": []}})
    compile_ = json.dumps({"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]})
    updates = []
    for mode in ("int8", "topk:0.5", "fp16"):
        encs, payloads = zip(*(encode(a, parse_compression(mode)) for a in arrays))
        enc_specs = tuple(TensorSpec(s.name, s.dtype, s.shape, e) for s, e in zip(specs, encs))
        updates.append((Update(len(updates) + 1, 10, enc_specs, {"loss": 0.5}), list(payloads)))
    for sender, dst, msg, chunks in [
        (w, c, Hello(name="rich.worker@site-1", capabilities=("ack",), instance=bytes(range(16)),
                     features=("secure_agg", "dp_clip")), ()),
        (c, w, Challenge(b"n" * 32), ()),
        (w, c, Auth(b"m" * 32, resume=b"r" * 32), ()),
        (c, w, Welcome(2, 0, plan, specs, model, compile_, True, "topk:0.5", bytes(32), ("dp_clip",)), arrays),
        *((w, c, u, payloads) for u, payloads in updates),
        (c, w, Global(1, specs), arrays),
    ]:
        data = sender.send(msg) + b"".join(sender.send(ch) for ch in iter_chunks(chunks, 16))
        dst.receive_data(data)
        while dst.next_event() is not NEED_DATA:
            pass
        if sender is w:
            up += data
        else:
            down += data
    return up, down


def eval_conversation() -> tuple[bytes, bytes]:
    """A worker that asked for Acks and evaluation requests: (worker -> chief, chief -> worker) bytes."""
    from fedsock.protocol import ACK_CAPABILITY, EVAL_CAPABILITY, Ack, EvalRequest, EvalResult

    w, c = Connection(Role.WORKER), Connection(Role.CHIEF)
    up, down = b"", b""
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    specs = specs_of(arrays)
    for sender, dst, msg, chunks in [
        (w, c, Hello(name="corpus", capabilities=(ACK_CAPABILITY, EVAL_CAPABILITY), instance=bytes(range(16))), ()),
        (c, w, Challenge(b"n" * 32), ()),
        (w, c, Auth(b"m" * 32), ()),
        (c, w, Welcome(1, 0, Plan(2, 5, 8), tensors=specs, has_weights=True, reconnect_secret=bytes(32)), arrays),
        (c, w, EvalRequest(0, specs), arrays),
        (w, c, EvalResult(0, {"val_accuracy": 0.5, "val_examples": 20.0}), ()),
        (w, c, Update(1, 10, specs, {"loss": 0.5}), arrays),
        (c, w, Ack(1, True, 1, 0), ()),
        (c, w, Done(1, specs, report=30.0), arrays),
        (w, c, EvalResult(1, {"val_accuracy": 0.75, "personalized_val_accuracy": 0.8}, final=True), ()),
    ]:
        data = sender.send(msg) + b"".join(sender.send(ch) for ch in iter_chunks(chunks, 8))
        dst.receive_data(data)
        while dst.next_event() is not NEED_DATA:
            pass
        if sender is w:
            up += data
        else:
            down += data
    return up, down


def secagg_conversation() -> tuple[bytes, bytes]:
    """One secure-aggregation attempt after the handshake: (worker -> chief, chief -> worker) bytes."""
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

    w, c = Connection(Role.WORKER), Connection(Role.CHIEF)
    up, down = b"", b""
    masked = [np.arange(6, dtype=np.uint64).reshape(2, 3), np.ones(1, np.uint64)]
    mspecs = specs_of(masked)
    key = bytes(range(32))
    for sender, dst, msg, chunks in [
        (w, c, Hello(name="corpus", instance=bytes(range(16))), ()),
        (c, w, Challenge(b"n" * 32), ()),
        (w, c, Auth(b"m" * 32), ()),
        (c, w, Welcome(1, 0, Plan(2, 5, 8, secure_agg=True), reconnect_secret=bytes(32)), ()),
        (w, c, SecAggKeys(1, key, key[::-1]), ()),
        (c, w, SecAggRoster(1, 1, 1, 2, 2, 2, (Peer(1, key, key[::-1]), Peer(2, key[::-1], key))), ()),
        (w, c, SecAggShares(1, 1, ((2, b"s" * 160),)), ()),
        (c, w, SecAggInbox(1, 1, ((2, b"t" * 160),)), ()),
        (w, c, SecAggMasked(1, 1, mspecs), masked),
        (c, w, SecAggUnmask(1, 1, (1, 2), ()), ()),
        (w, c, SecAggReveal(1, 1, ((1, b"a" * 66), (2, b"b" * 66)), ()), ()),
        (c, w, SecAggAbort(1, 1, "too few"), ()),
    ]:
        data = sender.send(msg) + b"".join(sender.send(ch) for ch in iter_chunks(chunks, 8))
        dst.receive_data(data)
        while dst.next_event() is not NEED_DATA:
            pass
        if sender is w:
            up += data
        else:
            down += data
    return up, down


def status_query() -> bytes:
    """What ``fedsock status`` sends a chief: Hello with the status capability, then Auth."""
    from fedsock.protocol import STATUS_CAPABILITY

    w = Connection(Role.WORKER)
    hello = w.send(Hello(name="status-corpus", capabilities=(STATUS_CAPABILITY,), instance=bytes(range(16))))
    c = Connection(Role.CHIEF)
    c.receive_data(hello)
    while c.next_event() is not NEED_DATA:
        pass
    w.receive_data(c.send(Challenge(b"n" * 32)))
    while w.next_event() is not NEED_DATA:
        pass
    return hello + w.send(Auth(b"m" * 32))


def frames_of(role: Role, messages: list) -> bytes:
    """The bytes ``role`` sends for ``messages`` in the established phase ((message, arrays) for weights)."""
    from fedsock.protocol import Phase

    sender = Connection(role, phase=Phase.ESTABLISHED)
    out = b""
    for m in messages:
        msg, arrays = m if isinstance(m, tuple) else (m, ())
        out += sender.send(msg) + b"".join(sender.send(ch) for ch in iter_chunks(arrays, 16))
    return out


def secagg_seeds() -> dict[str, bytes]:
    """Both sides of honest attempts (targets.transcript): what worker 1 receives from the chief,
    and what worker 4 sends it; with and without worker 3 dropping out."""
    import targets

    from fedsock.protocol import SecAggAbort

    seeds = {}
    for dropout, tag in ((None, "all"), (3, "dropout-3")):
        t = targets.transcript(dropout)
        me, fz = targets.ME, targets.FUZZED
        seeds[f"worker-{tag}"] = b"\x00" + frames_of(Role.CHIEF, [t["roster"][me], t["inbox"][me], t["unmask"][me]])
        sent = [t["keys"][fz], t["shares"][fz], t["masked"][fz], t["reveal"][fz]]
        seeds[f"chief-{tag}"] = (b"\x03" if dropout else b"\x01") + frames_of(Role.WORKER, sent)
    t = targets.HONEST[None]
    seeds["worker-abort-then-all"] = b"\x00" + frames_of(
        Role.CHIEF, [SecAggAbort(1, 1, "too few"), t["roster"][1], t["inbox"][1], t["unmask"][1]])
    seeds["chief-keys-only"] = b"\x01" + frames_of(Role.WORKER, [t["keys"][4]])
    return seeds


def status_seeds() -> dict[str, bytes]:
    """A chief's Challenge and Status, as a status client receives them (counts only, full, finished relay)."""
    from fedsock.protocol import Phase, Status, WorkerStatus

    full = Status(7, 20, False, 2, 1, 3600.5, None, {"accuracy": 0.91, "loss": 0.3, "seconds": 1.5},
                  (WorkerStatus("w-1", 1, True, 0.4, 7, 123456, 654321, {"val_accuracy": 0.9, "val_loss": 0.2}),
                   WorkerStatus("w.2@site", 2, False, 75.0, 3, 10, 20)), connected=1, known=2)
    seeds = {}
    for tag, st in (("counts", Status(3, 10, False, 1, 2, 12.0, connected=3, known=3)), ("full", full),
                    ("finished-relay", Status(10, 10, True, 0, 0, 90000.0, "10.0.0.1:7777", {"loss": 1e20}))):
        chief = Connection(Role.CHIEF, phase=Phase.CHALLENGE)
        stream = chief.send(Challenge(b"n" * 32))
        chief.phase, chief.status_query = Phase.STATUS, True
        seeds[tag] = b"\x00" + stream + chief.send(st)
    return seeds


def checkpoint_seeds(tmp: Path) -> dict[str, bytes]:
    """Checkpoint files as the chief writes them (records.Checkpoints), for FedAvg and FedAdam."""
    import json

    from fedsock import checkpoint
    from fedsock.aggregation import fedadam, flatten_state

    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float16), np.zeros((0,), np.int64)]
    specs = specs_of(weights, ["dense/kernel", "dense/bias", "empty"])
    rng = json.dumps(np.random.default_rng(5).bit_generator.state)
    seeds = {}
    for flag, tag, state in ((0, "fedavg", ()), (1, "fedadam", fedadam().init(weights))):
        meta = {"metrics_lines": 4, "rng": rng, "members": ["w-1", "w-2"],
                "last_row": json.dumps({"round": 4, "workers": 2, "loss": 0.5})}
        path = tmp / f"{tag}.fsck"
        checkpoint.save(path, checkpoint.Checkpoint(4, specs, weights, flatten_state(state), meta))
        seeds[tag] = bytes([flag]) + path.read_bytes()
    path = tmp / "fresh.fsck"
    checkpoint.save(path, checkpoint.Checkpoint(0, (), [], [], {}))
    seeds["empty-model"] = b"\x00" + path.read_bytes()
    return seeds


def write(out: Path, seeds: dict[str, bytes]) -> None:
    out.mkdir(exist_ok=True)
    for name, data in seeds.items():
        (out / name).write_bytes(data)


def main() -> None:
    out = Path(__file__).resolve().parent / "corpus"
    out.mkdir(exist_ok=True)
    up, down = conversation()
    # first byte: bit 0 the receiving Connection is the chief, bit 1 direct_chunk; second: piece size - 1
    (out / "to-chief-whole").write_bytes(b"\x01\xff" + up)
    (out / "to-chief-bytewise").write_bytes(b"\x01\x00" + up)
    (out / "to-chief-direct-5").write_bytes(b"\x03\x04" + up)
    (out / "to-worker-whole").write_bytes(b"\x00\xff" + down)
    (out / "to-worker-7").write_bytes(b"\x00\x06" + down)
    (out / "to-chief-status-query").write_bytes(b"\x01\xff" + status_query())
    up, down = rich_conversation()
    (out / "rich-to-chief").write_bytes(b"\x01\xff" + up)
    (out / "rich-to-worker").write_bytes(b"\x00\xff" + down)
    up, down = eval_conversation()
    (out / "eval-to-chief").write_bytes(b"\x01\xff" + up)
    (out / "eval-to-worker").write_bytes(b"\x04\xff" + down)  # bit 2: its Hello asked for acks and evals
    up, down = secagg_conversation()
    (out / "secagg-to-chief").write_bytes(b"\x01\xff" + up)
    (out / "secagg-to-worker").write_bytes(b"\x00\xff" + down)
    print(f"wrote {len(list(out.iterdir()))} seeds to {out}")
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with tempfile.TemporaryDirectory() as tmp:
        for name, seeds in (("secagg", secagg_seeds()), ("status", status_seeds()),
                            ("checkpoint", checkpoint_seeds(Path(tmp)))):
            write(out.with_name(f"corpus-{name}"), seeds)
            print(f"wrote {len(seeds)} seeds to {out.with_name(f'corpus-{name}')}")


if __name__ == "__main__":
    main()
