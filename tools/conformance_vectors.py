"""Write conformance/*.jsonl: recorded conversations with a chief, one file per case of
protocol.md's error matrix (section 8.2) plus the ordinary handshake, status query and a
round-0 proposal.

Every frame is built with fedsock's own protocol code (``frames``, the message
classes, ``tls.auth_mac``) from the fixed example keys of protocol.md section 10,
and each vector whose expected code the sans-I/O ``Connection`` can decide (frame,
decode, schema and phase errors) is checked against it here, so a vector cannot
disagree with the code that made it. Run from the repository root::

    .venv/bin/python tools/conformance_vectors.py          # rewrite conformance/
    .venv/bin/python tools/conformance_vectors.py --check  # exit 1 if conformance/ is stale

The file format is in conformance/README.md; ``fedsock conformance`` replays them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from fedsock import tls
from fedsock.errors import RemoteProtocolError
from fedsock.protocol import (
    EVAL_CAPABILITY,
    NEED_DATA,
    Auth,
    Challenge,
    Connection,
    Encoding,
    EvalResult,
    Heartbeat,
    Hello,
    Kind,
    Role,
    SecAggKeys,
    Update,
    frames,
    iter_chunks,
    specs_of,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "conformance"

SECRET = bytes(range(0x00, 0x20))
NONCE = bytes(range(0x20, 0x40))
FINGERPRINT = bytes(range(0x40, 0x60))
INSTANCE = bytes(range(0x60, 0x70))
TOKEN = f"fs1.{FINGERPRINT.hex()}.{SECRET.hex()}"
MODEL = [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)]
SPECS = specs_of(MODEL, ["dense/kernel", "dense/bias"])


def frame(kind: int, body: bytes) -> bytes:
    return frames.HEADER.pack(frames.MAGIC, frames.VERSION, kind, len(body)) + body


def msg(m: Any) -> bytes:
    return frame(int(m.kind), frames.pack_body(m.to_body()))


def weights(m: Update, arrays: list[np.ndarray]) -> bytes:
    return msg(m) + b"".join(msg(c) for c in iter_chunks(arrays))


def hello(name: str) -> bytes:
    return msg(Hello(name=name, instance=INSTANCE))


def auth(name: str) -> bytes:
    return msg(Auth(tls.auth_mac(SECRET, NONCE, FINGERPRINT, name)))


@dataclass
class Vector:
    name: str
    what: str
    layer: str  # frame | decode | schema | phase | semantics | ok
    section: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    code: str | None = None  # the Error the chief must answer with (None: no Error)
    auth_failure: bool = False  # the answer counts as a failed authentication of the address
    requires: dict[str, Any] = field(default_factory=dict)

    def send(self, data: bytes, live: str | None = None, note: str = "", **extra: Any) -> Vector:
        step: dict[str, Any] = {"op": "send", "hex": data.hex(), "note": note}
        if live:
            step["live"] = live
        step.update(extra)
        self.steps.append(step)
        return self

    def expect(self, kind: str, **extra: Any) -> Vector:
        self.steps.append({"op": "expect", "kind": kind, **extra})
        return self

    def handshake(self, name: str) -> Vector:
        self.send(hello(name), "hello", f"Hello name {name!r} (the runner appends a suffix per run)")
        self.expect("Challenge", hex=msg(Challenge(NONCE)).hex())
        self.send(auth(name), "auth", "Auth, its mac over the live nonce, fingerprint and name")
        return self.expect("Welcome")

    def model(self) -> Vector:
        """Hold the vectors' model: propose it if the chief has none, else require it."""
        proposal = weights(Update(round=0, num_examples=0, tensors=SPECS), MODEL)
        specs = [{"dtype": s.dtype, "shape": list(s.shape)} for s in SPECS]
        self.steps.append({"op": "model", "hex": proposal.hex(), "specs": specs,
                           "note": "Update round 0 proposing the vectors' model, sent only if Welcome has no "
                                   "weights; answered by Global"})
        return self

    def fails(self, code: str) -> Vector:
        self.code = code
        return self.expect("Error", code=code).expect("closed")


def vectors() -> list[Vector]:
    v: list[Vector] = []
    bad_hello = Hello(name="x", instance=INSTANCE).to_body()

    def body_hello(**changes: Any) -> bytes:
        return frame(Kind.HELLO, msgpack.packb({**bad_hello, **changes}, use_bin_type=True))

    # --- 1. header ---------------------------------------------------------------------------
    v.append(Vector("frame-bad-magic", "a frame whose magic is not FS", "frame", "2")
             .send(b"GET / HTTP/1.1\r\n\r\n", note="an HTTP request").fails("bad_frame"))
    v.append(Vector("frame-version-2", "header version byte 2", "frame", "2")
             .send(frames.HEADER.pack(frames.MAGIC, 2, 1, 1) + b"\x80").fails("unsupported_version"))
    v.append(Vector("frame-kind-0", "kind 0", "frame", "2").send(frame(0, b"\x80")).fails("bad_frame"))
    v.append(Vector("frame-kind-23", "kind 23 (kinds are 1-22)", "frame", "2")
             .send(frame(23, b"\x80")).fails("bad_frame"))
    v.append(Vector("frame-preauth-too-large", "a Hello announcing 4097 bytes, before Auth", "frame", "2")
             .send(frames.HEADER.pack(frames.MAGIC, 1, 1, 4097), note="header only").fails("frame_too_large"))
    v.append(Vector("phase-secagg-in-hello", "kind 12 with an empty body in phase HELLO", "phase", "2")
             .send(frame(Kind.SECAGG_KEYS, b""), note="header, no body").fails("out_of_order"))
    v.append(Vector("phase-heartbeat-in-hello", "Heartbeat before Hello", "phase", "6")
             .send(msg(Heartbeat())).fails("out_of_order"))
    # --- 2. body as msgpack ------------------------------------------------------------------
    v.append(Vector("decode-empty-body", "a Hello of length 0", "decode", "2")
             .send(frame(Kind.HELLO, b"")).fails("bad_frame"))
    v.append(Vector("decode-not-a-map", "a Hello whose body is an array", "decode", "3.1")
             .send(frame(Kind.HELLO, b"\x90")).fails("bad_frame"))
    v.append(Vector("decode-ext-type", "an ext value (fixext1) in Hello", "decode", "3.1")
             .send(frame(Kind.HELLO, msgpack.packb({**bad_hello, "x": msgpack.ExtType(5, b"a")},
                                                    use_bin_type=True))).fails("bad_frame"))
    v.append(Vector("decode-ext-nested", "an ext value nested in an array", "decode", "3.1")
             .send(frame(Kind.HELLO, msgpack.packb({**bad_hello, "x": [[msgpack.ExtType(1, b"ab")]]},
                                                    use_bin_type=True))).fails("bad_frame"))
    v.append(Vector("decode-trailing-bytes", "bytes after the body's map", "decode", "3.1")
             .send(frame(Kind.HELLO, frames.pack_body(bad_hello) + b"\x00")).fails("bad_frame"))
    # --- 3. fields ---------------------------------------------------------------------------
    v.append(Vector("schema-hello-no-name", "Hello without name", "schema", "3.2")
             .send(frame(Kind.HELLO, frames.pack_body({k: x for k, x in bad_hello.items() if k != "name"})))
             .fails("bad_message"))
    v.append(Vector("schema-hello-empty-name", "Hello with the empty name", "schema", "3.2")
             .send(body_hello(name="")).fails("bad_message"))
    v.append(Vector("schema-hello-name-space", "Hello name with a space", "schema", "3.2")
             .send(body_hello(name="two words")).fails("bad_message"))
    v.append(Vector("schema-hello-name-too-long", "Hello name of 65 bytes", "schema", "3.2")
             .send(body_hello(name="a" * 65)).fails("limit_exceeded"))
    v.append(Vector("schema-hello-instance-15", "Hello instance of 15 bytes", "schema", "3.2")
             .send(body_hello(instance=bytes(15))).fails("bad_message"))
    v.append(Vector("schema-hello-version-2", "Hello version 2", "schema", "3.2")
             .send(body_hello(version=2)).fails("unsupported_version"))
    # --- Auth ---------------------------------------------------------------------------------
    name = "conformance-auth"

    def after_challenge(vec: Vector) -> Vector:
        vec.send(hello(name), "hello", "Hello (the runner appends a suffix to the name)")
        return vec.expect("Challenge", hex=msg(Challenge(NONCE)).hex())

    v.append(after_challenge(Vector("auth-wrong-mac", "Auth with a wrong mac", "semantics", "5"))
             .send(msg(Auth(bytes(32))), note="mac of 32 zero bytes").fails("auth_failed"))
    v[-1].auth_failure = True
    v.append(after_challenge(Vector("auth-mac-31", "Auth mac of 31 bytes", "schema", "3.2"))
             .send(frame(Kind.AUTH, frames.pack_body({"mac": bytes(31)}))).fails("auth_failed"))
    v[-1].auth_failure = True
    v.append(after_challenge(Vector("auth-mac-str", "Auth mac as str", "schema", "3.2"))
             .send(frame(Kind.AUTH, frames.pack_body({"mac": "0" * 32}))).fails("bad_message"))
    v.append(after_challenge(Vector("phase-update-instead-of-auth", "Update in phase AUTH", "phase", "6"))
             .send(msg(Update(round=1, num_examples=1, tensors=()))).fails("out_of_order"))
    v.append(after_challenge(Vector("frame-auth-too-large", "Auth announcing 4097 bytes", "frame", "2"))
             .send(frames.HEADER.pack(frames.MAGIC, 1, 3, 4097), note="header only").fails("frame_too_large"))
    # --- accepted conversations ---------------------------------------------------------------
    v.append(Vector("ok-join", "Hello, Challenge, Auth: Welcome", "ok", "5").handshake("conformance-join"))
    v.append(after_challenge(Vector("ok-status", "a status query: Status, then the chief closes", "ok", "7.9"))
             .send(auth(name), "auth").expect("Status").expect("closed"))
    v[-1].steps[0]["hex"] = msg(Hello(name=name, capabilities=("status",), instance=INSTANCE)).hex()
    # --- established: phase and semantics -----------------------------------------------------
    no_model = Vector("semantics-update-before-model", "Update for round 1 while the chief has no model",
                      "semantics", "7.6", requires={"has_weights": False})
    no_model.handshake("conformance-early")
    no_model.send(weights(Update(round=1, num_examples=1, tensors=SPECS), MODEL), "round", offset=1)
    v.append(no_model.fails("out_of_order"))
    v.append(Vector("ok-proposal", "a round-0 proposal is answered with Global", "ok", "7.3")
             .handshake("conformance-model").model())
    v.append(Vector("phase-global-from-worker", "a worker sends a chief's kind (Global)", "phase", "6")
             .handshake("conformance-global").model()
             .send(frame(Kind.GLOBAL, frames.pack_body({"round": 0, "tensors": []}))).fails("out_of_order"))
    v.append(Vector("phase-stray-chunk", "a Chunk outside a weights message", "phase", "4")
             .handshake("conformance-chunk").model()
             .send(frame(Kind.CHUNK, frames.pack_body({"t": 0, "o": 0, "d": b"\0"}))).fails("out_of_order"))
    second = list(iter_chunks(MODEL))[1]  # tensor 1's chunk where tensor 0's is due
    v.append(Vector("phase-chunk-wrong-tensor", "an Update whose first Chunk is for tensor 1", "phase", "4")
             .handshake("conformance-offset").model()
             .send(msg(Update(round=1, num_examples=1, tensors=SPECS)) + msg(second), "round", offset=1)
             .fails("out_of_order"))
    v.append(Vector("semantics-future-round", "Update for the round after the one being collected",
                    "semantics", "7.6").handshake("conformance-future").model()
             .send(weights(Update(round=2, num_examples=1, tensors=SPECS), MODEL), "round", offset=2)
             .fails("bad_message"))
    enc = tuple(s.__class__(s.name, s.dtype, s.shape, enc=Encoding("fp16")) for s in SPECS)
    fp16 = [np.zeros(4, np.float16).view(np.uint8), np.zeros(2, np.float16).view(np.uint8)]
    v.append(Vector("semantics-encoding-not-asked", "an fp16-encoded Update to a chief that did not ask for "
                    "compression", "semantics", "7.6", requires={"compress": None})
             .handshake("conformance-fp16").model()
             .send(msg(Update(round=1, num_examples=1, tensors=enc))
                   + b"".join(msg(c) for c in iter_chunks(fp16)), "round", offset=1).fails("bad_message"))
    other = specs_of([np.zeros((3, 2), np.float32), np.zeros(2, np.float32)], ["dense/kernel", "dense/bias"])
    v.append(Vector("semantics-signature", "Update whose first tensor is 3x2, not 2x2", "semantics", "7.6")
             .handshake("conformance-shape").model()
             .send(weights(Update(round=1, num_examples=1, tensors=other),
                           [np.zeros((3, 2), np.float32), MODEL[1]]), "round", offset=1)
             .fails("signature_mismatch"))
    nan = [np.full((2, 2), np.nan, np.float32), MODEL[1]]
    v.append(Vector("semantics-nan", "Update holding NaN", "semantics", "7.6").handshake("conformance-nan")
             .model().send(weights(Update(round=1, num_examples=1, tensors=SPECS), nan), "round", offset=1)
             .fails("invalid_weights"))
    v.append(Vector("semantics-zero-examples", "Update with num_examples 0", "semantics", "7.6")
             .handshake("conformance-zero").model()
             .send(weights(Update(round=1, num_examples=0, tensors=SPECS), MODEL), "round", offset=1)
             .fails("bad_message"))
    v.append(Vector("semantics-secagg-to-plain-chief", "SecAggKeys to a chief without secure aggregation",
                    "semantics", "7.10", requires={"secure_agg": False}).handshake("conformance-secagg").model()
             .send(msg(SecAggKeys(round=1, share_key=bytes(32), mask_key=bytes(32))), "round", offset=1)
             .fails("out_of_order"))
    # --- compatibility: what a later revision may add is ignored -----------------------------
    future = Vector("compat-unknown-keys", "unknown keys in Hello, Auth, a Heartbeat and an Update, and an "
                    "unknown capability, are ignored: the update is averaged", "ok", "11",
                    requires={"min_workers": 1})
    name = "conformance-future"
    future.send(frame(Kind.HELLO, frames.pack_body({**Hello(name=name, instance=INSTANCE).to_body(),
                                                    "capabilities": ["x-later"], "x_later": {"a": [1]}})),
                "hello", "Hello with an unknown capability and key")
    future.expect("Challenge", hex=msg(Challenge(NONCE)).hex())
    future.send(frame(Kind.AUTH, frames.pack_body({"mac": tls.auth_mac(SECRET, NONCE, FINGERPRINT, name),
                                                   "x_later": 1})), "auth", "Auth with an unknown key")
    future.expect("Welcome").model()
    future.send(frame(Kind.HEARTBEAT, frames.pack_body({"x_later": True})), note="a Heartbeat that is not {}")
    update = {**Update(round=1, num_examples=1, tensors=SPECS).to_body(), "x_later": "metric fields, say"}
    future.send(frame(Kind.UPDATE, frames.pack_body(update)) + b"".join(msg(c) for c in iter_chunks(MODEL)),
                "round", "an Update with an unknown key, for the round being collected", offset=1)
    v.append(future.expect("Global"))
    # --- evaluation on request (7.12) ----------------------------------------------------------
    unasked = msg(EvalResult(round=0, metrics={"val_accuracy": 0.5, "val_examples": 10.0}))
    v.append(Vector("phase-eval-result-without-capability", "an EvalResult from a worker whose Hello had no "
                    "\"eval\"", "phase", "6").handshake("conformance-evalcap").model()
             .send(unasked).fails("out_of_order"))
    asks = Vector("semantics-eval-result-not-asked", "an EvalResult no EvalRequest asked for", "semantics",
                  "7.12").handshake("conformance-unasked")
    asks.steps[0]["hex"] = msg(Hello(name="conformance-unasked", capabilities=(EVAL_CAPABILITY,),
                                     instance=INSTANCE)).hex()
    asks.steps[0]["note"] = "Hello with the \"eval\" capability (the runner appends a suffix to the name)"
    v.append(asks.model().send(unasked).fails("out_of_order"))
    for i, vec in enumerate(v, 1):
        vec.name = f"{i:02d}-{vec.name}"
    return v


def self_check(vec: Vector) -> None:
    """The chief's sans-I/O Connection must reach the vector's code on its frame-to-phase layers."""
    conn = Connection(Role.CHIEF)
    got: str | None = None
    try:
        for step in vec.steps:
            if step["op"] == "send":
                conn.receive_data(bytes.fromhex(step["hex"]))
                while (ev := conn.next_event()) is not NEED_DATA:
                    if isinstance(ev, Hello):
                        conn.send(Challenge(NONCE))
            elif step["op"] == "model" or step.get("kind") == "Welcome":
                return  # past the handshake the chief's own rules decide; the live run checks them
    except RemoteProtocolError as exc:
        got = exc.code
    if vec.layer in ("frame", "decode", "schema", "phase"):
        assert got == vec.code, (vec.name, got, vec.code)
    else:
        assert got is None or (vec.code == got == "auth_failed"), (vec.name, got)


def render(vec: Vector) -> str:
    head = {"vector": vec.name, "what": vec.what, "layer": vec.layer, "section": vec.section,
            "code": vec.code, "closes": vec.code is not None, "auth_failure": vec.auth_failure,
            "requires": vec.requires, "token": TOKEN, "nonce": NONCE.hex(), "instance": INSTANCE.hex()}
    return "".join(json.dumps(x, sort_keys=False) + "\n" for x in [head, *vec.steps])


def main(argv: list[str]) -> int:
    vecs = vectors()
    for vec in vecs:
        self_check(vec)
    files = {f"{vec.name}.jsonl": render(vec) for vec in vecs}
    if "--check" in argv:
        stale = sorted(n for n, text in files.items() if not (OUT / n).exists() or (OUT / n).read_text() != text)
        extra = sorted(p.name for p in OUT.glob("*.jsonl") if p.name not in files)
        if stale or extra:
            print(f"conformance/ is stale: {stale + extra}; run tools/conformance_vectors.py")
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for p in OUT.glob("*.jsonl"):
        if p.name not in files:
            p.unlink()
    for n, text in files.items():
        (OUT / n).write_text(text)
    print(f"wrote {len(files)} vectors to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
