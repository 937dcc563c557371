"""A worker's own privacy policy, checked against the chief's plan before any training.

The plan is the chief's to choose; the worker decides whether to take part.
A plan that violates the policy is refused with a message naming the
setting, and the chief is told why (``Error`` code ``policy_refused``).

``--max-epsilon`` uses the plan's ``dp_noise`` and ``rounds`` with the RDP
accountant of ``fedsock.aggregation.accounting``. The plan carries neither
the chief's sampling rate nor its delta, so the worker assumes it takes part
in every round (sampling rate 1, the largest epsilon a participant can be
charged) at its own ``--epsilon-delta``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsock.errors import ConfigError, ErrorCode, PolicyRefused
from fedsock.protocol import Plan


@dataclass(frozen=True)
class WorkerPolicy:
    """What a worker requires of a chief's plan (the defaults require nothing)."""

    require_secure_agg: bool = False
    require_dp_noise: float | None = None
    max_epsilon: float | None = None
    epsilon_delta: float = 1e-5
    min_batch_size: int = 1
    min_sync_every: int = 1

    def __post_init__(self) -> None:
        if self.require_dp_noise is not None and not self.require_dp_noise >= 0:
            raise ConfigError(f"--require-dp-noise must be >= 0, got {self.require_dp_noise:g}")
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ConfigError(f"--max-epsilon must be positive, got {self.max_epsilon:g}")
        if not 0 < self.epsilon_delta < 1:
            raise ConfigError(f"--epsilon-delta must be in (0, 1), got {self.epsilon_delta:g}")
        for flag, value in (("--min-batch-size", self.min_batch_size), ("--min-sync-every", self.min_sync_every)):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")

    def epsilon(self, plan: Plan) -> float:
        """Epsilon the whole run would cost this worker (``inf`` without DP noise)."""
        if not plan.dp_clip or not plan.dp_noise:
            return math.inf
        from fedsock.aggregation.accounting import epsilon

        return epsilon(plan.rounds, plan.dp_noise, 1.0, self.epsilon_delta)

    def violations(self, plan: Plan) -> list[str]:
        """Why ``plan`` is refused, one sentence per violated setting (empty: accepted)."""
        out = []
        if self.require_secure_agg and not plan.secure_agg:
            out.append("--require-secure-agg: the chief's plan has no secure aggregation")
        if self.require_dp_noise is not None:
            if not plan.dp_clip:
                out.append(f"--require-dp-noise {self.require_dp_noise:g}: the chief's plan has no "
                           "differential privacy")
            elif plan.dp_noise < self.require_dp_noise:
                out.append(f"--require-dp-noise {self.require_dp_noise:g}: the chief's plan adds noise "
                           f"z = {plan.dp_noise:g}")
        if self.max_epsilon is not None:
            eps = self.epsilon(plan)
            if eps > self.max_epsilon:
                out.append(f"--max-epsilon {self.max_epsilon:g}: the chief's plan ({plan.rounds} rounds, "
                           f"noise z = {plan.dp_noise:g}) costs epsilon {eps:.3g} at delta "
                           f"{self.epsilon_delta:g}")
        if plan.batch_size < self.min_batch_size:
            out.append(f"--min-batch-size {self.min_batch_size}: the chief's plan trains in batches of "
                       f"{plan.batch_size}")
        if plan.sync_every < self.min_sync_every:
            out.append(f"--min-sync-every {self.min_sync_every}: the chief's plan syncs every "
                       f"{plan.sync_every} steps")
        return out

    def check(self, plan: Plan) -> None:
        """Raises: PolicyRefused: naming every violated setting."""
        found = self.violations(plan)
        if found:
            raise PolicyRefused("this worker's policy refuses the chief's plan: " + "; ".join(found))

    def describe(self, plan: Plan) -> str:
        """One log line: the plan's privacy settings and what this worker requires."""
        if plan.dp_clip:
            eps = self.epsilon(plan) if plan.dp_noise else math.inf
            dp = f"clip {plan.dp_clip:g}, noise z = {plan.dp_noise:g} (epsilon {eps:.3g} at delta " \
                 f"{self.epsilon_delta:g} over {plan.rounds} rounds)"
        else:
            dp = "off"
        need = [f for f, on in (("secure aggregation", self.require_secure_agg),
                                (f"noise z >= {self.require_dp_noise:g}" if self.require_dp_noise is not None
                                 else "", self.require_dp_noise is not None),
                                (f"epsilon <= {self.max_epsilon:g}" if self.max_epsilon is not None else "",
                                 self.max_epsilon is not None),
                                (f"batch >= {self.min_batch_size}", self.min_batch_size > 1),
                                (f"sync every >= {self.min_sync_every}", self.min_sync_every > 1)) if on]
        return (f"chief's plan: secure aggregation {'on' if plan.secure_agg else 'off'}, differential privacy "
                f"{dp}, batch {plan.batch_size}, sync every {plan.sync_every} steps, {plan.rounds} rounds; "
                f"this worker requires {', '.join(need) or 'nothing (no --require-*/--max-epsilon/--min-*)'}")


def refusal(plan: Plan, nbytes: int, max_model_bytes: int,
            policy: WorkerPolicy) -> tuple[ErrorCode, ConfigError] | None:
    """Why a worker refuses a Welcome (its ``Error`` code and the error to raise), or None.

    Args:
        plan: the Welcome's plan.
        nbytes: the bytes of the weights that follow it.
        max_model_bytes: the worker's ``--max-model-bytes``.
        policy: the worker's policy.
    """
    if nbytes > max_model_bytes:
        return ErrorCode.LIMIT_EXCEEDED, ConfigError(
            f"the chief's model has {nbytes} bytes of weights, more than this worker's --max-model-bytes "
            f"{max_model_bytes}")
    try:
        policy.check(plan)
    except PolicyRefused as exc:
        return ErrorCode.POLICY_REFUSED, exc
    return None
