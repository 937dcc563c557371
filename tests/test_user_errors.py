"""A path the user got wrong ends in a message that names it, never in a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedsock.data import load_shard
from fedsock.errors import ConfigError
from fedsock.protocol import Update, specs_of
from fedsock.worker.pipeline import Outgoing, audit_step
from tests.conftest import env


@pytest.mark.parametrize("command", [["shard", "--workers", "2", "--out"], ["certs", "ca", "--out"]])
def test_an_output_path_under_a_file_is_an_error_message(tmp_path, command):
    (tmp_path / "afile").write_text("not a directory")
    out = subprocess.run([sys.executable, "-m", "fedsock", *command, str(tmp_path / "afile" / "x")],
                         capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr, out.stderr
    assert "Not a directory" in out.stderr and "afile" in out.stderr, out.stderr


def test_a_shard_that_is_not_an_npz_archive_is_named_without_suggesting_pickle(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(ConfigError) as err:
        load_shard(bad)
    assert "not an .npz archive" in str(err.value) and "bad.npz" in str(err.value)
    assert "pickle" not in str(err.value)


def test_save_updates_into_a_file_is_a_config_error(tmp_path):
    (tmp_path / "afile").write_text("")
    tensors = [np.zeros((2, 2), np.float32)]
    step = audit_step(tmp_path / "afile")
    with pytest.raises(ConfigError, match="--save-updates"):
        step(Outgoing(Update(1, 5, specs_of(tensors)), tensors))
    step = audit_step(tmp_path / "kept")
    step(Outgoing(Update(1, 5, specs_of(tensors)), tensors))
    with np.load(tmp_path / "kept" / "round-000001.npz") as z:
        assert int(z["num_examples"]) == 5 and z["w0000"].shape == (2, 2)


def test_zero_days_of_validity_is_refused_not_replaced_by_the_default(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedsock", "certs", "ca", "--out", str(tmp_path / "pki"),
                          "--days", "0"], capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "--days must be more than 0" in out.stderr, out
    assert not (tmp_path / "pki").exists()
