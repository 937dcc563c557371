"""What the chief accepts in an update, as plain functions: the terms it set, decoding, DP's bound.

``check_update`` holds an Update header to the terms the chief set in its
Welcome (compression) and its ``--max-examples`` cap, before a byte of its
tensor data is staged. ``decode_update`` and ``norm_bound`` are what the
round controller is given to turn a received update into weights to fold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedsock.aggregation.dp import bound_update
from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol import TensorSpec
from fedsock.protocol.compression import DecodedUpdate


def check_update(specs: Sequence[TensorSpec], num_examples: int, compress: str, max_examples: int) -> None:
    """Raise unless an update fits what this chief negotiated.

    Args:
        compress: the compression the chief's Welcome announced (``none``,
            ``fp16``, ``int8``, ``topk:R``).
        max_examples: the largest ``num_examples`` one update may claim.

    Raises:
        RemoteProtocolError: an encoded tensor the Welcome did not ask for
            (``bad_message``), or ``num_examples`` over the cap
            (``limit_exceeded``).
    """
    mode = compress.partition(":")[0]
    for spec in specs:
        if spec.enc is None:
            continue
        if mode == "none":
            raise RemoteProtocolError(f"tensor {spec.name!r} is encoded ({spec.enc.kind}), but this chief did "
                                      "not ask for compression", code=ErrorCode.BAD_MESSAGE)
        if spec.enc.kind != mode:
            raise RemoteProtocolError(f"tensor {spec.name!r} is encoded as {spec.enc.kind}, but this chief asked "
                                      f"for {compress}", code=ErrorCode.BAD_MESSAGE)
    if num_examples > max_examples:
        raise RemoteProtocolError(f"num_examples {num_examples} is over this chief's limit of {max_examples} "
                                  "(its --max-examples)", code=ErrorCode.LIMIT_EXCEEDED)


def decode_update(specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray],
                  base: list[np.ndarray]) -> Sequence[np.ndarray]:
    """An update's full weights: encoded tensors are deltas from ``base``, decoded one at a time on access.

    Raises:
        RemoteProtocolError: a decoded tensor holds NaN or Inf (checked before anything is folded).
    """
    if all(s.enc is None for s in specs):
        return arrays
    decoded = DecodedUpdate(arrays, [s.enc for s in specs], base)
    decoded.check()
    return decoded


def check_initial(specs: Sequence[TensorSpec]) -> None:
    """Raise unless a round-0 proposal (bring your own model) is plain weights."""
    if any(s.enc is not None for s in specs):
        raise RemoteProtocolError("an initial model proposal (round 0) cannot be encoded", code=ErrorCode.BAD_MESSAGE)


def norm_bound(clip: float) -> Callable[[Sequence[np.ndarray], list[np.ndarray]], Sequence[np.ndarray]]:
    """Differential privacy's per-update bound: the delta's norm enforced to ``clip`` (``dp.bound_update``);
    an update longer than that beyond the tolerance is refused as ``invalid_weights``."""

    def bounded(weights: Sequence[np.ndarray], base: list[np.ndarray]) -> Sequence[np.ndarray]:
        try:
            out, _ = bound_update(weights, base, clip)
        except ValueError as exc:
            raise RemoteProtocolError(f"{exc}; the update was not averaged in",
                                      code=ErrorCode.INVALID_WEIGHTS) from None
        return out

    return bounded
