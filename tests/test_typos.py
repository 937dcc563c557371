"""Typos in settings get a "did you mean": config-file keys (an error) and FEDSOCK_* variables (a warning)."""

from __future__ import annotations

import logging
import os

import pytest

from fedsock import cli, settings
from fedsock.errors import ConfigError


@pytest.fixture(autouse=True)
def no_fedsock_environment(monkeypatch):
    for k in [k for k in os.environ if k.startswith("FEDSOCK_")]:
        monkeypatch.delenv(k)


def test_unknown_config_key_suggests_the_close_one(tmp_path):
    f = tmp_path / "chief.toml"
    f.write_text('round = 5\nmin_worker = 2\nflavour = "x"\n')
    args = cli.build_parser().parse_args(["chief", "--config", str(f)])
    with pytest.raises(ConfigError, match=r"unknown keys flavour, min_worker, round "
                                          r"\(did you mean: min_worker -> min-workers, round -> rounds\?\)"):
        settings.apply(args, {})


def test_unknown_variables_name_the_closest_setting():
    known = cli.known_variables()
    assert {"FEDSOCK_ROUNDS", "FEDSOCK_CHIEF", "FEDSOCK_DATA", "FEDSOCK_TOKEN", "FEDSOCK_CONFIG"} <= known
    messages = settings.unknown_variables(
        {"FEDSOCK_ROUND": "3", "FEDSOCK_ZZZ": "1", "FEDSOCK_DATA": "d", "HOME": "/root"}, known)
    assert len(messages) == 2
    assert "FEDSOCK_ROUND matches no fedsock setting" in messages[0] and "did you mean FEDSOCK_ROUNDS" in messages[0]
    assert "FEDSOCK_ZZZ" in messages[1] and "did you mean" not in messages[1]


def test_chief_command_warns_about_a_mistyped_variable(monkeypatch, caplog, capsys):
    monkeypatch.setenv("FEDSOCK_ROUND", "3")
    monkeypatch.setenv("FEDSOCK_DATA", "a worker's variable, not a typo")
    with caplog.at_level(logging.WARNING, logger="fedsock"):
        assert cli.main(["chief", "--print-config"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["environment variable FEDSOCK_ROUND matches no fedsock setting and is ignored; "
                      "did you mean FEDSOCK_ROUNDS?"]
    assert "rounds = 10  # default" in capsys.readouterr().out  # the typo changed nothing
