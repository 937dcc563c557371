"""A run that is over: a chief restarted on its state dir hands out the final model at once, and
``fedsock status`` reads the state dir when no chief answers."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest

from fedsock.cli import main
from fedsock.status import stopped_run
from fedsock.worker.client import Client
from tests.conftest import run_clients

TOKEN = "fs1." + "ab" * 32 + "." + "cd" * 32  # well-formed; never checked, nobody answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_state_dir(path, rounds: int, final: bool, port: int):
    """What a chief leaves behind: checkpoints, metrics.jsonl, chief.addr and, once done, its final model."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "chief.addr").write_text(f"127.0.0.1:{port}\n")
    for r in range(1, rounds + 1):
        (path / "checkpoints" / f"round-{r:06d}.fsck").write_bytes(b"x")
    rows = [{"round": r, "workers": 2, "accuracy": 0.5 + r / 10, "loss": 1.0 / r} for r in range(1, rounds + 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if final:
        later = time.time() + 1
        for name in ("final_weights.npz", "final.keras"):
            (path / name).write_bytes(b"x")
            os.utime(path / name, (later, later))


def test_status_of_a_finished_run_that_no_chief_serves(tmp_path, capsys):
    port = free_port()
    state = tmp_path / "run"
    fake_state_dir(state, 3, final=True, port=port)
    args = ["status", "--chief", f"127.0.0.1:{port}", "--token", TOKEN, "--timeout", "2", "--state-dir", str(state)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no chief answers" in out and "finished at round 3" in out and str(state / "final.keras") in out
    assert "accuracy 0.8" in out
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False and report["finished"] and report["round"] == 3
    assert report["final_model"] == str(state / "final.keras")


def test_status_of_a_stopped_run_says_it_resumes_and_a_foreign_state_dir_is_not_used(tmp_path, capsys):
    port = free_port()
    state = tmp_path / "run"
    fake_state_dir(state, 2, final=False, port=port)
    assert main(["status", "--chief", f"127.0.0.1:{port}", "--token", TOKEN, "--timeout", "2",
                 "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert "could not reach the chief" in err and "stopped after round 2" in err and "resumes" in err
    other = free_port()
    assert stopped_run(state, f"127.0.0.1:{other}") is None  # its chief listened on another port
    assert main(["status", "--chief", f"127.0.0.1:{other}", "--token", TOKEN, "--timeout", "2",
                 "--state-dir", str(state)]) == 2
    assert "round" not in capsys.readouterr().err
    assert stopped_run(tmp_path / "nothing-here") is None


@pytest.mark.integration
def test_a_chief_restarted_after_its_last_round_hands_out_the_final_model_at_once(tmp_path, chiefs, capsys):
    chief = chiefs("--rounds", "2", "--min-workers", "2")
    finals = run_clients(chief.address, chief.token, {"a": 10, "b": 20})
    assert chief.wait(60) == 0, chief.output()
    state = chief.state_dir
    # the chief is gone: the state dir answers, with no --token (the state dir's own, its chief.addr matches)
    assert main(["status", "--chief", chief.address, "--state-dir", str(state), "--timeout", "2"]) == 0
    out = capsys.readouterr().out
    assert "finished at round 2" in out and str(state / "final_weights.npz") in out

    again = chiefs("--rounds", "1", "--min-workers", "2", "--done-grace", "1", "--port", chief.address.split(":")[1])
    started = time.monotonic()
    with Client(again.address, token=again.token, name="late", connect_timeout=30) as c:
        assert c.finished and c.round == 2  # at once: no training, no update sent
        np.testing.assert_array_equal(c.weights[0], finals["a"])
        assert c.join([np.zeros((4, 3), np.float32)])[0].shape == (4, 3)
    assert time.monotonic() - started < 10
    assert again.wait(60) == 0, again.output()
    log = again.output()
    assert "already finished at round 2" in log and "--rounds above 2" in log and "another --state-dir" in log
    for noise in ("EOF", "Traceback", "stale", "late update", "round 3", "gave up waiting"):
        assert noise not in log, log
