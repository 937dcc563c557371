"""Frame layer: an 8-byte header followed by a msgpack body.

```
offset size field
0      2    magic    b"FS" (0x46 0x53)
2      1    version  protocol version, 1
3      1    kind     message kind (see ``Kind``)
4      4    length   body length in bytes, unsigned big-endian
```

The header is checked (magic, version, kind, length <= limit) before the body
is buffered, so a peer cannot make us allocate more than the frame limit.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import msgpack

from fedsock import limits
from fedsock.errors import ErrorCode, RemoteProtocolError

MAGIC = b"FS"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
HEADER_BYTES = HEADER.size  # 8


class Kind(enum.IntEnum):
    """The message kind byte of a frame header."""

    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    UPDATE = 5
    GLOBAL = 6
    HEARTBEAT = 7
    DONE = 8
    ERROR = 9
    CHUNK = 10
    STATUS = 11
    SECAGG_KEYS = 12
    SECAGG_ROSTER = 13
    SECAGG_SHARES = 14
    SECAGG_INBOX = 15
    SECAGG_MASKED = 16
    SECAGG_UNMASK = 17
    SECAGG_REVEAL = 18
    SECAGG_ABORT = 19
    ACK = 20
    EVAL_REQUEST = 21
    EVAL_RESULT = 22


def encode_header(kind: Kind, length: int) -> bytes:
    """Return the 8-byte header of a frame whose body is ``length`` bytes."""
    return HEADER.pack(MAGIC, VERSION, int(kind), length)


def decode_header(header: bytes | bytearray | memoryview, max_body: int) -> tuple[Kind, int]:
    """Parse and check a frame header.

    Args:
        header: exactly ``HEADER_BYTES`` bytes.
        max_body: the largest body length accepted.

    Returns:
        The message kind and the body length.

    Raises:
        RemoteProtocolError: bad magic, unsupported version, unknown kind or a
            body longer than ``max_body``.
    """
    magic, version, kind, length = HEADER.unpack(bytes(header))
    if magic != MAGIC:
        raise RemoteProtocolError(
            f"not a fedsock frame (magic {magic!r}, expected {MAGIC!r}); "
            "is the peer speaking another protocol?",
            code=ErrorCode.BAD_FRAME,
        )
    if version != VERSION:
        raise RemoteProtocolError(
            f"unsupported protocol version {version}; this side speaks {VERSION}",
            code=ErrorCode.UNSUPPORTED_VERSION,
        )
    try:
        k = Kind(kind)
    except ValueError:
        raise RemoteProtocolError(
            f"unknown message kind {kind} (kinds are {min(Kind)}-{max(Kind)})", code=ErrorCode.BAD_FRAME
        ) from None
    if length > max_body:
        raise RemoteProtocolError(
            f"frame body of {length} bytes exceeds the limit of {max_body} bytes",
            code=ErrorCode.FRAME_TOO_LARGE,
        )
    return k, length


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def pack_body(body: dict[str, Any]) -> bytes:
    """Serialize a message body (a map with string keys) with msgpack."""
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def unpack_body(body: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a message body with explicit limits.

    Raises:
        RemoteProtocolError: ``limit_exceeded`` for a msgpack size limit (or
            nesting deeper than ``MAX_NESTING``), ``bad_frame`` for anything
            else msgpack refuses (malformed, trailing bytes, invalid UTF-8, a
            key neither str nor bin, any ext type) and for a body that is not a map.
    """
    left = [limits.MAX_BODY_ITEMS]

    def counted(container: Any) -> Any:  # every array and map, as soon as it is decoded
        left[0] -= len(container) + 1
        if left[0] < 0:
            raise ValueError(f"the body's values: exceeds max_body_items ({limits.MAX_BODY_ITEMS})")
        return container

    try:
        obj = msgpack.unpackb(
            body,
            list_hook=counted,
            object_hook=counted,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limits.MAX_STR_BYTES,
            max_bin_len=limits.MAX_FRAME_BYTES,
            max_array_len=limits.MAX_ARRAY_ITEMS,
            max_map_len=limits.MAX_MAP_ITEMS,
            max_ext_len=0,  # every ext is refused, before its data is copied
            ext_hook=_reject_ext,
        )
    except (ValueError, msgpack.UnpackException) as exc:
        # msgpack's documented errors: ValueError (ExtraData, FormatError, StackError,
        # limits, UTF-8, map keys, ext) and UnpackException. Size limits say "exceeds max_...";
        # an ext type is bad_frame whether its length or our ext_hook refused it.
        text = str(exc)
        over = "exceeds max_" in text and "max_ext_len" not in text
        raise RemoteProtocolError(
            f"malformed message body: {text}",
            code=ErrorCode.LIMIT_EXCEEDED if over else ErrorCode.BAD_FRAME,
        ) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("message body is not a map", code=ErrorCode.BAD_FRAME)
    _check_depth(obj, limits.MAX_NESTING)
    return obj


def _check_depth(obj: Any, budget: int) -> None:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > budget:
            raise RemoteProtocolError(
                f"message nested deeper than {budget} levels", code=ErrorCode.LIMIT_EXCEEDED
            )
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
