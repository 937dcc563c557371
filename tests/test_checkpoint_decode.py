"""A checkpoint file is input too: every malformed one is a ConfigError naming the file, never a
traceback (checkpoint.decode checks each field; records.read_resume what resuming restores)."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from fedsock import checkpoint
from fedsock.aggregation import fedadam, fedavg, flatten_state
from fedsock.chief.records import Checkpoints, MetricsLog
from fedsock.chief.rounds import RoundController
from fedsock.errors import ConfigError
from fedsock.protocol import specs_of

W = [np.arange(6, dtype=np.float32).reshape(2, 3)]
GOOD_META = {"metrics_lines": 1, "rng": json.dumps(np.random.default_rng(1).bit_generator.state), "members": ["w-1"]}


def state_dir(tmp_path, meta=None, state=()):
    d = tmp_path / "state"
    (d / "checkpoints").mkdir(parents=True, mode=0o700)
    d.chmod(0o700)
    ck = checkpoint.Checkpoint(1, specs_of(W), W, list(state), dict(GOOD_META, **(meta or {})))
    checkpoint.save(checkpoint.round_path(d / "checkpoints", 1), ck)
    return d


def resume(d, transform=None):
    ctrl = RoundController(rounds=3, min_workers=1, round_timeout=10.0, transform=transform or fedavg())
    return ctrl, Checkpoints(d, 3, MetricsLog(d)).resume(ctrl, None)


def test_a_good_checkpoint_resumes(tmp_path):
    ctrl, members = resume(state_dir(tmp_path))
    assert ctrl.round == 1 and members == ["w-1"]
    np.testing.assert_array_equal(ctrl.weights[0], W[0])


@pytest.mark.parametrize("meta, says", [
    ({"rng": json.dumps({"bit_generator": "MT19937"})}, "bad sampling state"),  # was a ValueError traceback
    ({"rng": "{not json"}, "bad sampling state"),
    ({"rng": 7}, "bad sampling state"),
    ({"metrics_lines": float("inf")}, "bad metrics_lines"),  # was an OverflowError traceback
    ({"metrics_lines": -1}, "bad metrics_lines"),  # would have cut metrics.jsonl to all lines but one
    ({"metrics_lines": 2}, "bad metrics_lines"),  # more lines than rounds
    ({"metrics_lines": True}, "bad metrics_lines"),
    ({"members": "w-1"}, "bad list of members"),
    ({"members": ["bad name\n"]}, "bad list of members"),
    ({"last_row": 3}, "bad last_row"),
])
def test_a_malformed_meta_is_a_clear_error(tmp_path, meta, says):
    with pytest.raises(ConfigError) as exc:
        resume(state_dir(tmp_path, meta))
    assert says in str(exc.value) and "round-000001.fsck" in str(exc.value) and "move" in str(exc.value)


def test_a_state_that_does_not_fit_the_aggregation_is_a_clear_error(tmp_path):
    d = state_dir(tmp_path, state=flatten_state(fedadam().init(W)))
    with pytest.raises(ConfigError, match="does not fit this chief's aggregation"):
        resume(d)  # FedAvg has no state; the file has FedAdam's
    ctrl, _ = resume(d, fedadam())
    assert ctrl.round == 1


def body(**fields):
    good = {"round": 1, "tensors": [s.to_wire() for s in specs_of(W)], "weights": [W[0].tobytes()],
            "state": [], "meta": {}}
    return checkpoint.MAGIC + msgpack.packb({**good, **fields}, use_bin_type=True)


@pytest.mark.parametrize("data, says", [
    (b"FSCKPT1\n" + msgpack.packb([1, 2]), "not a map"),
    (body(round=-1), "round -1"),
    (body(round=True), "round True"),
    (body(tensors="x"), "'tensors' is not a list"),
    (body(tensors=[{"name": "a", "dtype": "object", "shape": [1]}]), "unsupported dtype"),
    (body(weights=[]), "0 weights for 1 tensors"),
    (body(weights=[b"\x00" * 5]), "is not 24 bytes"),
    (body(state=[{"dtype": "object", "shape": [1], "data": b"\x00" * 8}]), "state array 'object'"),
    (body(state=[{"dtype": "float64", "shape": [-1], "data": b""}]), "state array"),
    (body(state=[{"dtype": "float64", "shape": [2], "data": b"\x00" * 8}]), "is not 16 bytes"),
    (body(meta=[]), "'meta' is not a dict"),
    (checkpoint.MAGIC + b"\xc7\x01\x05x", "corrupt"),  # an ext type
    (checkpoint.MAGIC + b"\x81", "corrupt"),  # truncated
])
def test_a_malformed_file_is_a_config_error(data, says):
    with pytest.raises(ConfigError) as exc:
        checkpoint.decode(data, "x.fsck")
    assert "x.fsck" in str(exc.value) and says in str(exc.value), exc.value
