"""Fixed-point encoding of a weighted update into the ring of integers mod 2**64.

A worker encodes ``weight * w`` (``weight`` = its example count, or 1 with
differential privacy) as ``round(weight * w * 2**FRACTION_BITS)`` in two's
complement, and appends ``weight`` itself as one more word. Sums of such
vectors wrap mod 2**64 exactly as the masks do, so masks cancel and the chief
decodes ``sum(weight * w) / sum(weight)``: the weighted average.

Error: each worker rounds by at most 2**-(FRACTION_BITS + 1) per element (in
units of ``weight * w``), so the decoded average is off by at most
``K * 2**-(FRACTION_BITS + 1) / sum(weight) <= 2**-(FRACTION_BITS + 1)``
(every weight >= 1) before it is cast to the model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsock.errors import RangeError as RangeError  # defined with the others, importable from here

#: Fractional bits of the encoding: 2**-24 resolution.
FRACTION_BITS = 24
#: Largest |weight * w| a single worker may encode, with n workers summing: LIMIT / n.
LIMIT = 2.0 ** (63 - FRACTION_BITS)
#: Bound on the decoded average's error from the encoding (before the dtype cast).
MAX_ERROR = 2.0 ** -(FRACTION_BITS + 1)


def encode(weights: Sequence[np.ndarray], weight: int, participants: int,
           tail: np.ndarray | None = None) -> np.ndarray:
    """One flat uint64 vector: the encoded ``weight * w`` of every tensor, then ``weight``, then ``tail``.

    Args:
        weights: the update's tensors (any float dtype).
        weight: the update's weight (examples, or 1), >= 1.
        participants: how many workers' vectors will be summed.
        tail: words appended as they are (the metrics of ``fedsock.secagg.metrics.encode``).

    Raises:
        RangeError: a NaN/Inf, or a value too large for ``participants`` to sum
            without overflow.
    """
    total = sum(int(np.size(w)) for w in weights)
    extra = 0 if tail is None else len(tail)
    out = np.empty(total + 1 + extra, dtype="<u8")
    bound = LIMIT / max(participants, 1)
    scale = float(weight) * 2.0**FRACTION_BITS
    pos = 0
    for i, w in enumerate(weights):
        flat = np.asarray(w, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(flat)):
            raise RangeError(f"tensor {i} holds NaN or Inf; it cannot be aggregated")
        peak = float(np.max(np.abs(flat))) * weight if flat.size else 0.0
        if peak >= bound:
            raise RangeError(f"tensor {i}: |weight x value| reaches {peak:.3g}, above the secure-aggregation "
                             f"range {bound:.3g} for {participants} workers")
        out[pos:pos + flat.size] = np.rint(flat * scale).astype(np.int64).view(np.uint64)
        pos += flat.size
    out[total] = weight
    if tail is not None:
        out[total + 1:] = tail
    return out


def decode(total: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> tuple[list[np.ndarray], int]:
    """The weighted average (float64 tensors of ``shapes``) and the summed weight from a summed vector.

    Raises:
        RangeError: the summed weight is not positive (a wrong sum).
    """
    weight = int(total[-1])
    if weight <= 0 or weight >= 2**62:
        raise RangeError(f"the unmasked sum has weight {weight}: the masks did not cancel")
    values = total[:-1].view(np.int64).astype(np.float64) / (weight * 2.0**FRACTION_BITS)
    out, pos = [], 0
    for shape in shapes:
        n = int(np.prod(shape, dtype=np.int64))
        out.append(values[pos:pos + n].reshape(shape))
        pos += n
    return out, weight
