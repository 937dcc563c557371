"""Federated metrics inside the masked vector: which ones ride there, and their fixed-point words.

With secure aggregation the chief must learn a round's federated metrics
without learning any worker's own value. The chief names the metrics in the
attempt's roster (``SecAggRoster.metrics``); every worker appends, for each
name in that order, three words to its masked vector, so that every vector
of the attempt has the same layout and the masks still cancel::

    lo, hi, weight

``weight`` is the metric's weight in the federated average, an integer:
``val_examples`` for a ``val_*`` metric, 1 for ``val_examples`` itself (so
its sum is the round's validation examples), the update's ``num_examples``
for any other metric; 0 when the worker does not report the metric or shares
no metrics. With ``q = round_half_even(value * 2**24)`` and the exact integer
``X = q * weight``, ``hi = floor(X / 2**32)`` (two's complement) and
``lo = X - hi * 2**32`` (0 <= lo < 2**32).

Range: a worker encodes a metric only if ``|value| < 2**30`` and
``weight <= 2**30`` (``limits.SECAGG_METRIC_MAX_ABS``,
``limits.SECAGG_METRIC_MAX_WEIGHT``); otherwise, and for NaN or Inf, it sends
weight 0 for it. Then ``|q| <= 2**54``, ``|X| <= 2**84`` and ``|hi| <= 2**52``,
so over at most ``limits.MAX_WORKERS`` (2**10) workers the sums stay within
2**62 (hi), 2**42 (lo) and 2**40 (weight): no word leaves its range, and the
chief recovers the exact integer ``S = sum(hi) * 2**32 + sum(lo) = sum(X)``.

Error: ``S / (sum(weight) * 2**24)`` is exactly the weighted mean of the
values rounded to the 2**-24 grid, so it is within 2**-25 (``MAX_ERROR``) of
the weighted mean of the values themselves, plus the last-bit rounding of the
one float64 division.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsock import limits
from fedsock.errors import ConfigError
from fedsock.errors import RangeError as RangeError  # defined with the others, importable from here

#: Fractional bits of a metric's value (as for the model's elements: 2**-24 resolution).
FRACTION_BITS = 24
#: Words per announced metric: lo, hi, weight.
WORDS = 3
#: Bound on a decoded federated metric's error from the encoding.
MAX_ERROR = 2.0 ** -(FRACTION_BITS + 1)
VAL, TRAIN, VAL_EXAMPLES, FED = "val_", "train_", "val_examples", "fed_"
#: What ``--secagg-metrics auto`` announces without a compiled model (and always, with one).
DEFAULT_BASES = ("loss", "accuracy")
_BASE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
_LO = 2**32


def weight_of(name: str, metrics: Mapping[str, float], num_examples: int) -> int | None:
    """The weight beside metric ``name`` (None: not a whole number of examples >= 0)."""
    if name == VAL_EXAMPLES:
        return 1
    raw = metrics.get(VAL_EXAMPLES, 0.0) if name.startswith(VAL) else num_examples
    w = float(raw)
    if not math.isfinite(w) or w < 0 or w != int(w):
        return None
    return int(w)


def encode(names: Sequence[str], metrics: Mapping[str, float], num_examples: int) -> tuple[np.ndarray, list[str]]:
    """The ``3 * len(names)`` uint64 words of one worker's metrics (see the module docstring).

    Args:
        names: the metrics the roster announced, in its order.
        metrics: this worker's metrics (Update names: ``val_*``, ``val_examples``, ``train_*``);
            names it lacks get weight 0.
        num_examples: the update's training examples (the weight of non-``val_`` metrics).

    Returns:
        The words, and the names it has but could not encode (NaN/Inf, out of range, or a
        bad weight): they were sent with weight 0.
    """
    out = np.zeros(WORDS * len(names), dtype="<u8")
    skipped = []
    for i, name in enumerate(names):
        if name not in metrics:
            continue
        value = float(metrics[name])
        weight = weight_of(name, metrics, num_examples)
        if weight == 0:
            continue
        if (weight is None or weight > limits.SECAGG_METRIC_MAX_WEIGHT or not math.isfinite(value)
                or abs(value) >= limits.SECAGG_METRIC_MAX_ABS):
            skipped.append(name)
            continue
        x = round(value * 2.0**FRACTION_BITS) * weight  # exact: a power-of-two scale, Python ints
        hi = x >> 32  # floor
        out[WORDS * i] = x - (hi << 32)
        out[WORDS * i + 1] = hi % 2**64
        out[WORDS * i + 2] = weight
    return out, skipped


@dataclass(frozen=True)
class MetricSum:
    """One metric summed over a round's workers: ``scaled`` = sum(q * weight), and sum(weight)."""

    scaled: int
    weight: int

    @property
    def mean(self) -> float:
        """The weighted mean (one correctly rounded division of exact integers)."""
        return self.scaled / (self.weight << FRACTION_BITS)

    @property
    def total(self) -> float:
        """The weighted sum, sum(value * weight)."""
        return self.scaled / (1 << FRACTION_BITS)


def decode(words: np.ndarray, names: Sequence[str]) -> dict[str, MetricSum]:
    """The summed metrics of an unmasked vector's metric words; names no worker reported are left out.

    Raises:
        RangeError: words that no sum of honest workers' words gives (a worker sent out-of-range
            words): the round's metrics are not trustworthy.
    """
    if len(words) != WORDS * len(names):
        raise RangeError(f"{len(words)} metric words for {len(names)} metrics")
    n = limits.MAX_WORKERS
    out = {}
    for i, name in enumerate(names):
        lo, hi, weight = (int(v) for v in words[WORDS * i: WORDS * i + WORDS])
        hi = hi - 2**64 if hi >= 2**63 else hi
        if lo >= n * _LO or abs(hi) > n * 2**52 or weight > n * limits.SECAGG_METRIC_MAX_WEIGHT:
            raise RangeError(f"the summed words of metric {name!r} are out of range: a worker sent bad words")
        scaled = (hi << 32) + lo
        if weight == 0:
            if scaled:
                raise RangeError(f"metric {name!r} sums to {scaled} with weight 0: a worker sent bad words")
            continue
        s = MetricSum(scaled, weight)
        if abs(s.mean) > limits.SECAGG_METRIC_MAX_ABS:
            raise RangeError(f"metric {name!r} averages to {s.mean:.3g}, out of range: a worker sent bad words")
        out[name] = s
    return out


def federated(sums: Mapping[str, MetricSum]) -> dict[str, float]:
    """The round's ``fed_<name>`` figures: each metric's weighted mean, and ``fed_val_examples`` the
    sum of the validation examples (as ``fedsock.chief.evaluation.federate`` names them)."""
    return {FED + name: (s.total if name == VAL_EXAMPLES else s.mean) for name, s in sorted(sums.items())}


def layout_digest(names: Sequence[str]) -> bytes:
    """What the pairwise mask keys of an attempt with these metric names add to their HKDF info:
    nothing without names, else SHA-256 over each name as one length byte and its UTF-8 bytes.

    Every worker's masks then cancel only against workers given the same list: a chief that
    hands two workers different lists, so that one worker's metric lands in words no other
    worker fills, gets a sum whose masks do not cancel.
    """
    if not names:
        return b""
    return hashlib.sha256(b"".join(bytes([len(n.encode())]) + n.encode() for n in names)).digest()


def compiled_metrics(compile_json: str | None) -> list[str]:
    """The Keras names of the metrics in a compile config (JSON), as a model's ``evaluate`` reports them."""
    if not compile_json:
        return []
    try:
        config = json.loads(compile_json)
    except ValueError:
        return []
    found: list[str] = []

    def visit(item: Any) -> None:
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict) and isinstance(item.get("config"), dict) and isinstance(
                item["config"].get("name"), str):
            found.append(item["config"]["name"])
        elif isinstance(item, list):
            for sub in item:
                visit(sub)

    if isinstance(config, dict):
        for key in ("metrics", "weighted_metrics"):
            visit(config.get(key))
    return [m for m in found if _fits(m)]


def _fits(base: str) -> bool:
    """A Keras metric name whose ``val_``/``train_`` names fit SECAGG_METRIC_NAME_BYTES."""
    return bool(_BASE.fullmatch(base)) and len((TRAIN + base).encode()) <= limits.SECAGG_METRIC_NAME_BYTES


def parse_bases(spec: str) -> tuple[str, ...] | None:
    """``--secagg-metrics``: None for ``auto``, () for ``none``, else the Keras names given.

    Raises:
        ConfigError: a name that is not a Keras metric name, a ``val_``/``train_`` prefix, or too many.
    """
    text = spec.strip()
    if text == "auto":
        return None
    if text == "none":
        return ()
    bases = tuple(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
    for b in bases:
        if not _fits(b) or b.startswith((VAL, TRAIN)):
            raise ConfigError(f"--secagg-metrics: {b!r} is not a Keras metric name (such as loss, accuracy) "
                              f"of at most {limits.SECAGG_METRIC_NAME_BYTES - len(TRAIN)} characters; give names "
                              "without val_/train_, separated by commas, or auto, or none")
    if not bases:
        raise ConfigError("--secagg-metrics needs metric names, auto or none")
    if 1 + 2 * len(bases) > limits.SECAGG_MAX_METRICS:
        raise ConfigError(f"--secagg-metrics: at most {(limits.SECAGG_MAX_METRICS - 1) // 2} names")
    return bases


def names_for(spec: str, compile_json: str | None) -> tuple[str, ...]:
    """The metric names a chief announces: ``val_examples``, then ``val_<m>`` and ``train_<m>`` for
    each metric m of ``spec`` (``auto``: loss, accuracy and the compiled model's metrics, the first
    that fit in SECAGG_MAX_METRICS; ``none``: nothing).

    Raises:
        ConfigError: a bad ``spec`` (``parse_bases``).
    """
    bases = parse_bases(spec)
    if bases is None:
        bases = tuple(dict.fromkeys([*DEFAULT_BASES, *compiled_metrics(compile_json)]))
        bases = bases[: (limits.SECAGG_MAX_METRICS - 1) // 2]
    if not bases:
        return ()
    return (VAL_EXAMPLES, *(VAL + b for b in bases), *(TRAIN + b for b in bases))
