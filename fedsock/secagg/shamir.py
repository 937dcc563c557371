"""Shamir secret sharing over the prime field GF(2**521 - 1).

A secret (an integer below the prime, e.g. a 32-byte key) is the constant
term of a random polynomial of degree ``threshold - 1``; a share is the
polynomial's value at a non-zero x (fedsock uses the worker id). Any
``threshold`` shares give the secret back (Lagrange interpolation at 0); fewer
reveal nothing about it. Coefficients come from ``secrets`` (the OS CSPRNG).
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=4096)
def _basis(xs: tuple[int, ...], x: int) -> tuple[int, ...]:
    """The Lagrange basis polynomials through ``xs``, evaluated at ``x``: the value at ``x`` of the
    polynomial through (xs, ys) is sum(basis_i * y_i). They depend on the points only, so the shares
    of every secret a round checks reuse them (one modular inversion per call, Montgomery's trick)."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        nums.append(num)
        dens.append(den)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        out[i] = nums[i] * inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return tuple(out)


def _at(pts: list[tuple[int, int]], x: int) -> int:
    """The value at ``x`` of the polynomial through ``pts`` (Lagrange)."""
    basis = _basis(tuple(p[0] for p in pts), x)
    return sum(b * y for b, (_, y) in zip(basis, pts)) % PRIME


def consistent(shares: Mapping[int, int], threshold: int) -> bool:
    """Whether all ``shares`` lie on one polynomial of degree ``threshold - 1``.

    Honest shares of one secret always do; with more than ``threshold`` of
    them a wrong share is detected (with exactly ``threshold`` nothing can be).
    """
    pts = sorted(shares.items())
    base = pts[:threshold]
    return all(_at(base, x) == y for x, y in pts[threshold:])


def liars(shares: Mapping[int, int], threshold: int) -> set[int]:
    """The points whose shares disagree with the others', when that can be told.

    Empty if the shares are consistent, or if no single point's removal makes
    them consistent (then who is wrong cannot be told from these shares:
    at least ``threshold + 2`` of them are needed to single one out).
    """
    if consistent(shares, threshold):
        return set()
    if len(shares) < threshold + 2:
        return set()
    found = {x for x in shares if consistent({k: v for k, v in shares.items() if k != x}, threshold)}
    return found if len(found) == 1 else set()


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
