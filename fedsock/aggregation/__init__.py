"""Aggregation as pure numpy transforms (no TensorFlow, no I/O)."""

from fedsock.aggregation.reducers import Reducer, weighted_mean
from fedsock.aggregation.transforms import (
    ChainState,
    EmptyState,
    TraceState,
    Transform,
    apply_delta,
    chain,
    fedavg,
    fedavgm,
    flatten_state,
    identity,
    scale,
    trace,
    unflatten_state,
)
from fedsock.aggregation.weighted_sum import WeightedSum, empty_sum, fold, fold_into, mean

__all__ = [
    "ChainState", "EmptyState", "Reducer", "Transform", "TraceState", "WeightedSum", "apply_delta",
    "chain", "empty_sum", "fedavg", "fedavgm", "flatten_state", "fold", "fold_into", "identity", "mean",
    "scale", "trace", "unflatten_state", "weighted_mean",
]
