"""Who masks with whom: everyone (Bonawitz et al. 2017) or k neighbours (SecAgg+, Bell et al. 2020).

The k-neighbour graph is a Harary graph on a random ordering of the workers:
each worker is joined to the k/2 workers on either side of it on a ring. It
is drawn by the chief with the OS CSPRNG, fresh for every attempt.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence


def neighbourhoods(ids: Sequence[int], k: int = 0) -> dict[int, tuple[int, ...]]:
    """Each worker's neighbourhood, itself included (sorted ids).

    Args:
        ids: the workers of the attempt.
        k: neighbours per worker (rounded up to even); 0, or k >= len(ids) - 1,
            means everyone.
    """
    members = sorted(set(ids))
    n = len(members)
    if k <= 0 or k >= n - 1:
        return {i: tuple(members) for i in members}
    half = (k + 1) // 2
    order = list(members)
    secrets.SystemRandom().shuffle(order)
    out: dict[int, set[int]] = {i: {i} for i in members}
    for pos, i in enumerate(order):
        for step in range(1, half + 1):
            j = order[(pos + step) % n]
            out[i].add(j)
            out[j].add(i)
    return {i: tuple(sorted(v)) for i, v in out.items()}


def default_threshold(n: int, k: int = 0) -> int:
    """A majority of each neighbourhood (at least 2): the shares needed to unmask."""
    size = n if k <= 0 or k >= n - 1 else 2 * ((k + 1) // 2) + 1
    return max(2, size // 2 + 1)
