"""A worker's own privacy policy against the chief's plan: refused before training, with the setting named."""

from __future__ import annotations

import math

import pytest

from fedsock.aggregation.accounting import epsilon
from fedsock.errors import ConfigError, ErrorCode, PolicyRefused
from fedsock.protocol import Plan
from fedsock.worker.config import WorkerConfig
from fedsock.worker.policy import WorkerPolicy, refusal

PLAIN = Plan(rounds=100, sync_every=1, batch_size=1)
PRIVATE = Plan(rounds=100, sync_every=20, batch_size=32, secure_agg=True, dp_clip=1.0, dp_noise=5.0)


def test_the_default_policy_accepts_any_plan():
    for plan in (PLAIN, PRIVATE):
        assert WorkerPolicy().violations(plan) == []
        WorkerPolicy().check(plan)


@pytest.mark.parametrize("policy, setting", [
    (WorkerPolicy(require_secure_agg=True), "--require-secure-agg: the chief's plan has no secure aggregation"),
    (WorkerPolicy(require_dp_noise=1.0), "--require-dp-noise 1: the chief's plan has no differential privacy"),
    (WorkerPolicy(max_epsilon=11.0), "--max-epsilon 11: the chief's plan (100 rounds, noise z = 0) costs "
                                     "epsilon inf at delta 1e-05"),
    (WorkerPolicy(min_batch_size=16), "--min-batch-size 16: the chief's plan trains in batches of 1"),
    (WorkerPolicy(min_sync_every=10), "--min-sync-every 10: the chief's plan syncs every 1 steps"),
])
def test_each_setting_refuses_the_plain_plan_and_names_itself(policy, setting):
    assert policy.violations(PLAIN) == [setting]
    with pytest.raises(PolicyRefused, match="this worker's policy refuses the chief's plan: ") as err:
        policy.check(PLAIN)
    assert setting in str(err.value)
    policy.check(PRIVATE)


def test_noise_and_epsilon_are_compared_with_the_plan():
    assert WorkerPolicy(require_dp_noise=6.0).violations(PRIVATE) == [
        "--require-dp-noise 6: the chief's plan adds noise z = 5"]
    eps = epsilon(100, 5.0, 1.0, 1e-5)
    assert 10 < eps < 11.5  # FIELD-NOTES: z = 5, 100 rounds, q = 1, delta 1e-5 -> ~10.7
    assert WorkerPolicy(max_epsilon=eps * 1.01).violations(PRIVATE) == []
    [why] = WorkerPolicy(max_epsilon=eps * 0.99).violations(PRIVATE)
    assert why.startswith("--max-epsilon") and f"costs epsilon {eps:.3g} at delta 1e-05" in why
    stricter = WorkerPolicy(max_epsilon=eps * 1.01, epsilon_delta=1e-9)
    assert stricter.epsilon(PRIVATE) > eps and stricter.violations(PRIVATE)
    no_clip = Plan(rounds=3, sync_every=1, batch_size=8, dp_noise=5.0)  # noise without clipping bounds nothing
    assert math.isinf(WorkerPolicy().epsilon(no_clip))


def test_every_violation_is_reported_at_once():
    policy = WorkerPolicy(require_secure_agg=True, min_batch_size=8, min_sync_every=5)
    assert [v.split(":")[0].split()[0] for v in policy.violations(PLAIN)] == [
        "--require-secure-agg", "--min-batch-size", "--min-sync-every"]


def test_refusal_gives_the_wire_code_and_checks_the_welcome_size():
    code, err = refusal(PLAIN, 10, 100, WorkerPolicy(min_batch_size=2))
    assert code is ErrorCode.POLICY_REFUSED and isinstance(err, PolicyRefused)
    code, err = refusal(PLAIN, 101, 100, WorkerPolicy())
    assert code is ErrorCode.LIMIT_EXCEEDED and "--max-model-bytes 100" in str(err)
    assert refusal(PLAIN, 100, 100, WorkerPolicy()) is None


def test_join_line_shows_the_plan_privacy_and_the_policy():
    line = WorkerPolicy(require_secure_agg=True, min_batch_size=16).describe(PRIVATE)
    assert line.startswith("chief's plan: secure aggregation on, differential privacy clip 1, noise z = 5 "
                           "(epsilon 1") and "over 100 rounds), batch 32, sync every 20 steps, 100 rounds" in line
    assert line.endswith("this worker requires secure aggregation, batch >= 16")
    assert "differential privacy off" in WorkerPolicy().describe(PLAIN)


@pytest.mark.parametrize("kw, message", [
    ({"require_dp_noise": -1.0}, "--require-dp-noise must be >= 0"),
    ({"max_epsilon": 0.0}, "--max-epsilon must be positive"),
    ({"epsilon_delta": 1.0}, "--epsilon-delta must be in"),
    ({"min_batch_size": 0}, "--min-batch-size must be at least 1"),
    ({"min_sync_every": 0}, "--min-sync-every must be at least 1"),
    ({"max_model_bytes": 0}, "--max-model-bytes must be in"),
])
def test_bad_policy_settings_are_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        WorkerConfig(chief="h:1", **kw)


def test_worker_config_hands_the_policy_to_the_client():
    cfg = WorkerConfig(chief="h:1", require_secure_agg=True, max_epsilon=3.0, min_sync_every=4)
    assert cfg.policy() == WorkerPolicy(require_secure_agg=True, max_epsilon=3.0, min_sync_every=4)
    kw = cfg.client_arguments()
    assert kw["require_secure_agg"] is True and kw["max_epsilon"] == 3.0 and kw["min_sync_every"] == 4
