"""Only fedsock's own lines: TensorFlow/absl/CUDA start-up logging is hidden unless --verbose."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from fedsock.data import save_shard
from fedsock.quiet import is_noise, quiet_environment
from tests.conftest import ROOT, env

# What TensorFlow 2.21 prints on a machine without a GPU, verbatim.
TF_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796174077.089340   17862 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796174077.092262   17862 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "I0000 00:00:1796174077.304664   17862 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "E0000 00:00:1796174085.531112   17862 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
]
FOREIGN = re.compile(r"tensorflow|absl|cuda|cuInit|oneDNN|^[IWEF]\d{4} ", re.IGNORECASE | re.MULTILINE)


def test_noise_lines_are_recognised_and_fedsock_lines_are_not():
    assert all(is_noise(line) for line in TF_LINES)
    for line in ["01:02:03 fedsock.worker INFO loaded 8 examples from shard",
                 "F0000 00:00:1796174085.531112   17862 check.cc:52] Check failed: fatal",  # fatal stays visible
                 "Traceback (most recent call last):", "worker.py: error: data shard does not exist"]:
        assert not is_noise(line)


def test_quiet_environment_keeps_what_the_user_set():
    environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    quiet_environment(environ)
    assert environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and environ["GRPC_VERBOSITY"] == "ERROR"


@pytest.mark.integration
def test_worker_output_has_no_tensorflow_line(tmp_path):
    save_shard(tmp_path / "shard", np.zeros((8, 64), np.float32), np.zeros(8, np.int64))
    e = env()
    for k in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "GRPC_VERBOSITY"):  # as on a user's machine
        e.pop(k, None)
    # nothing listens on port 9: the worker loads its data and TensorFlow, then gives up connecting
    res = subprocess.run([sys.executable, str(ROOT / "worker.py"), "--chief", "127.0.0.1:9",
                          "--data", str(tmp_path / "shard"), "--token", "fs1." + "ab" * 32 + "." + "cd" * 32,
                          "--connect-timeout", "1"],
                         capture_output=True, text=True, env=e, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "loaded 7 examples" in out and "could not reach the chief" in out  # 1 of 8 held out (--val-split)
    assert re.search(r"Keras [\d.]+ ready in [\d.]+ s", out), out  # it did import TensorFlow, before connecting
    assert FOREIGN.findall(out) == [], out


@pytest.mark.integration
def test_importing_fedsock_keras_is_quiet():
    e = env()
    e.pop("TF_CPP_MIN_LOG_LEVEL", None)
    e.pop("CUDA_VISIBLE_DEVICES", None)
    code = "import fedsock.keras, tensorflow; print('ok', tensorflow.__version__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=180)
    assert res.returncode == 0 and res.stdout.startswith("ok "), res.stderr
    assert FOREIGN.findall(res.stderr) == [], res.stderr
