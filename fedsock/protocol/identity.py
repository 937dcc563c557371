"""Who a worker is on the wire: its name, its instance id and its reconnect proof.

A worker's **name** (Hello ``name``) is 1 to ``MAX_NAME_BYTES`` characters of
``[A-Za-z0-9][A-Za-z0-9_.@-]*``: it appears in logs, status output and
per-worker tokens, so spaces, newlines and escape sequences are refused.
Its **instance id** (Hello ``instance``) is ``INSTANCE_ID_BYTES`` random bytes
drawn once per worker process. The chief's **reconnect secret** (Welcome
``reconnect_secret``) lets the worker prove, on a later connection, that it
is the one the chief admitted under that name: ``Auth.resume`` is
``reconnect_proof(secret, nonce, name)``. Other text a peer chooses (an
Error's message) goes into logs only through ``loggable``.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from fedsock import limits
from fedsock.errors import ErrorCode, RemoteProtocolError

#: The name rule, written once (``fedsock.tls.check_name`` uses it too).
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.@-]{{0,{limits.MAX_NAME_BYTES - 1}}}")
#: What a user is told when a name breaks the rule.
NAME_RULE = f"1-{limits.MAX_NAME_BYTES} letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
#: The first bytes of the reconnect proof's HMAC input.
RESUME_LABEL = b"fedsock-resume-v1\x00"


def is_valid_name(name: str) -> bool:
    """Whether ``name`` follows the name rule (the whole string; a trailing newline fails)."""
    return NAME_PATTERN.fullmatch(name) is not None


def check_name(name: str) -> str:
    """``name`` if it follows the name rule.

    Raises:
        RemoteProtocolError: code ``bad_message``, naming the rule.
    """
    if not is_valid_name(name):
        raise RemoteProtocolError(f"bad worker name {name!r}: use {NAME_RULE}", code=ErrorCode.BAD_MESSAGE)
    return name


def reconnect_proof(secret: bytes, nonce: bytes, name: str) -> bytes:
    """The ``Auth.resume`` proof: HMAC-SHA256 under the reconnect secret.

    The HMAC input is ``RESUME_LABEL || nonce || UTF-8(name)``: the Challenge
    nonce makes it single-use, the name binds it to the name it was issued for.

    Args:
        secret: the ``Welcome.reconnect_secret`` the chief issued under ``name``.
        nonce: the nonce of this connection's Challenge.
        name: the name sent in this connection's Hello.

    Returns:
        ``MAC_BYTES`` bytes.
    """
    return hmac.new(secret, RESUME_LABEL + nonce + name.encode(), hashlib.sha256).digest()


def verify_reconnect_proof(secret: bytes, nonce: bytes, name: str, proof: bytes) -> bool:
    """Constant-time check of an ``Auth.resume`` proof against ``reconnect_proof``."""
    return hmac.compare_digest(reconnect_proof(secret, nonce, name), proof)


def loggable(text: object) -> str:
    """A peer's text as it may appear in a log line: control characters escaped (no forged lines,
    no terminal escapes), at most ``LOGGED_TEXT_CHARS`` characters."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text)[: limits.LOGGED_TEXT_CHARS + 1])
    return out if len(out) <= limits.LOGGED_TEXT_CHARS else out[: limits.LOGGED_TEXT_CHARS] + "..."
