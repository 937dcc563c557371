"""Validation of decoded msgpack fields: every failure is the peer's (``RemoteProtocolError``)."""

from __future__ import annotations

from typing import Any

from fedsock.errors import ErrorCode, RemoteProtocolError


def require(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``body[name]``, checked to be of ``kind``.

    Raises:
        RemoteProtocolError: the key is missing or the value has another type
            (``bool`` never passes for ``int``).
    """
    if name not in body:
        raise RemoteProtocolError(f"{what}: missing field {name!r}", code=ErrorCode.BAD_MESSAGE)
    value = body[name]
    # bool is a subclass of int; never accept it where an int is wanted.
    if kind is int and isinstance(value, bool):
        raise RemoteProtocolError(f"{what}: field {name!r} must be int", code=ErrorCode.BAD_MESSAGE)
    if not isinstance(value, kind):
        tname = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RemoteProtocolError(
            f"{what}: field {name!r} must be {tname}, got {type(value).__name__}",
            code=ErrorCode.BAD_MESSAGE,
        )
    return value


def nonneg(value: int, name: str, what: str) -> int:
    """``value`` if it is in 0 .. 2**63 - 1 (uint63)."""
    if value < 0 or value > 2**63 - 1:
        raise RemoteProtocolError(f"{what}: field {name!r} out of range", code=ErrorCode.BAD_MESSAGE)
    return value


def number(body: dict[str, Any], name: str, what: str) -> float:
    """An int or float field as float (never bool)."""
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if name not in body:
            raise RemoteProtocolError(f"{what}: missing field {name!r}", code=ErrorCode.BAD_MESSAGE)
        raise RemoteProtocolError(f"{what}: field {name!r} must be a number", code=ErrorCode.BAD_MESSAGE)
    return float(value)


def metrics_map(body: dict[str, Any], name: str, what: str) -> dict[str, float]:
    """A map str -> int/float (never bool), as floats."""
    raw = require(body, name, dict, what)
    for k, v in raw.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RemoteProtocolError(f"{what}: {name} must map str to number", code=ErrorCode.BAD_MESSAGE)
    return {k: float(v) for k, v in raw.items()}
