"""Configuration: flags > FEDSOCK_* environment > --config file > defaults; --print-config; --help."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedsock import cli, settings
from fedsock.errors import ConfigError
from tests.conftest import ROOT, env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(autouse=True)
def no_fedsock_environment(monkeypatch):
    """The developer's own FEDSOCK_* variables must not change what these tests see."""
    for k in [k for k in os.environ if k.startswith("FEDSOCK_")]:
        monkeypatch.delenv(k)


def parse(argv: list[str], environ: dict[str, str]) -> tuple[argparse.Namespace, dict[str, str]]:
    args = cli.build_parser().parse_args(argv)
    return args, settings.apply(args, environ)


def test_precedence_flag_env_file_default(tmp_path):
    f = tmp_path / "chief.toml"
    f.write_text('rounds = 5\nmin-workers = 4\nstate_dir = "from-file"\nround-timeout = 12\nprogress = "plain"\n')
    environ = {"FEDSOCK_ROUNDS": "7", "FEDSOCK_MIN_WORKERS": "3", "FEDSOCK_TOKEN": "ignored by the chief"}
    args, sources = parse(["chief", "--config", str(f), "--rounds", "9"], environ)
    assert args.rounds == 9 and sources["rounds"] == "flag"  # flag beats env and file
    assert args.min_workers == 3 and sources["min_workers"] == "env FEDSOCK_MIN_WORKERS"  # env beats file
    assert args.state_dir == Path("from-file") and sources["state_dir"] == f"file {f}"
    assert args.round_timeout == 12.0 and isinstance(args.round_timeout, float)
    assert args.progress == "plain"
    assert args.port == 7777 and sources["port"] == "default"
    assert args.model is None and args.tensorboard is None

    # the config file itself may come from the environment
    args, sources = parse(["chief"], {"FEDSOCK_CONFIG": str(f)})
    assert args.rounds == 5 and sources["rounds"] == f"file {f}"


def test_worker_settings_and_required_options(tmp_path):
    f = tmp_path / "worker.toml"
    f.write_text('chief = "10.0.0.1:7777"\ndata = "shard"\nreconnect-timeout = 0\n')
    args, sources = parse(["worker", "--config", str(f)], {"FEDSOCK_TOKEN": "fs1.x.y", "FEDSOCK_NAME": "w9"})
    assert (args.chief, args.data, args.token, args.name) == ("10.0.0.1:7777", Path("shard"), "fs1.x.y", "w9")
    assert args.reconnect_timeout == 0.0 and sources["token"] == "env FEDSOCK_TOKEN"
    with pytest.raises(ConfigError, match=r"--chief is required.*FEDSOCK_CHIEF.*chief in a --config file"):
        parse(["worker", "--data", "x"], {})


@pytest.mark.parametrize("text, message", [
    ('rounds = 3\nbogus = 1\ncolour = "red"\n', r"unknown keys bogus, colour; known keys: advertise, "),
    ('rounds = "many"\n', r"rounds: expected int, got str 'many'"),
    ("rounds = true\n", r"rounds: expected int, got bool"),
    ('progress = "fancy"\n', r"progress: 'fancy' is not one of auto, live, plain"),
    ("tensorboard = 1\n", r"tensorboard: expected bool"),
    ("rounds = 3\nmin-workers = 1\nmin_workers = 2\n", r"min-workers is given twice"),
    ("rounds = [\n", r"is not valid TOML"),
    ("config = 'other.toml'\n", r"unknown key config"),
])
def test_bad_config_files_are_errors_that_name_the_problem(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse(["chief", "--config", str(f)], {})


def test_bad_environment_values_name_the_variable():
    with pytest.raises(ConfigError, match=r"FEDSOCK_ROUNDS: 'ten' is not a valid int"):
        parse(["chief"], {"FEDSOCK_ROUNDS": "ten"})
    with pytest.raises(ConfigError, match=r"FEDSOCK_TENSORBOARD: 'maybe' is not a boolean"):
        parse(["chief"], {"FEDSOCK_TENSORBOARD": "maybe"})
    args, _ = parse(["chief"], {"FEDSOCK_TENSORBOARD": "no"})
    assert args.tensorboard is False
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse(["chief", "--config", "/nonexistent/c.toml"], {})


def test_print_config_round_trips(tmp_path, monkeypatch, capsys):
    f = tmp_path / "chief.toml"
    f.write_text('rounds = 5\nupstream = "10.0.0.1:7777"\nupstream-token = "fs1.secret"\n')
    monkeypatch.setenv("FEDSOCK_SEED", "42")
    assert cli.main(["chief", "--config", str(f), "--port", "9000", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "port = 9000  # flag" in text and "seed = 42  # env FEDSOCK_SEED" in text
    assert f"rounds = 5  # file {f}" in text and "fs1.secret" not in text  # secrets stay hidden
    printed = tomllib.loads(text)
    assert printed["rounds"] == 5 and printed["port"] == 9000 and printed["state-dir"] == "fedsock-chief"
    again = tmp_path / "again.toml"
    again.write_text(text)
    monkeypatch.delenv("FEDSOCK_SEED")
    args, _ = parse(["chief", "--config", str(again)], {})
    assert (args.rounds, args.port, args.seed, args.upstream) == (5, 9000, 42, "10.0.0.1:7777")


def test_print_config_checks_the_configuration(capsys):
    assert cli.main(["chief", "--rounds", "0", "--print-config"]) == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err
    assert cli.main(["chief", "--upstream", "h:1", "--model", "m:f", "--print-config"]) == 2
    assert "relay" in capsys.readouterr().err


def test_every_option_of_every_command_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {"chief", "worker", "status", "plot", "shard", "demo"}
    for name, p in sub.choices.items():
        assert p.description, name
        for a in p._actions:
            assert a.help and a.help != argparse.SUPPRESS, (name, a.dest)
    out = subprocess.run([sys.executable, str(ROOT / "chief.py"), "--help"], capture_output=True, text=True,
                         env=env(), check=True).stdout
    assert "--upstream HOST:PORT" in out and "--config CONFIG" in out and "FEDSOCK_" in out


def test_hardening_strategy_and_compression_options_are_settings_too(tmp_path):
    f = tmp_path / "chief.toml"
    f.write_text('strategy = "fedprox"\nmu = 0.01\nworker-tokens-only = true\nca = "pki/ca.crt"\n'
                 'compress = "int8"\n')
    args, sources = parse(["chief", "--config", str(f)], {"FEDSOCK_HANDSHAKE_TIMEOUT": "3",
                                                          "FEDSOCK_MIN_WORKERS": "3"})
    assert (args.strategy, args.mu, args.worker_tokens_only, args.ca, args.compress) == (
        "fedprox", 0.01, True, Path("pki/ca.crt"), "int8")
    assert sources["strategy"] == f"file {f}"
    assert args.handshake_timeout == 3.0 and sources["handshake_timeout"] == "env FEDSOCK_HANDSHAKE_TIMEOUT"
    assert args.min_workers == 3 and args.server_lr is None
    cfg = cli.chief_config(args)
    assert cfg.build_strategy().mu == 0.01 and cfg.worker_tokens_only and cfg.compress == "int8"

    args, sources = parse(["worker", "--chief", "h:1", "--data", "d", "--seed", "4"],
                          {"FEDSOCK_CERT": "w.crt", "FEDSOCK_KEY": "w.key"})
    assert (args.seed, args.cert, args.key) == (4, Path("w.crt"), Path("w.key"))
    assert sources["seed"] == "flag" and sources["cert"] == "env FEDSOCK_CERT"


def test_a_relay_refuses_server_side_strategies():
    args, _ = parse(["chief", "--upstream", "top:7777", "--strategy", "fedadam"], {})
    with pytest.raises(ConfigError, match="does not apply to a relay"):
        cli.chief_config(args)
    args, _ = parse(["chief", "--upstream", "top:7777", "--strategy", "median", "--min-workers", "2"], {})
    assert cli.chief_config(args).build_strategy().name.startswith("median")


def test_every_chief_field_is_a_flag_a_key_and_a_variable_with_the_fields_default(tmp_path):
    from fedsock.chief import ChiefConfig

    options = settings.options_of(ChiefConfig)
    assert [o.dest for o in options] == [f.name for f in dataclasses.fields(ChiefConfig)]
    args, sources = parse(["chief"], {})
    assert set(sources.values()) == {"default"}
    assert settings.build(ChiefConfig, args) == ChiefConfig()  # no default is copied anywhere
    parser = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    text = parser["chief"].format_help()
    for o in options:
        assert o.flag in text and o.env in text, o.dest
    assert re.search(r"--max-examples MAX_EXAMPLES\s+the largest num_examples .*\(default:\s+1000000000;"
                     r"\s+\$FEDSOCK_MAX_EXAMPLES\)", text, flags=re.S)
    assert "--secure-agg, --no-secure-agg" in text and "(default: off; $FEDSOCK_SECURE_AGG)" in text


def test_max_examples_and_the_former_library_only_settings_are_checked(tmp_path):
    from fedsock import limits
    from fedsock.chief import ChiefConfig

    assert ChiefConfig().max_examples == limits.MAX_EXAMPLES
    f = tmp_path / "c.toml"
    f.write_text("max-examples = 5000\n")
    args, sources = parse(["chief", "--config", str(f)], {})
    assert cli.chief_config(args).max_examples == 5000 and sources["max_examples"] == f"file {f}"
    args, _ = parse(["chief", "--config", str(f)], {"FEDSOCK_MAX_EXAMPLES": "70"})
    assert cli.chief_config(args).max_examples == 70
    for flags, message in ((["--max-examples", "0"], "--max-examples must be at least 1"),
                           (["--keep-checkpoints", "0"], "--keep-checkpoints must be at least 1"),
                           (["--done-grace", "-1"], "--done-grace at least 0"),
                           (["--handshake-timeout", "0"], "--handshake-timeout must be positive")):
        args, _ = parse(["chief", *flags], {})
        with pytest.raises(ConfigError, match=message):
            cli.chief_config(args)


def test_a_flag_turns_off_a_switch_the_config_file_turned_on(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("secure-agg = true\nworker-tokens-only = true\n")
    args, sources = parse(["chief", "--config", str(f), "--no-secure-agg"], {})
    assert args.secure_agg is False and sources["secure_agg"] == "flag"
    assert args.worker_tokens_only is True


def test_worker_settings_are_declared_once_and_client_takes_the_same_defaults():
    from fedsock.worker.client import Client
    from fedsock.worker.config import WorkerConfig
    from fedsock.worker.run import TrainingOptions

    args, sources = parse(["worker", "--chief", "h:1", "--data", "d"], {})
    cfg = settings.build(WorkerConfig, args)
    assert cfg == WorkerConfig(chief="h:1")
    assert settings.build(TrainingOptions, args) == TrainingOptions(data=Path("d"))
    params = inspect.signature(Client).parameters
    for name, value in WorkerConfig(chief="h:1").client_arguments().items():
        assert name in params, name  # every worker setting is a Client argument ...
        if name != "address":  # ... with the same default
            assert params[name].default == value, name
    assert WorkerConfig.connect_timeout == 60.0 and WorkerConfig.reconnect_timeout == 300.0


@pytest.mark.parametrize("kw, message", [
    ({"name": "two words"}, "bad worker name 'two words'"),
    ({"name": "x" * 65}, "bad worker name"),
    ({"name": "red\x1b[31m"}, "bad worker name"),
    ({"name": "forged\n"}, "bad worker name"),  # a final newline would start a new line in the chief's log
    ({"connect_timeout": 0.0}, "--connect-timeout must be positive"),
    ({"reconnect_timeout": -1.0}, "--reconnect-timeout must be 0"),
    ({"heartbeat_interval": 90.0}, "--heartbeat-interval must be positive and shorter than --idle-timeout"),
])
def test_bad_worker_settings_are_refused(kw, message):
    from fedsock.worker.config import WorkerConfig

    with pytest.raises(ConfigError, match=re.escape(message)):
        WorkerConfig(chief="h:1", **kw)


def test_a_bad_name_from_the_environment_fails_before_connecting(capsys, monkeypatch):
    monkeypatch.setenv("FEDSOCK_NAME", "no spaces please")
    assert cli.main(["worker", "--chief", "127.0.0.1:9", "--data", "d"]) == 2
    assert "bad worker name 'no spaces please'" in capsys.readouterr().err
    assert cli.main(["worker", "--chief", "127.0.0.1:9", "--data", "d", "--print-config"]) == 2


def test_default_name_is_host_pid_and_always_a_valid_name():
    from fedsock import tls
    from fedsock.worker.config import default_name

    assert default_name("lab-3", 42) == "lab-3-42"
    assert tls.check_name(default_name()).endswith(f"-{os.getpid()}")
    assert default_name(pid=5) == default_name(socket.gethostname(), 5)
    long = default_name("n" * 100 + ".example.org", 1234567)
    assert len(long) == 64 and long.endswith("-1234567")
    for host in ("host name with spaces", "_under", "münchen", "", ".local"):
        assert tls.check_name(default_name(host, 7)).endswith("-7"), host


def test_worker_scripts_parse_the_shared_settings(capsys):
    from fedsock.worker.config import WorkerConfig, parse_worker_args

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    args, cfg = parse_worker_args(p, ["--data", "s", "--chief", "h:7", "--name", "site-a",
                                      "--reconnect-timeout", "0"])
    assert args.data == "s" and cfg == WorkerConfig(chief="h:7", name="site-a", reconnect_timeout=0.0)
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    with pytest.raises(SystemExit) as exc:
        parse_worker_args(p, ["--data", "s"])
    assert exc.value.code == 2 and "--chief is required" in capsys.readouterr().err
