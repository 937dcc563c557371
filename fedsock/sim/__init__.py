"""In-process federated simulation: a numpy MLP, simulated workers and the real aggregation code.

Used by ``bench/reproduce_fedavg.py`` and the tests to study strategies in
seconds without sockets or TensorFlow. Aggregation goes through the same pure
``fedsock.aggregation`` reducers and transforms the chief runs.
"""

from fedsock.sim.federation import Attack, Federation, RunResult, digits_federation, federate, rounds_to, simulate
from fedsock.sim.fit import FitPlan, FitWorker, simulate_fit
from fedsock.sim.mlp import accuracy, gradients, init_mlp, local_train

__all__ = [
    "Attack", "Federation", "FitPlan", "FitWorker", "RunResult", "accuracy", "digits_federation", "federate",
    "gradients", "init_mlp", "local_train", "rounds_to", "simulate", "simulate_fit",
]
