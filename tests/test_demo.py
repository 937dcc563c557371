"""``fedsock demo`` end to end: no TensorFlow noise, the first result's time, round 1 without start-up."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import env
from tests.test_quiet import FOREIGN


@pytest.mark.integration
def test_demo_output_timing_and_logs(tmp_path):
    e = env()
    for k in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES"):  # as on a user's machine
        e.pop(k, None)
    work = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "fedsock", "demo", "--workdir", str(work), "--workers", "2",
                          "--rounds", "2"], capture_output=True, text=True, env=e, timeout=300, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode in (0, 1), out  # 1: two rounds may stay below the demo's accuracy target
    assert "final holdout accuracy" in out, out
    first = re.search(r"^\s+1\s+2\s.*<- first round done ([\d.]+) s after the demo started$", out, re.M)
    assert first, out
    assert FOREIGN.findall(out) == [], out
    for log in sorted(work.glob("*.log")):
        assert FOREIGN.findall(log.read_text()) == [], log
    # round 1 is timed from when both workers had joined, after their TensorFlow start-up
    round1 = json.loads((work / "chief" / "metrics.jsonl").read_text().splitlines()[0])
    imports = [float(m) for log in work.glob("worker-*.log")
               for m in re.findall(r"Keras [\d.]+ ready in ([\d.]+) s", log.read_text())]
    assert len(imports) == 2 and round1["seconds"] < min(imports), (round1, imports)
    assert (work / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # the federated validation accuracy next to the holdout one, by model, and each worker's
    assert re.search(r"^\s+1\s+0\.\d{4}\s+0\.\d{4}\s+0\.\d{4}\s+demo-worker-[01]$", out, re.M), out
    assert re.search(r"^  demo-worker-0 0\.\d{4} on \d+ examples$", out, re.M), out
    assert re.search(r"^  demo-worker-1\s+0\.\d{4}\s+0\.\d{4}$", out, re.M), out  # final, personalized
