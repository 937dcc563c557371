"""What the chief accepts in an update before reading its weights, as plain checks.

These are the terms the chief set in its Welcome (compression) and its
``--max-examples`` cap; checked on the Update header, before a byte of its
tensor data is staged.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedsock.errors import ErrorCode, RemoteProtocolError
from fedsock.protocol import TensorSpec


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
