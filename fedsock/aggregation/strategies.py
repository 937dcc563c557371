"""Strategies: a reducer, a server transform and the FedProx ``mu``, chosen by one name.

``parse_strategy("fedadam", server_lr=0.01)`` is what ``chief.py --strategy
fedadam --server-lr 0.01`` builds. Each strategy is a one-line composition of
the pure pieces in this package; from Python, ``Strategy(median(), fedavg())``
or any other pair works the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from fedsock.aggregation.reducers import Reducer, weighted_mean
from fedsock.aggregation.robust import krum, median, multikrum, trimmed_mean
from fedsock.aggregation.server_opt import fedadagrad, fedadam, fedyogi
from fedsock.aggregation.transforms import Transform, fedavg, fedavgm
from fedsock.errors import ConfigError


class Strategy(NamedTuple):
    """How the chief combines a round, and what it asks of the workers.

    Attributes:
        reducer: combines the round's updates (weighted mean, median, ...).
        transform: server transform on the combined delta (identity, Adam, ...).
        mu: FedProx proximal coefficient sent to workers in the plan (0 = none).
        name: the ``--strategy`` text it came from.
    """

    reducer: Reducer
    transform: Transform
    mu: float = 0.0
    name: str = "custom"

    @property
    def min_updates(self) -> int:
        """Fewest updates per round the reducer can combine."""
        return self.reducer.min_updates

    @property
    def needs_individual(self) -> bool:
        """The reducer must see each update itself (see ``Reducer``)."""
        return self.reducer.needs_individual

    @property
    def weighted_by_examples(self) -> bool:
        """The reducer weighs each update by its ``num_examples``."""
        return self.reducer.weighted_by_examples

    @property
    def linear(self) -> bool:
        """The reducer's result is the mean of the updates (see ``Reducer``)."""
        return self.reducer.linear


#: Hyperparameter -> the chief's flag, for error messages.
FLAGS = {
    "mu": "--mu", "server_lr": "--server-lr", "momentum": "--server-momentum",
    "beta1": "--server-beta1", "beta2": "--server-beta2", "tau": "--server-tau",
}

#: Strategy -> its hyperparameters and their defaults. Chosen by measurement (``bench/strategy_defaults.py``,
#: docs/algorithms.md): on the demo's setup each learns at least as well as FedAvg within 10 rounds. The
#: published values are kept where the sweep cannot tell them apart; server momentum (FedAvgM's 0.9, FedAdam's
#: and FedYogi's beta1 0.9) lagged over so few rounds, 0.3 / 0.5 did not.
DEFAULTS: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedprox": {"mu": 0.01},
    "fedavgm": {"server_lr": 1.0, "momentum": 0.3},
    "fedadam": {"server_lr": 0.01, "beta1": 0.5, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.01, "beta1": 0.5, "beta2": 0.99, "tau": 1e-3},
    "fedadagrad": {"server_lr": 0.1, "beta1": 0.5, "tau": 1e-3},
    "median": {}, "trimmed": {}, "krum": {}, "multikrum": {},
}

FORMS = "fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad, median, trimmed:B, krum:F, multikrum:F,M"


def _check_hyper(name: str, value: float) -> None:
    flag = FLAGS[name]
    if not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")
    if name in ("mu",) and value < 0:
        raise ConfigError(f"{flag} must be >= 0, got {value}")
    if name in ("server_lr", "tau") and value <= 0:
        raise ConfigError(f"{flag} must be > 0, got {value}")
    if name in ("momentum", "beta1", "beta2") and not 0 <= value < 1:
        raise ConfigError(f"{flag} must be in [0, 1), got {value}")


def _ints(text: str, arg: str, count: int) -> list[int]:
    parts = arg.split(",")
    if len(parts) != count or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"bad --strategy {text!r}: expected {count} integer(s) >= 0 after ':'")
    return [int(p) for p in parts]


def _robust(text: str, kind: str, arg: str) -> Reducer:
    if kind == "median":
        return median()
    if kind == "trimmed":
        try:
            beta = float(arg)
        except ValueError:
            beta = math.nan
        if not 0 < beta < 0.5:
            raise ConfigError(f"bad --strategy {text!r}: trimmed:B needs 0 < B < 0.5 "
                              "(the share trimmed from each end), e.g. trimmed:0.2")
        return trimmed_mean(beta)
    if kind == "krum":
        return krum(_ints(text, arg, 1)[0])
    f, m = _ints(text, arg, 2)
    if m < 1:
        raise ConfigError(f"bad --strategy {text!r}: multikrum:F,M needs M >= 1")
    return multikrum(f, m)


BUILDERS: dict[str, Callable[[dict[str, float]], Transform]] = {
    "fedavgm": lambda h: fedavgm(h["server_lr"], h["momentum"]),
    "fedadam": lambda h: fedadam(h["server_lr"], h["beta1"], h["beta2"], h["tau"]),
    "fedyogi": lambda h: fedyogi(h["server_lr"], h["beta1"], h["beta2"], h["tau"]),
    "fedadagrad": lambda h: fedadagrad(h["server_lr"], h["beta1"], h["tau"]),
}


def parse_strategy(text: str, *, mu: float | None = None, server_lr: float | None = None,
                   momentum: float | None = None, beta1: float | None = None,
                   beta2: float | None = None, tau: float | None = None) -> Strategy:
    """Build the strategy named by ``text`` (the ``--strategy`` value).

    Args:
        text: one of ``fedavg``, ``fedprox``, ``fedavgm``, ``fedadam``,
            ``fedyogi``, ``fedadagrad``, ``median``, ``trimmed:B``,
            ``krum:F``, ``multikrum:F,M``.
        mu, server_lr, momentum, beta1, beta2, tau: hyperparameters; None
            takes the strategy's default (``DEFAULTS``). Giving one the
            strategy does not use is an error, not silently ignored.

    Returns:
        The ``Strategy``.

    Raises:
        ConfigError: unknown name, bad argument after ':', a hyperparameter
            out of range or not used by this strategy.
    """
    kind, sep, arg = text.strip().lower().partition(":")
    if kind not in DEFAULTS:
        raise ConfigError(f"unknown --strategy {text!r}; choose one of: {FORMS}")
    needs_arg = kind in ("trimmed", "krum", "multikrum")
    if needs_arg != bool(sep) or (sep and not arg):
        forms = {"trimmed": "trimmed:B", "krum": "krum:F", "multikrum": "multikrum:F,M"}
        raise ConfigError(f"bad --strategy {text!r}: write {forms.get(kind, kind)}")
    given = {"mu": mu, "server_lr": server_lr, "momentum": momentum, "beta1": beta1,
             "beta2": beta2, "tau": tau}
    hyper = dict(DEFAULTS[kind])
    for name, value in given.items():
        if value is None:
            continue
        if name not in hyper:
            users = sorted(k for k, d in DEFAULTS.items() if name in d)
            raise ConfigError(f"{FLAGS[name]} does not apply to --strategy {kind} "
                              f"(it is used by: {', '.join(users)})")
        hyper[name] = float(value)
    for name, value in hyper.items():
        _check_hyper(name, value)
    if kind in BUILDERS:
        return Strategy(weighted_mean(), BUILDERS[kind](hyper), 0.0, kind)
    if kind in ("fedavg", "fedprox"):
        return Strategy(weighted_mean(), fedavg(), hyper.get("mu", 0.0), kind)
    return Strategy(_robust(text, kind, arg), fedavg(), 0.0, text.strip().lower())
