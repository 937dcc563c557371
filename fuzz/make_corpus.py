"""Write real fedsock byte streams into fuzz/corpus/ as seeds for fuzz_protocol.py."""

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
    up, down = secagg_conversation()
    (out / "secagg-to-chief").write_bytes(b"\x01\xff" + up)
    (out / "secagg-to-worker").write_bytes(b"\x00\xff" + down)
    print(f"wrote {len(list(out.iterdir()))} seeds to {out}")


if __name__ == "__main__":
    main()
