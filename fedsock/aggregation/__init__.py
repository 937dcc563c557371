"""Aggregation as pure numpy transforms (no TensorFlow, no I/O)."""

from fedsock.aggregation.buffers import BufferPool, ModelHolds
from fedsock.aggregation.compat import check_compatible, with_dp
from fedsock.aggregation.dp import bound_update, clip_update, dp_mean, gaussian_noise
from fedsock.aggregation.finish import Finished, finish_round, finish_round_with_holds
from fedsock.aggregation.reducers import Reducer, init_accumulator, weighted_mean
from fedsock.aggregation.robust import Stack, krum, median, multikrum, trimmed_mean
from fedsock.aggregation.server_opt import (
    AdaptiveState,
    fedadagrad,
    fedadam,
    fedyogi,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_yogi,
)
from fedsock.aggregation.strategies import Strategy, parse_strategy
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
    "AdaptiveState", "BufferPool", "ChainState", "EmptyState", "Finished", "ModelHolds", "Reducer", "Stack",
    "Strategy", "TraceState", "Transform", "WeightedSum", "apply_delta", "bound_update", "chain",
    "check_compatible", "clip_update", "dp_mean", "empty_sum", "fedadagrad", "fedadam", "fedavg", "fedavgm",
    "fedyogi", "finish_round", "finish_round_with_holds", "flatten_state", "fold", "fold_into",
    "gaussian_noise", "identity",
    "init_accumulator", "krum", "mean", "median", "multikrum", "parse_strategy", "scale", "scale_by_adagrad",
    "scale_by_adam", "scale_by_yogi", "trace", "trimmed_mean", "unflatten_state", "weighted_mean", "with_dp",
]
