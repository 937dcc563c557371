"""The --strategy registry, its chief options, and FedProx's mu in the plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsock.aggregation import Strategy, parse_strategy, weighted_mean
from fedsock.aggregation.strategies import DEFAULTS
from fedsock.chief import ChiefConfig
from fedsock.cli import main
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol import Auth, Challenge, Connection, Hello, Plan, Role, Welcome


def step(s: Strategy, delta: float = 1.0) -> np.ndarray:
    """One server step on a 1-tensor model given a uniform delta."""
    params = [np.zeros(3)]
    out, _ = s.transform.update([np.full(3, delta)], s.transform.init(params), params)
    return out[0]


def test_every_name_builds_a_working_strategy():
    for text in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "median",
                 "trimmed:0.2", "krum:1", "multikrum:1,4", " FedAdam "):
        s = parse_strategy(text)
        assert isinstance(s, Strategy) and s.name == text.strip().lower()
        acc = s.reducer.init([(3,)])
        for k in range(s.min_updates):
            acc = s.reducer.add(acc, [np.full(3, float(k))], 1)
        assert s.reducer.result(acc)[0].shape == (3,)
        assert np.isfinite(step(s)).all()


def test_hyperparameters_reach_the_transforms():
    np.testing.assert_allclose(step(parse_strategy("fedavg")), 1.0)
    np.testing.assert_allclose(step(parse_strategy("fedavgm", server_lr=0.5, momentum=0.9)), 0.5)
    # first Adam step: lr (1-b1) d / (sqrt(b2 tau^2 + (1-b2) d^2) + tau)
    b1, b2, tau, lr = 0.5, 0.75, 0.1, 0.2
    want = lr * (1 - b1) / (math.sqrt(b2 * tau**2 + (1 - b2)) + tau)
    got = step(parse_strategy("fedadam", server_lr=lr, beta1=b1, beta2=b2, tau=tau))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert parse_strategy("fedprox", mu=0.25).mu == 0.25
    assert parse_strategy("fedprox").mu == DEFAULTS["fedprox"]["mu"] > 0
    assert parse_strategy("fedavg").mu == 0.0
    assert parse_strategy("fedadam").reducer.add is weighted_mean().add
    assert parse_strategy("krum:2").min_updates == 7
    assert parse_strategy("multikrum:1,9").min_updates == 9
    assert parse_strategy("trimmed:0.2").min_updates == 5


@pytest.mark.parametrize("text, hyper, match", [
    ("fedsgd", {}, "unknown --strategy 'fedsgd'; choose one of: fedavg, fedprox"),
    ("krum", {}, "write krum:F"),
    ("krum:", {}, "write krum:F"),
    ("median:3", {}, "write median"),
    ("krum:-1", {}, "integer"),
    ("krum:x", {}, "integer"),
    ("multikrum:1", {}, "2 integer"),
    ("multikrum:1,0", {}, "M >= 1"),
    ("trimmed:0.5", {}, "0 < B < 0.5"),
    ("trimmed:abc", {}, "0 < B < 0.5"),
    ("fedavg", {"mu": 0.1}, "--mu does not apply to --strategy fedavg .*fedprox"),
    ("fedprox", {"server_lr": 0.1}, "--server-lr does not apply"),
    ("median", {"momentum": 0.5}, "--server-momentum does not apply"),
    ("fedprox", {"mu": -1.0}, "--mu must be >= 0"),
    ("fedprox", {"mu": float("nan")}, "--mu must be a finite number"),
    ("fedadam", {"server_lr": 0.0}, "--server-lr must be > 0"),
    ("fedadam", {"beta2": 1.0}, r"--server-beta2 must be in \[0, 1\)"),
    ("fedyogi", {"tau": -1e-3}, "--server-tau must be > 0"),
    ("fedavgm", {"momentum": 1.5}, "--server-momentum must be in"),
])
def test_bad_strategy_text_and_hyperparameters(text, hyper, match):
    with pytest.raises(ConfigError, match=match):
        parse_strategy(text, **hyper)


def test_chief_config_builds_and_checks_the_strategy():
    cfg = ChiefConfig(strategy="fedyogi", server_lr=0.02, server_beta1=0.5, min_workers=2)
    cfg.validate()
    assert cfg.build_strategy().name == "fedyogi"
    with pytest.raises(ConfigError, match="--strategy krum:1 needs at least 5 updates per round; "
                                          "set --min-workers 5 or more"):
        ChiefConfig(strategy="krum:1", min_workers=3).validate()
    ChiefConfig(strategy="krum:1", min_workers=5).validate()
    with pytest.raises(ConfigError, match="--mu does not apply"):
        ChiefConfig(strategy="fedavg", mu=0.1).validate()


def test_chief_library_takes_a_composed_strategy(tmp_path):
    from fedsock.aggregation import fedadam, fedavg, krum, median
    from fedsock.chief import Chief

    s = Strategy(median(), fedadam(server_lr=0.02), name="median+fedadam")
    chief = Chief(state_dir=tmp_path, min_workers=2, strategy=s)
    assert chief.controller.reducer is s.reducer and chief.controller.transform is s.transform
    chief = Chief(state_dir=tmp_path, min_workers=2, strategy="fedyogi", server_lr=0.05)
    assert chief.strategy.name == "fedyogi" and chief.controller.transform is chief.strategy.transform
    with pytest.raises(ConfigError, match="needs at least 5 updates"):
        Chief(state_dir=tmp_path, min_workers=2, strategy=Strategy(krum(1), fedavg()))


def test_chief_cli_reports_strategy_errors_before_listening(tmp_path, capsys):
    code = main(["--state-dir", str(tmp_path), "--strategy", "trimmed:0.1", "--min-workers", "3"],
                prog="chief.py", command="chief")
    assert code == 2
    err = capsys.readouterr().err
    assert "chief.py: error: --strategy trimmed:0.1 needs at least 10 updates per round" in err
    assert not (tmp_path / "chief.addr").exists()


def test_chief_help_documents_every_strategy(capsys):
    with pytest.raises(SystemExit):
        main(["--help"], prog="chief.py", command="chief")
    out = " ".join(capsys.readouterr().out.split())
    for word in ("--strategy", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "median",
                 "trimmed:B", "krum:F", "multikrum:F,M", "--mu", "--server-lr", "--server-momentum",
                 "--server-beta1", "--server-beta2", "--server-tau", "docs/algorithms.md"):
        assert word in out, word
    for name, defaults in DEFAULTS.items():  # the defaults in --help are the real ones
        for value in defaults.values():
            assert f"{value:g}" in out, (name, value)


# --- mu on the wire ------------------------------------------------------------------


def roundtrip(plan: Plan) -> Plan:
    chief, worker = Connection(Role.CHIEF), Connection(Role.WORKER)
    for sender, receiver, msg in ((worker, chief, Hello(name="w", instance=bytes(16))),
                                  (chief, worker, Challenge(b"n" * 32)),
                                  (worker, chief, Auth(b"m" * 32))):
        receiver.receive_data(sender.send(msg))
        assert receiver.next_event() == msg
    worker.receive_data(chief.send(Welcome(1, 0, plan, reconnect_secret=bytes(32))))
    ev = worker.next_event()
    assert isinstance(ev, Welcome)
    return ev.plan


def test_mu_travels_in_the_plan_only_when_set():
    assert "mu" not in Plan(3, 5, 8).to_wire()
    assert Plan(3, 5, 8, mu=0.125).to_wire()["mu"] == 0.125
    assert roundtrip(Plan(3, 5, 8, mu=0.125)) == Plan(3, 5, 8, mu=0.125)
    assert roundtrip(Plan(3, 5, 8)).mu == 0.0


@pytest.mark.parametrize("mu", [-0.5, float("nan"), float("inf"), "0.1", True, None, [0.1]])
def test_bad_mu_from_the_chief_is_a_remote_error(mu):
    with pytest.raises(RemoteProtocolError) as ei:
        Plan.from_wire({"rounds": 1, "sync_every": 1, "batch_size": 1, "mu": mu})
    assert ei.value.code == "bad_message" and "mu" in str(ei.value)


def test_int_mu_is_accepted_as_float():
    plan = Plan.from_wire({"rounds": 1, "sync_every": 1, "batch_size": 1, "mu": 1})
    assert plan.mu == 1.0 and isinstance(plan.mu, float)
