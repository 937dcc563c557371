"""The worker's side of update compression: deltas, encoding, error feedback."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsock.protocol import TensorSpec
from fedsock.protocol.compression import Compression, decode, encode


class UpdateEncoder:
    """Encodes a worker's weights as compressed deltas from the global model it holds.

    For ``topk`` it keeps, per tensor, what was not sent (error feedback,
    Stich et al. 2018; Lin et al. 2018 "Deep Gradient Compression") and adds
    it to the next round's delta, so no part of the update is lost for good.
    """

    def __init__(self, comp: Compression) -> None:
        self.comp = comp
        self._residual: list[np.ndarray] | None = None

    def encode(self, weights: Sequence[np.ndarray], base: Sequence[np.ndarray],
               specs: Sequence[TensorSpec]) -> tuple[tuple[TensorSpec, ...], list[np.ndarray]]:
        """Specs (with ``enc``) and the arrays to send for ``weights`` trained from ``base``."""
        feedback = self.comp.mode == "topk"
        if feedback and (self._residual is None or len(self._residual) != len(weights)):
            self._residual = [np.zeros(np.shape(w), np.float32) for w in weights]
        out_specs, payloads = [], []
        for i, (w, b, spec) in enumerate(zip(weights, base, specs)):
            w = np.asarray(w)
            if w.dtype.kind != "f":
                out_specs.append(spec)
                payloads.append(w)
                continue
            delta = np.subtract(w, b, dtype=np.float32)
            if feedback:
                assert self._residual is not None
                delta += self._residual[i]
            enc, payload = encode(delta, self.comp)
            if enc is None:  # not encodable (e.g. fp16 overflow): plain weights
                out_specs.append(spec)
                payloads.append(w)
                if feedback:
                    assert self._residual is not None
                    self._residual[i][...] = 0
                continue
            if feedback:
                assert self._residual is not None
                np.subtract(delta.reshape(-1), decode(payload, enc, delta.size), out=self._residual[i].reshape(-1))
            out_specs.append(TensorSpec(spec.name, spec.dtype, spec.shape, enc))
            payloads.append(payload)
        return tuple(out_specs), payloads
