"""Shard checks before training: the file is named, and so is the fix."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from fedsock.data import load_shard, save_shard
from fedsock.datacheck import check_arrays, check_labels
from fedsock.errors import ConfigError
from tests.conftest import ROOT, env


def _shard(directory, x, y):
    save_shard(directory, np.asarray(x), np.asarray(y))
    return directory / "data.npz"


def test_a_npz_file_is_accepted_as_the_shard(tmp_path):
    f = _shard(tmp_path / "worker-0", np.ones((4, 3), np.float32), np.arange(4))
    x, y = load_shard(f)
    assert x.shape == (4, 3) and list(y) == [0, 1, 2, 3]
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"notes\.txt is not a \.npz file.*folder"):
        load_shard(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match=r"does not exist.*folder.*\.npz file.*is the shard in there"):
        load_shard(tmp_path / "worker-0" / "daat.npz")


def test_nan_and_inf_in_x_name_the_file_row_and_fix(tmp_path):
    x = np.ones((5, 3), np.float32)
    x[3, 1] = np.nan
    f = _shard(tmp_path / "s", x, np.zeros(5, np.int64))
    with pytest.raises(ConfigError, match=r"s/data\.npz: x contains 1 NaN/Inf.*row 3.*nan_to_num"):
        load_shard(tmp_path / "s")
    x[3, 1] = np.inf
    with pytest.raises(ConfigError, match=r"Inf first in row 3"):
        check_arrays(x, np.zeros(5), str(f))


def test_text_labels_and_text_features_are_refused_before_training(tmp_path):
    _shard(tmp_path / "s", np.ones((3, 2), np.float32), np.array(["cat", "dog", "cat"]))
    with pytest.raises(ConfigError, match=r"data\.npz: labels y are text \('cat', 'dog'.*return_inverse"):
        load_shard(tmp_path / "s")
    with pytest.raises(ConfigError, match=r"x has dtype <U1, not numbers.*astype"):
        check_arrays(np.array([["a"]]), np.zeros(1), "f.npz")
    with pytest.raises(ConfigError, match=r"labels y contain 1 NaN"):
        check_arrays(np.ones((2, 1)), np.array([0.0, np.nan]), "f.npz")


def test_labels_are_checked_against_the_loss():
    onehot = np.eye(10)[[1, 2, 3]]
    with pytest.raises(ConfigError, match=r"shard-a: .*one-hot.*argmax\(axis=1\).*categorical_crossentropy"):
        check_labels(onehot, "sparse_categorical_crossentropy", 10, "shard-a")
    with pytest.raises(ConfigError, match=r"not whole numbers \(e\.g\. 0\.5\).*class ids.*regression loss"):
        check_labels(np.array([0.0, 0.5, 2.0]), "sparse_categorical_crossentropy", 10, "s")
    with pytest.raises(ConfigError, match=r"10 output classes.*labels 0\.\.12"):
        check_labels(np.array([0.0, 12.0]), "sparse_categorical_crossentropy", 10, "s")
    with pytest.raises(ConfigError, match=r"class ids.*one-hot.*to_categorical.*sparse_categorical_crossentropy"):
        check_labels(np.array([1, 2]), "categorical_crossentropy", 10, "s")
    with pytest.raises(ConfigError, match=r"one-hot labels of width 3"):
        check_labels(np.eye(3), "categorical_crossentropy", 10, "s")
    check_labels(np.array([0.0, 3.0]), "sparse_categorical_crossentropy", 10, "s")  # whole floats are class ids
    check_labels(onehot, "categorical_crossentropy", 10, "s")
    check_labels(np.array([0.25, 1.5]), "mse", 1, "s")  # a regression target is not a class id


def test_check_data_fits_reads_the_loss_of_a_keras_model():
    from fedsock import kerasutil
    from fedsock.models import digits_mlp

    model = digits_mlp()
    with pytest.raises(ConfigError, match=r"w0/data\.npz: labels y have shape \(4, 10\), one-hot"):
        kerasutil.check_data_fits(model, np.zeros((4, 64), np.float32), np.eye(10)[:4], source="w0/data.npz")
    rebuilt = kerasutil.rebuild(*kerasutil.describe(model)[:2])  # as a worker gets it from the chief
    with pytest.raises(ConfigError, match=r"one-hot"):
        kerasutil.check_data_fits(rebuilt, np.zeros((4, 64), np.float32), np.eye(10)[:4])


@pytest.mark.integration
def test_worker_refuses_nan_data_before_connecting(tmp_path):
    x = np.ones((8, 64), np.float32)
    x[5, 0] = np.nan
    _shard(tmp_path / "shard", x, np.zeros(8, np.int64))
    start = time.monotonic()
    # nothing listens on port 9 of 127.0.0.1: a worker that tried to connect would retry for 60 s
    res = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--chief", "127.0.0.1:9",
                          "--data", str(tmp_path / "shard"), "--token", "fs1." + "ab" * 32 + "." + "cd" * 32],
                         capture_output=True, text=True, env=env(), timeout=60)
    assert res.returncode == 2, res.stderr
    assert "shard/data.npz: x contains 1 NaN/Inf" in res.stderr and "row 5" in res.stderr
    assert "Traceback" not in res.stderr and "not reachable" not in res.stderr
    assert time.monotonic() - start < 30
