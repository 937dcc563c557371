"""Training survives failures: real processes on 127.0.0.1: deadlines, dropouts, rejoin, restart."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fedsock
from fedsock.testing.chaos import free_port
from fedsock.testing.faultproxy import FaultProxy
from tests.conftest import ROOT, env, finish, start_chief, start_worker

pytestmark = pytest.mark.integration


def metrics(chief) -> list[dict]:
    p = chief.state_dir / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def numpy_worker(tmp, chief, name: str, *extra: str, address: str | None = None) -> subprocess.Popen[str]:
    e = env()
    e["FEDSOCK_TOKEN"] = chief.token
    return subprocess.Popen(
        [sys.executable, "-m", "fedsock.testing.numpy_worker", "--chief", address or chief.address, "--name", name,
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e, cwd=tmp,
    )


def test_cut_mid_frame_never_corrupts_the_aggregate(tmp_path, chiefs):
    chief = chiefs("--rounds", "1", "--min-workers", "2", "--round-timeout", "60")
    shape = (300_000,)  # 1.2 MB per update: the cut lands inside B's Update
    a = fedsock.Client(chief.address, token=chief.token, name="A")
    a.join([np.zeros(shape, np.float32)])
    proxy = FaultProxy(tuple(chief.address.rsplit(":", 1)[0:1]) + (int(chief.address.rsplit(":", 1)[1]),),
                       cut_after=400_000, faulty=1)
    host, port = proxy.start()
    try:
        b = fedsock.Client(f"{host}:{port}", token=chief.token, name="B", reconnect_timeout=30)
        wb = b.join()
        rng = np.random.default_rng(0)
        ua, ub = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
        out = {}
        ta = threading.Thread(target=lambda: out.setdefault("a", a.sync([ua], 30)))
        ta.start()
        out["b"] = b.sync([wb[0] + ub], 10)
        ta.join(30)
    finally:
        proxy.stop()
    assert proxy.stats.cuts == 1 and b.reconnects == 1
    assert chief.wait(30) == 0
    final = np.load(chief.state_dir / "final_weights.npz")
    expected = (30 * ua.astype(np.float64) + 10 * (wb[0] + ub).astype(np.float64)) / 40
    np.testing.assert_allclose(final[final.files[0]], expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["b"][0], expected, atol=1e-6, rtol=0)
    assert metrics(chief)[0]["examples"] == 40  # B's update counted once, the cut copy never
    a.close(), b.close()


def test_heartbeats_keep_a_slow_worker_and_a_vanished_one_is_dropped(tmp_path, chiefs):
    chief = chiefs("--rounds", "2", "--min-workers", "1", "--idle-timeout", "2", "--heartbeat-interval", "0.5")
    with fedsock.Client(chief.address, token=chief.token, name="slow", idle_timeout=2,
                        heartbeat_interval=0.5) as slow:
        w = slow.join([np.zeros(4, np.float32)])
        vanishing = numpy_worker(tmp_path, chief, "vanishing", "--shape", "4", "--idle-timeout", "2",
                                 "--heartbeat-interval", "0.5", "--work", "30")
        wait_for(lambda: "(vanishing) joined" in chief.output(), 30, "the second worker to join")
        vanishing.send_signal(signal.SIGSTOP)  # no FIN, no RST: it just stops answering
        stopped = time.monotonic()
        time.sleep(6)  # a local round three times longer than the idle timeout
        assert "vanishing) " in chief.output()
        w = slow.sync([w[0] + 1], 5)
        assert slow.reconnects == 0 and slow.round == 1
        log = chief.output()
        m = re.search(r"(\d\d):(\d\d):(\d\d) fedsock.chief WARNING worker \d+ \(vanishing\): silent", log)
        assert m, log
        assert "(slow): silent" not in log
        vanishing.send_signal(signal.SIGKILL)
        vanishing.wait()
        # detection within the configured bound: idle timeout 2 s (+ scheduling slack)
        assert time.monotonic() - stopped >= 2
        slow.sync([w[0] + 1], 5)
        assert slow.finished
    assert chief.wait(30) == 0


def test_killed_worker_rejoins_and_the_run_finishes(tmp_path, chiefs):
    chief = chiefs("--rounds", "8", "--min-workers", "2", "--round-timeout", "3")
    workers = {n: numpy_worker(tmp_path, chief, n, "--work", "0.3") for n in ("w0", "w1", "w2")}
    wait_for(lambda: len(metrics(chief)) >= 2, 60, "two rounds")
    workers["w2"].send_signal(signal.SIGKILL)  # mid-round: it is "training"
    workers["w2"].wait()
    killed_after = len(metrics(chief))
    wait_for(lambda: len(metrics(chief)) >= killed_after + 1, 30, "a round without w2")
    workers["w2"] = numpy_worker(tmp_path, chief, "w2", "--work", "0.3")  # restarted
    for name, p in workers.items():
        code, out = finish(p, timeout=90)
        assert code == 0, (name, out)
    assert chief.wait(30) == 0, chief.output()
    rows = metrics(chief)
    assert [r["round"] for r in rows] == list(range(1, 9))
    assert any(r["workers"] == 2 and "w2" not in r["participants"] for r in rows)
    assert "w2" in rows[-1]["participants"]  # rejoined and contributed again


def test_chief_killed_and_restarted_workers_reconnect(tmp_path, digits):
    def run(tag: str, kill_at: int | None) -> tuple[list[dict], list[str]]:
        d = tmp_path / tag
        d.mkdir()
        port = free_port()
        args = ["--port", str(port), "--model", "fedsock.models:digits_mlp", "--eval-data",
                str(digits / "holdout"), "--rounds", "8", "--min-workers", "2", "--sync-every", "20",
                "--round-timeout", "30"]
        cmd = [sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--state-dir", str(d / "chief"), *args]
        log = open(d / "chief.log", "ab")
        chief = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env())
        addr = d / "chief" / "chief.addr"
        wait_for(addr.exists, 90, "the chief to listen")
        token = (d / "chief" / "token").read_text().strip()
        workers = [start_worker(d, f"w{i}", "--chief", f"127.0.0.1:{port}", "--data", str(digits / f"worker-{i}"),
                                "--name", f"w{i}", "--seed", str(i), token=token) for i in range(2)]
        rows_path = d / "chief" / "metrics.jsonl"
        if kill_at is not None:
            wait_for(lambda: rows_path.exists() and len(rows_path.read_text().splitlines()) >= kill_at, 120,
                     f"round {kill_at}")
            chief.send_signal(signal.SIGKILL)
            chief.wait()
            time.sleep(1)
            addr.unlink()
            chief = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env())
        outs = []
        for w in workers:
            code, out = finish(w, timeout=180)
            assert code == 0, out
            outs.append(out)
        assert chief.wait(60) == 0, (d / "chief.log").read_text()
        return [json.loads(x) for x in rows_path.read_text().splitlines()], outs

    calm, _ = run("calm", None)
    rows, outs = run("killed", 3)
    assert [r["round"] for r in rows] == list(range(1, 9))  # every round exactly once
    assert any("reconnected" in o for o in outs)
    assert abs(rows[-1]["accuracy"] - calm[-1]["accuracy"]) <= 0.02, (rows[-1], calm[-1])


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    c = start_chief(tmp_path, "--rounds", "1", "--min-workers", "1")
    with fedsock.Client(c.address, token=c.token, name="x") as cl:
        cl.join([np.zeros(3, np.float32)])
        cl.sync([np.ones(3, np.float32)], 1)
    assert c.wait(30) == 0
    ckpts = sorted((c.state_dir / "checkpoints").glob("*.fsck"))
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:40])
    p = subprocess.run([sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", "0",
                        "--state-dir", str(c.state_dir), "--rounds", "2"], capture_output=True, text=True,
                       env=env(), timeout=60)
    assert p.returncode != 0 and "is corrupt" in p.stderr and "move" in p.stderr, p.stderr


def test_fraction_samples_workers_and_the_rest_wait(tmp_path, chiefs):
    chief = chiefs("--rounds", "4", "--min-workers", "2", "--fraction", "0.5", "--seed", "3", "--round-timeout", "20")
    workers = [numpy_worker(tmp_path, chief, f"w{i}", "--work", "0.1") for i in range(4)]
    for p in workers:
        code, out = finish(p, timeout=90)
        assert code == 0, out
    assert chief.wait(30) == 0
    rows = metrics(chief)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    # round 1 may include early updates sent before sampling began; later rounds are sampled
    for r in rows[1:]:
        assert r["fraction"] == 0.5 and r["sampled"] == 2 and r["workers"] == 2, r
    assert len({tuple(r["participants"]) for r in rows[1:]}) >= 1


def test_fault_proxy_relays_and_cuts(tmp_path):
    import socket as so

    srv = so.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    with FaultProxy(srv.getsockname(), cut_after=1000, faulty=1) as proxy:
        c1 = so.create_connection(proxy.address)
        s1, _ = srv.accept()
        c1.sendall(b"x" * 5000)
        got = b""
        s1.settimeout(5)
        try:
            while chunk := s1.recv(65536):
                got += chunk
        except OSError:
            pass
        assert len(got) == 1000 and proxy.stats.cuts == 1
        c2 = so.create_connection(proxy.address)  # only the first connection is faulty
        s2, _ = srv.accept()
        c2.sendall(b"y" * 5000)
        c2.shutdown(so.SHUT_WR)
        got = b""
        while chunk := s2.recv(65536):
            got += chunk
        assert got == b"y" * 5000
        for s in (c1, s1, c2, s2):
            s.close()
    srv.close()


def test_stalled_upload_is_dropped_and_retried(tmp_path, chiefs):
    """The proxy stops forwarding mid-upload: the chief's idle timeout drops the connection,
    the worker reconnects and re-sends; the round completes with the full update."""
    chief = chiefs("--rounds", "1", "--min-workers", "1", "--idle-timeout", "2", "--heartbeat-interval", "0.5")
    host, port = chief.address.rsplit(":", 1)
    with FaultProxy((host, int(port)), stall_after=50_000, faulty=1) as proxy:
        c = fedsock.Client(proxy.url, token=chief.token, name="stalled", idle_timeout=3, heartbeat_interval=0.5,
                           reconnect_timeout=30)
        w = c.join([np.zeros(100_000, np.float32)])  # 400 KB: the stall hits the round-0 proposal
        final = c.sync([w[0] + 2], 7)
        assert proxy.stats.stalls == 1 and c.reconnects >= 1 and c.finished
        c.close()
    np.testing.assert_allclose(final[0], 2.0)
    assert "(stalled): silent for too long" in chief.output()
    assert chief.wait(30) == 0


def test_random_connection_drops_do_not_stop_training(tmp_path, chiefs):
    chief = chiefs("--rounds", "6", "--min-workers", "2", "--round-timeout", "5")
    host, port = chief.address.rsplit(":", 1)
    with FaultProxy((host, int(port)), drop_rate=0.6, drop_window=30_000, faulty=0, seed=4) as proxy:
        workers = [numpy_worker(tmp_path, chief, f"w{i}", "--shape", "64,64", "--work", "0.05", address=proxy.url)
                   for i in range(2)]
        for p in workers:
            code, out = finish(p, timeout=120)
            assert code == 0, out
        assert proxy.stats.cuts >= 1
    assert chief.wait(30) == 0
    assert [r["round"] for r in metrics(chief)] == list(range(1, 7))


def test_cut_while_the_model_comes_back_reconnects(tmp_path, chiefs):
    """The link dies in the middle of the Global (as when the chief is killed while
    sending it): the worker reconnects and continues from the closed round's model."""
    chief = chiefs("--rounds", "2", "--min-workers", "1")
    host, port = chief.address.rsplit(":", 1)
    with FaultProxy((host, int(port)), cut_down_after=1_000_000, faulty=1) as proxy:
        c = fedsock.Client(proxy.url, token=chief.token, name="cut-down", reconnect_timeout=30)
        w = c.join([np.zeros(200_000, np.float32)])  # Global(0) ~0.8 MB: the cut lands in the next one
        w = c.sync([w[0] + 1], 5)
        assert proxy.stats.cuts == 1 and c.reconnects == 1 and c.round == 1
        np.testing.assert_allclose(w[0], 1.0)
        c.sync([w[0] + 1], 5)
        assert c.finished
        c.close()
    assert chief.wait(30) == 0


def test_a_metrics_line_lost_after_its_checkpoint_comes_back_from_it(tmp_path):
    """The newest metrics line is fsynced after its checkpoint (off the round's critical path);
    if it never reached the disk, resuming restores it from the checkpoint."""
    from fedsock.aggregation import identity
    from fedsock.chief.config import ChiefConfig
    from fedsock.chief.publish import round_record
    from fedsock.chief.records import Checkpoints, MetricsLog
    from fedsock.chief.rounds import RoundController
    from fedsock.protocol import specs_of

    cfg = ChiefConfig(state_dir=tmp_path, rounds=5, min_workers=1)
    weights = [np.zeros(3, np.float32)]
    specs = specs_of(weights)

    def controller() -> RoundController:
        return RoundController(rounds=5, min_workers=1, round_timeout=60, transform=identity())

    metrics, ctrl = MetricsLog(tmp_path), controller()
    callbacks = [metrics, Checkpoints(tmp_path, cfg.keep_checkpoints, metrics)]
    ctrl.set_model(specs, weights)
    ctrl.join(1)
    for r in (1, 2, 3):
        ctrl.open_if_ready(time.monotonic())
        ctrl.submit(1, r, 10, specs, [np.full(3, r, np.float32)], connection=r)
        result = ctrl.close(time.monotonic())
        record = round_record(result, 1, 1, {}, seconds=0.1, names=["w"], members=["w"], snapshot=ctrl.snapshot(),
                              final=False, fraction=1.0, privacy={})
        for cb in callbacks:
            cb.on_round_end(record)
    metrics.on_run_end(3)
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2, 3]
    path.write_text("\n".join(lines[:2]) + "\n")  # round 3's line never reached the disk

    again = controller()
    assert Checkpoints(tmp_path, cfg.keep_checkpoints, MetricsLog(tmp_path)).resume(again, specs) == ["w"]
    assert again.round == 3
    assert path.read_text().splitlines() == lines


def test_a_done_lost_in_a_stalled_link_is_handed_out_again(tmp_path, chiefs):
    """Found by bench/chaos.py: the final model went into a link that then stalled; the chief counted
    it delivered and exited, and the worker retried a chief that was gone. Now a connection that
    fails after its Done leaves the worker owed it for the final grace, and it gets it on reconnecting."""
    chief = chiefs("--rounds", "1", "--min-workers", "1", "--idle-timeout", "2", "--heartbeat-interval", "0.5",
                   "--done-grace", "8")
    host, port = chief.address.rsplit(":", 1)
    shape = (16_384,)  # a 64 KiB model: its Done fits the socket buffers, so the chief's write succeeds
    with FaultProxy((host, int(port))) as proxy:
        # the chief notices the silence first (as when its timer started earlier), so it drops the connection
        # before the worker gives up on it
        c = fedsock.Client(proxy.url, token=chief.token, name="stalled", idle_timeout=4, heartbeat_interval=0.5,
                           reconnect_timeout=6)
        w = c.join([np.zeros(shape, np.float32)])
        proxy.inject("stall", 65_536 + 30_000, hold=30)  # past the update, inside the Done that answers it
        final = c.sync([w[0] + 1], 5)
        assert proxy.stats.stalls == 1 and c.finished and c.reconnects == 1
        c.close()
    np.testing.assert_allclose(final[0], 1.0)
    assert chief.wait(30) == 0
    assert "(stalled): silent for too long" in chief.output()
