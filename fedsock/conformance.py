"""``fedsock conformance``: replay the recorded conversations of ``conformance/`` against a live chief.

Each vector file (conformance/README.md) is a header line and steps. The
runner opens one TLS connection per vector, checks the certificate pin, and
sends each step's frames byte for byte, except for the fields a live chief
makes different from the recording:

* ``live: "hello"``: Hello's ``name`` gets a per-run suffix (names are held
  after a connection, 7.2) and ``instance`` fresh random bytes;
* ``live: "auth"``: Auth's ``mac`` is computed over the live Challenge nonce,
  the token's fingerprint and the live name (5);
* ``live: "round"``: the message's ``round`` is the chief's global round (from
  its Welcome or Global) plus the step's ``offset``.

Answers are read as frames (Heartbeats and Chunks are skipped) and compared by
kind and, for an Error, by code; a vector that expects an Error also expects
the chief to close the connection after it. Messages are free text and not
compared. A vector whose ``requires`` the chief does not meet (e.g. one for a
chief without compression) is skipped, not failed.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsock import limits, tls
from fedsock.errors import FedsockError, RemoteProtocolError, VectorMismatch
from fedsock.protocol import Kind, frames

#: The vectors shipped with fedsock (a checkout's conformance/ directory).
VECTORS = Path(__file__).resolve().parent.parent / "conformance"
#: Kinds the runner reads past while it waits for an answer.
SKIPPED = {Kind.HEARTBEAT, Kind.CHUNK}


@dataclass(frozen=True)
class Outcome:
    """One vector's result: ``status`` is ``pass``, ``fail`` or ``skip``."""

    vector: str
    status: str
    detail: str = ""


def _skip(message: str) -> VectorMismatch:
    return VectorMismatch(message, skipped=True)




def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A vector file's header and steps."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines[0], lines[1:]


def vector_files(directory: Path = VECTORS) -> list[Path]:
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise FedsockError(f"no conformance vectors (*.jsonl) in {directory}")
    return files


class _Peer:
    """One connection to the chief: raw bytes out, frames in."""

    def __init__(self, address: str, token: tls.JoinToken, source: str, timeout: float) -> None:
        host, port = address.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=timeout, source_address=(source, 0))
        try:
            self.sock: ssl.SSLSocket = tls.client_context().wrap_socket(raw)
        except (OSError, ssl.SSLError):
            raw.close()
            raise
        tls.check_pinned(self.sock, token.fingerprint)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError):
            pass  # the chief may have refused an earlier byte already; its answer tells

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            raise VectorMismatch("no answer from the chief in time") from None
        except (OSError, ssl.SSLError):
            data = b""
        self.buf += data
        return bool(data)

    def frame(self) -> tuple[Kind, dict[str, Any]] | None:
        """The next frame that is not a Heartbeat or Chunk (None: the chief closed)."""
        while True:
            while len(self.buf) < frames.HEADER_BYTES:
                if not self._fill():
                    return None
            try:
                kind, length = frames.decode_header(self.buf[: frames.HEADER_BYTES], limits.MAX_FRAME_BYTES)
            except RemoteProtocolError as exc:
                raise VectorMismatch(f"the chief sent a broken frame header: {exc}") from None
            while len(self.buf) < frames.HEADER_BYTES + length:
                if not self._fill():
                    raise VectorMismatch("the chief closed in the middle of a frame")
            body = bytes(self.buf[frames.HEADER_BYTES : frames.HEADER_BYTES + length])
            del self.buf[: frames.HEADER_BYTES + length]
            if kind in SKIPPED:
                continue
            try:
                return kind, frames.unpack_body(body)
            except RemoteProtocolError as exc:
                raise VectorMismatch(f"the chief sent a broken {kind.name} body: {exc}") from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _split(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(kind, body) of each whole frame in ``data``; a tail that is not one is yielded as (-1, tail)."""
    i = 0
    while i + frames.HEADER_BYTES <= len(data):
        magic, _, kind, length = frames.HEADER.unpack(data[i : i + frames.HEADER_BYTES])
        end = i + frames.HEADER_BYTES + length
        if magic != frames.MAGIC or end > len(data):
            break
        yield kind, data[i + frames.HEADER_BYTES : end]
        i = end
    if i < len(data):
        yield -1, data[i:]


class _Run:
    def __init__(self, token: tls.JoinToken, peer: _Peer, suffix: str) -> None:
        self.token, self.peer, self.suffix = token, peer, suffix
        self.name = ""
        self.nonce = b""
        self.round = 0
        self.welcome: dict[str, Any] = {}

    def live(self, step: dict[str, Any]) -> bytes:
        data = bytes.fromhex(step["hex"])
        how = step.get("live")
        if how is None:
            return data
        out = b""
        for i, (kind, body) in enumerate(_split(data)):
            if kind < 0 or i > 0:  # only the step's first frame carries live fields
                out += body if kind < 0 else frames.encode_header(Kind(kind), len(body)) + body
                continue
            b = frames.unpack_body(body)
            if how == "hello":
                self.name = f"{b['name']}-{self.suffix}"
                b["name"], b["instance"] = self.name, os.urandom(len(b["instance"]))
            elif how == "auth":
                b["mac"] = tls.auth_mac(self.token.secret, self.nonce, self.token.fingerprint, self.name)
            elif how == "round":
                b["round"] = self.round + int(step["offset"])
            packed = frames.pack_body(b)
            out += frames.encode_header(Kind(kind), len(packed)) + packed
        return out

    def expect(self, step: dict[str, Any], header: dict[str, Any]) -> None:
        want = step["kind"]
        got = self.peer.frame()
        if want == "closed":
            if got is not None:
                raise VectorMismatch(f"expected the chief to close the connection, got {_describe(got)}")
            return
        if got is None:
            raise VectorMismatch(f"expected {want}{_code(step)}, but the chief closed the connection")
        kind, body = got
        if kind.name.lower().replace("_", "") != want.lower():
            raise VectorMismatch(f"expected {want}{_code(step)}, got {_describe(got)}")
        if kind == Kind.ERROR and body.get("code") != step["code"]:
            raise VectorMismatch(f"expected Error {step['code']}, got {_describe(got)}")
        if kind == Kind.CHALLENGE:
            self.nonce = body["nonce"]
        elif kind == Kind.WELCOME:
            self.welcome, self.round = body, body["round"]
            for key, value in header.get("requires", {}).items():
                have = body.get(key, body.get("plan", {}).get(key))
                if key == "secure_agg":
                    have = bool(body["plan"].get("secure_agg", False))
                if have != value:
                    raise _skip(f"needs a chief whose Welcome has {key} = {value!r} (this one: {have!r})")
        elif kind in (Kind.GLOBAL, Kind.DONE):
            self.round = body["round"]

    def model(self, step: dict[str, Any]) -> None:
        if self.welcome.get("has_weights"):
            have = [{"dtype": t["dtype"], "shape": list(t["shape"])} for t in self.welcome["tensors"]]
            if have != step["specs"]:
                raise _skip(f"needs a chief without a model or with the vectors' model {step['specs']}")
            return
        self.peer.send(bytes.fromhex(step["hex"]))
        self.expect({"kind": "Global"}, {})


def _code(step: dict[str, Any]) -> str:
    return f" {step['code']}" if "code" in step else ""


def _describe(got: tuple[Kind, dict[str, Any]]) -> str:
    kind, body = got
    if kind == Kind.ERROR:
        return f"Error {body.get('code')} ({body.get('message')})"
    return kind.name.title().replace("_", "")


def run_vector(path: Path, address: str, token: tls.JoinToken, source: str = "0.0.0.0",
               timeout: float = 10.0) -> Outcome:
    header, steps = load(path)
    name = header["vector"]
    try:
        peer = _Peer(address, token, source, timeout)
    except (OSError, ssl.SSLError) as exc:
        return Outcome(name, "fail", f"cannot connect: {exc}")
    run = _Run(token, peer, os.urandom(4).hex())
    try:
        for step in steps:
            if step["op"] == "send":
                peer.send(run.live(step))
            elif step["op"] == "expect":
                run.expect(step, header)
            elif step["op"] == "model":
                run.model(step)
            else:
                raise FedsockError(f"{path}: unknown step {step['op']!r}")
    except VectorMismatch as exc:
        return Outcome(name, "skip" if exc.skipped else "fail", str(exc))
    finally:
        peer.close()
    return Outcome(name, "pass")


def run_all(address: str, token: str, directory: Path = VECTORS, only: str | None = None,
            source: str = "0.0.0.0", timeout: float = 10.0) -> list[Outcome]:
    """Run every vector of ``directory`` (those whose name contains ``only``) in file order."""
    tok = tls.JoinToken.parse(token)
    return [run_vector(p, address, tok, source, timeout) for p in vector_files(directory)
            if only is None or only in p.stem]


def report(outcomes: list[Outcome]) -> str:
    lines = [f"{o.status.upper():4}  {o.vector}" + (f": {o.detail}" if o.detail else "") for o in outcomes]
    n = {s: sum(o.status == s for o in outcomes) for s in ("pass", "fail", "skip")}
    lines.append(f"{n['pass']} passed, {n['fail']} failed, {n['skip']} skipped")
    return "\n".join(lines)
