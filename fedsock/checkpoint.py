"""Chief checkpoints: global weights, round and aggregation state, written atomically.

Format: the 8-byte magic ``FSCKPT1\\n`` followed by one msgpack map::

    {"round": int, "tensors": [spec...], "weights": [bin...],
     "state": [{"dtype": str, "shape": [int...], "data": bin}...],
     "meta": {str: any}}

Written to a temp file, fsynced, then renamed over the target, and the
directory fsynced: a crash leaves the old file or the new one, never a torn one.
No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgpack
import numpy as np

from fedsock import limits, statefiles
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol.messages import TensorSpec
from fedsock.protocol.specs import DTYPES
from fedsock.protocol.tensors import raw_view

MAGIC = b"FSCKPT1\n"


@dataclass(frozen=True)
class Checkpoint:
    """A saved global model."""

    round: int
    specs: tuple[TensorSpec, ...]
    weights: list[np.ndarray]
    state: list[np.ndarray]
    meta: dict[str, Any]


def _array_to_wire(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": bytes(raw_view(a))}


def atomic_write(path: Path, data: bytes | Sequence[bytes | memoryview] | Callable[[IO[bytes]], object],
                 recycle: Path | None = None) -> None:
    """Write ``data`` (bytes, pieces written one after another, or a function that writes to the
    file it is given) to ``path`` via temp file + fsync + rename.

    ``recycle``: a file that is no longer needed (e.g. the checkpoint about to be
    pruned); it becomes the temp file and is overwritten in place, which reuses its
    cached pages: writing a new file of a big model's size costs much more.

    The temp file has a random name and is created 0600 with ``O_EXCL`` and
    ``O_NOFOLLOW`` (``fedsock.statefiles``); the rename replaces whatever is at
    ``path`` (a symlink included) without following it. The result is 0600.
    If writing fails (a full disk), the temp file is removed and ``path`` is untouched.

    Raises:
        OSError: the write, fsync or rename failed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    fd = -1
    if recycle is not None and recycle != path:
        try:
            os.replace(recycle, tmp)
            fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            os.fchmod(fd, statefiles.FILE_MODE)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            fd = -1
    if fd < 0:
        fd = statefiles.create_new(tmp)
    try:
        with os.fdopen(fd, "r+b") as f:
            if callable(data):
                data(f)
            else:
                for piece in [data] if isinstance(data, bytes) else data:
                    f.write(piece)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, say: the partial temp file must not keep its space
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(path: Path, ckpt: Checkpoint, recycle: Path | None = None) -> None:
    """Write a checkpoint atomically (over the file ``recycle``, if given: see ``atomic_write``)."""
    # The same msgpack map as packb would write, but the weights go to the file
    # straight from the arrays: no copy of the model in memory.
    pk = msgpack.Packer(use_bin_type=True)
    pieces: list[bytes | memoryview] = [MAGIC, pk.pack_map_header(5), pk.pack("round"), pk.pack(ckpt.round),
                                        pk.pack("tensors"), pk.pack([s.to_wire() for s in ckpt.specs]),
                                        pk.pack("weights"), pk.pack_array_header(len(ckpt.weights))]
    for w in ckpt.weights:
        view = raw_view(w)
        pieces += [b"\xc6" + len(view).to_bytes(4, "big"), view]  # msgpack bin 32
    pieces += [pk.pack("state"), pk.pack([_array_to_wire(np.asarray(a)) for a in ckpt.state]),
               pk.pack("meta"), pk.pack(ckpt.meta)]
    atomic_write(path, pieces, recycle)


def load(path: Path) -> Checkpoint:
    """Read a checkpoint (``decode`` of the file's bytes).

    Raises:
        ConfigError: not a fedsock checkpoint, or corrupt, naming the file.
    """
    return decode(statefiles.read_bytes(Path(path)), str(path))


def decode(data: bytes, source: str) -> Checkpoint:
    """A checkpoint from the bytes of a checkpoint file (``source`` names it in errors).

    Every field is checked explicitly; only msgpack's own narrow errors are translated,
    so a bug here propagates (and the fuzzer, ``fuzz/fuzz.py checkpoint``, sees it).

    Raises:
        ConfigError: not a fedsock checkpoint, or corrupt.
    """
    if not data.startswith(MAGIC):
        raise ConfigError(f"{source} is not a fedsock checkpoint (bad magic)")
    try:
        body = msgpack.unpackb(memoryview(data)[len(MAGIC):], raw=False, strict_map_key=True,
                               max_ext_len=0, ext_hook=_no_ext)
    except (ValueError, msgpack.UnpackException) as exc:  # msgpack's documented errors (as frames.unpack_body)
        raise ConfigError(f"{source} is corrupt: {exc}") from None
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{source} is corrupt: {why}")

    if not isinstance(body, dict):
        raise bad("not a map")
    round_ = _field(body, "round", int, bad)
    if isinstance(round_, bool) or round_ < 0:
        raise bad(f"round {round_!r}")
    try:
        specs = tuple(TensorSpec.from_wire(s) for s in _field(body, "tensors", list, bad))
    except RemoteProtocolError as exc:  # the wire's own checks of a tensor spec
        raise bad(str(exc)) from None
    raw = _field(body, "weights", list, bad)
    if len(raw) != len(specs):
        raise bad(f"{len(raw)} weights for {len(specs)} tensors")
    weights = [_array(s.dtype, s.shape, b, bad) for s, b in zip(specs, raw)]
    state = []
    for a in _field(body, "state", list, bad):
        if not isinstance(a, dict):
            raise bad("a state array is not a map")
        dtype, shape = _field(a, "dtype", str, bad), _field(a, "shape", list, bad)
        if dtype not in DTYPES or len(shape) > limits.MAX_TENSOR_RANK or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= limits.MAX_TENSOR_ELEMENTS
                for d in shape):
            raise bad(f"state array {dtype!r} of shape {shape!r}")
        state.append(_array(dtype, tuple(shape), a.get("data"), bad))
    return Checkpoint(round_, specs, weights, state, dict(_field(body, "meta", dict, bad)))


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} in a checkpoint")


def _field(body: dict[str, Any], key: str, kind: type, bad: Callable[[str], ConfigError]) -> Any:
    value = body.get(key)
    if not isinstance(value, kind):
        raise bad(f"field {key!r} is not a {kind.__name__}")
    return value


def _array(dtype: str, shape: tuple[int, ...], data: Any, bad: Callable[[str], ConfigError]) -> np.ndarray:
    """A little-endian array of ``dtype`` and ``shape`` from exactly its bytes ``data``."""
    dt = np.dtype(dtype).newbyteorder("<")
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * dt.itemsize:
        raise bad(f"data of a {dtype}{list(shape)} array is not {math.prod(shape) * dt.itemsize} bytes")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()


def round_path(directory: Path, round_: int) -> Path:
    """``<dir>/round-000042.fsck``."""
    return directory / f"round-{round_:06d}.fsck"


def prunable(directory: Path, keep: int) -> Path | None:
    """The oldest round checkpoint if saving one more would prune it, else None.

    Never the only one (``keep`` 1): it is the checkpoint a crash during the
    save must leave intact, so it is pruned only once the new one is in place.
    """
    files = sorted(directory.glob("round-*.fsck"))
    return files[0] if len(files) >= max(keep, 2) else None


def prune(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` round checkpoints."""
    files = sorted(directory.glob("round-*.fsck"))
    for f in files[: max(0, len(files) - keep)]:
        f.unlink(missing_ok=True)


def weights_to_npz(path: Path, specs: Sequence[TensorSpec], weights: Sequence[np.ndarray]) -> None:
    """Save weights as an ``.npz`` keyed by tensor name (no pickle), atomically.

    Written straight to the file: packing it in memory first would cost the chief
    another copy of the model at the end of the run.
    """
    arrays: dict[str, Any] = {f"{i:04d}:{s.name}": w for i, (s, w) in enumerate(zip(specs, weights))}
    atomic_write(path, lambda f: np.savez(f, **arrays))
