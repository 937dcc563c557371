"""Keras is pinned to releases without known safe-mode bypasses, and a worker refuses any other at start."""

from __future__ import annotations

import pytest

from fedsock.errors import ConfigError
from fedsock.kerasversion import check_keras_version, is_accepted, parse_version


def test_keras_with_known_bypasses_is_refused_with_how_to_upgrade(monkeypatch, tmp_path):
    assert parse_version("3.16.0.dev2026") == (3, 16, 0) and parse_version("3.15.1rc0") == (3, 15, 1)
    for ok in ("3.12.4", "3.12.9", "3.15.1", "3.16.0", "4.0.0"):
        assert is_accepted(parse_version(ok)), ok
        assert check_keras_version(ok) == ok
    for old in ("2.15.0", "3.8.0", "3.9.2", "3.11.3", "3.12.3", "3.13.2", "3.14.1", "3.15.0"):
        assert not is_accepted(parse_version(old)), old
        with pytest.raises(ConfigError, match=rf'Keras {old} has known safe-mode bypasses .* pip install '
                           r'--upgrade "keras>=3.15.1"'):
            check_keras_version(old)
    # the installed version is what a worker checks at start, before it reads data or connects
    monkeypatch.setattr("fedsock.kerasversion.metadata.version", lambda name: "3.8.0")
    from fedsock.worker.config import WorkerConfig
    from fedsock.worker.run import TrainingOptions, run_worker

    with pytest.raises(ConfigError, match="Keras 3.8.0 has known safe-mode bypasses"):
        run_worker(WorkerConfig(chief="127.0.0.1:9", connect_timeout=0.1), TrainingOptions(data=tmp_path / "none"))


def test_pyproject_pins_the_same_keras_releases():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    spec = re.search(r'"keras([^"]*)"', text).group(1)
    assert spec == ">=3.12.4,!=3.13.*,!=3.14.*,!=3.15.0"
