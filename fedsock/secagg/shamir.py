"""Shamir secret sharing over the prime field GF(2**521 - 1).

A secret (an integer below the prime, e.g. a 32-byte key) is the constant
term of a random polynomial of degree ``threshold - 1``; a share is the
polynomial's value at a non-zero x (fedsock uses the worker id). Any
``threshold`` shares give the secret back (Lagrange interpolation at 0); fewer
reveal nothing about it. Coefficients come from ``secrets`` (the OS CSPRNG).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from fedsock import limits
from fedsock.errors import ShamirError as ShamirError  # defined with the others, importable from here

#: The field's prime: the Mersenne prime 2**521 - 1 (any 32-byte secret fits).
PRIME = 2**521 - 1
#: Bytes of one serialized share value (big-endian, fixed width).
SHARE_BYTES = limits.SECAGG_SHARE_BYTES
assert SHARE_BYTES == (PRIME.bit_length() + 7) // 8  # every value below PRIME fits, and no more


def split(secret: int, xs: Iterable[int], threshold: int) -> dict[int, int]:
    """Shares of ``secret`` at the points ``xs``.

    Args:
        secret: 0 <= secret < PRIME.
        xs: distinct x coordinates, each in 1 .. PRIME - 1.
        threshold: shares needed to reconstruct (1 <= threshold <= len(xs)).

    Returns:
        x -> share value.

    Raises:
        ValueError: bad secret, points or threshold.
    """
    points = list(xs)
    if not 0 <= secret < PRIME:
        raise ValueError("secret out of the field")
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise ValueError("share points must be distinct and non-zero")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold {threshold} outside 1..{len(points)}")
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in points:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def reconstruct(shares: Mapping[int, int], threshold: int) -> int:
    """The secret from at least ``threshold`` shares (the first ``threshold`` by x are used).

    Raises:
        ShamirError: fewer than ``threshold`` shares.
    """
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} shares, {threshold} needed")
    pts = sorted(shares.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(pts):
        num, den = 1, 1
        for j, (xj, _) in enumerate(pts):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret


def to_bytes(value: int) -> bytes:
    """A share value as SHARE_BYTES big-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    """A share value from its bytes.

    Raises:
        ShamirError: wrong length or not below the prime.
    """
    if len(data) != SHARE_BYTES:
        raise ShamirError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ShamirError("share value outside the field")
    return value
