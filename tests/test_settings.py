"""Configuration: flags > FEDSOCK_* environment > --config file > defaults; --print-config; --help."""

from __future__ import annotations

import argparse
import os
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
