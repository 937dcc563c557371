"""Secure aggregation with real chief and worker processes over TLS on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedsock.secagg import fixedpoint
from fedsock.testing.numpy_worker import step_for
from tests.conftest import ROOT, env, finish, flat_fedavg, run_clients, start_worker, worker_token
from tests.test_secagg import chi_square_p

pytestmark = pytest.mark.integration

SHAPE = (64, 10)


def tolerance(reference: np.ndarray, rounds: int = 1) -> float:
    """The stated error: 2**-25 per round from the encoding, plus one float32 rounding per round."""
    return rounds * (fixedpoint.MAX_ERROR + float(np.spacing(np.float32(np.max(np.abs(reference))))))


def rows_of(state_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (state_dir / "metrics.jsonl").read_text().splitlines()]


def numpy_worker(chief, name: str, *args: str) -> subprocess.Popen[str]:
    """A TF-free worker process; it "trains" 1 s a round, so all have joined before round 1 closes."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedsock.testing.numpy_worker", "--chief", chief.address,
         "--token", worker_token(chief.state_dir, name),
         "--name", name, "--shape", ",".join(map(str, SHAPE)), "--work", "1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=ROOT)


def expected(examples: dict[str, int], rounds: list[list[str]]) -> np.ndarray:
    """FedAvg of numpy_worker's deterministic steps, round r over the workers in rounds[r-1]."""
    w = np.zeros(SHAPE, np.float32)
    for r, names in enumerate(rounds, start=1):
        total = sum(examples[n] for n in names)
        w = (sum(examples[n] * (w + step_for(n, r, [SHAPE])[0]).astype(np.float64) for n in names)
             / total).astype(np.float32)
    return w


@pytest.mark.parametrize("examples, extra", [
    ({"a": 10, "b": 25, "c": 40}, []),
    ({"a": 10, "b": 25, "c": 40, "d": 5, "e": 60}, ["--secagg-neighbours", "2", "--secagg-threshold", "2"]),
], ids=["everyone", "secagg+"])
def test_secure_aggregation_gives_plain_fedavg_within_the_fixed_point_error(chiefs, examples, extra):
    n = len(examples)
    chief = chiefs("--rounds", "4", "--min-workers", str(n), "--secure-agg", *extra)
    finals = run_clients(chief.address, chief.token_for, examples, shape=SHAPE)
    assert chief.wait(60) == 0, chief.output()
    ref = flat_fedavg(examples, 4, shape=SHAPE)
    for w in finals.values():
        np.testing.assert_allclose(w, ref, atol=tolerance(ref, 4), rtol=0)
    rows = rows_of(chief.state_dir)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["examples"] == sum(examples.values()) and r["workers"] == n and r["secure_agg"]["attempt"] == 1
               for r in rows)
    assert f"secure aggregation attempt 1 with {n} workers" in chief.output()


def test_secure_aggregation_refuses_the_shared_token_and_says_how_to_get_one(chiefs):
    """The shared token would let one holder join as many identities (Sybils) as it likes."""
    import fedsock
    from fedsock.errors import AuthenticationError

    chief = chiefs("--rounds", "1", "--min-workers", "2", "--secure-agg")
    with pytest.raises(AuthenticationError) as err:
        with fedsock.Client(chief.address, token=chief.token, name="sybil-1", reconnect_timeout=0):
            pass
    assert "per-worker tokens" in str(err.value) and "fedsock token create sybil-1" in str(err.value)
    with fedsock.Client(chief.address, token=chief.token_for("alice"), name="alice", reconnect_timeout=0) as c:
        assert c.plan.secure_agg
    out = chief.output()
    assert "fedsock token create NAME" in out and chief.token.split(".")[2] not in out


def test_the_chief_only_ever_holds_masked_updates(tmp_path, monkeypatch):
    """In-process chief: every individual update it folds looks uniformly random, and the plain
    update path (RoundController.submit) is never taken."""
    from fedsock.chief import Chief
    from fedsock.chief.rounds import RoundController
    from fedsock.secagg.chief import ChiefRound

    held: list[np.ndarray] = []
    fold = ChiefRound.add_masked

    def spy(self, worker, arrays):  # type: ignore[no-untyped-def]
        held.append(np.concatenate([np.asarray(a).reshape(-1) for a in arrays]).copy())
        return fold(self, worker, arrays)

    def no_plain_updates(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an individual update reached the plain aggregation path")

    monkeypatch.setattr(ChiefRound, "add_masked", spy)
    monkeypatch.setattr(RoundController, "submit", no_plain_updates)
    chief = Chief(host="127.0.0.1", port=0, state_dir=tmp_path / "chief", rounds=3, min_workers=3,
                  secure_agg=True, progress="plain")
    thread = threading.Thread(target=chief.run, daemon=True)
    thread.start()
    addr = tmp_path / "chief" / "chief.addr"
    for _ in range(600):
        if addr.exists() and addr.read_text().strip():
            break
        time.sleep(0.05)
    address = addr.read_text().strip()
    examples = {"a": 10, "b": 20, "c": 30}
    run_clients(address, lambda name: worker_token(tmp_path / "chief", name), examples, shape=SHAPE)
    thread.join(30)
    assert not thread.is_alive()
    assert len(held) == 9  # 3 workers x 3 rounds
    w = np.zeros(SHAPE, np.float32)
    for masked in held:
        assert masked.dtype == np.uint64
        assert chi_square_p(masked.tobytes()) > 1e-4
        for name, n in examples.items():  # and it is not any worker's plain encoding
            plain = fixedpoint.encode([w + step_for(name, 1, [SHAPE])[0]], n, 3)
            assert not np.array_equal(masked, plain)


def test_killing_a_third_of_the_workers_after_masking_keeps_the_sum_correct(chiefs):
    chief = chiefs("--rounds", "4", "--min-workers", "4", "--secure-agg")
    names = [f"w{i}" for i in range(1, 7)]
    examples = {n: 10 * i for i, n in enumerate(names, start=1)}
    procs = {n: numpy_worker(chief, n, "--examples", str(examples[n]),
                             *(["--kill-after", "masked:2"] if n in ("w5", "w6") else []))
             for n in names}
    for n, p in procs.items():
        code, out = finish(p, 120)
        if n in ("w5", "w6"):
            assert code == -9 and "killing myself after masked of round 2" in out, out
        else:
            assert code == 0, out
    assert chief.wait(60) == 0, chief.output()
    rows = rows_of(chief.state_dir)
    assert [r["workers"] for r in rows] == [6, 6, 4, 4]
    assert rows[1]["secure_agg"]["attempt"] == 1  # both dead workers' updates are in round 2
    assert rows[1]["secure_agg"]["dropped"] == 0
    ref = expected(examples, [names, names, names[:4], names[:4]])
    final = np.load(chief.state_dir / "final_weights.npz")
    np.testing.assert_allclose(final[final.files[0]], ref, atol=tolerance(ref, 4), rtol=0)


def test_a_worker_lost_between_sharing_and_masking_is_unmasked_out(chiefs):
    chief = chiefs("--rounds", "3", "--min-workers", "3", "--secure-agg")
    names = ["w1", "w2", "w3", "w4"]
    examples = dict.fromkeys(names, 10)
    procs = {n: numpy_worker(chief, n, *(["--kill-after", "shares:2"] if n == "w4" else [])) for n in names}
    for n, p in procs.items():
        code, out = finish(p, 120)
        assert code == (-9 if n == "w4" else 0), out
    assert chief.wait(60) == 0, chief.output()
    rows = rows_of(chief.state_dir)
    assert [r["workers"] for r in rows] == [4, 3, 3]
    assert (rows[1]["secure_agg"]["attempt"], rows[1]["secure_agg"]["dropped"]) == (1, 1)
    ref = expected(examples, [names, names[:3], names[:3]])
    final = np.load(chief.state_dir / "final_weights.npz")
    np.testing.assert_allclose(final[final.files[0]], ref, atol=tolerance(ref, 3), rtol=0)


def test_below_the_threshold_the_attempt_fails_cleanly_and_is_retried(chiefs):
    chief = chiefs("--rounds", "3", "--min-workers", "3", "--secure-agg", "--secagg-threshold", "3")
    names = ["w1", "w2", "w3", "w4"]
    examples = dict.fromkeys(names, 10)
    procs = {n: numpy_worker(chief, n, *(["--kill-after", "masked:2"] if n in ("w3", "w4") else []))
             for n in names}
    for n in ("w3", "w4"):
        code, out = finish(procs[n], 120)
        assert code == -9, out
    # Two of four left after masking: too few to rebuild the dead workers' self masks (3 shares needed).
    # The round stays open; w3 comes back (a fresh process, same name) and the retry succeeds.
    restarted = numpy_worker(chief, "w3")
    for p in (procs["w1"], procs["w2"], restarted):
        code, out = finish(p, 120)
        assert code == 0, out
    assert chief.wait(60) == 0, chief.output()
    log = chief.output()
    assert "secure aggregation attempt 1 failed" in log and "starts over with fresh keys" in log
    rows = rows_of(chief.state_dir)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert [r["workers"] for r in rows] == [4, 3, 3]
    assert rows[1]["secure_agg"]["attempt"] == 2
    ref = expected(examples, [names, names[:3], names[:3]])
    final = np.load(chief.state_dir / "final_weights.npz")
    np.testing.assert_allclose(final[final.files[0]], ref, atol=tolerance(ref, 3), rtol=0)


def test_digits_run_with_secure_aggregation_averages_what_the_workers_sent(tmp_path, chiefs, digits):
    chief = chiefs("--model", "fedsock.models:digits_mlp", "--eval-data", str(digits / "holdout"),
                   "--rounds", "2", "--min-workers", "2", "--sync-every", "7", "--batch-size", "16",
                   "--secure-agg")
    workers = [
        start_worker(tmp_path, f"w{i}", "--chief", chief.address, "--data", str(digits / f"worker-{i}"),
                     "--name", f"w{i}", "--save-updates", str(tmp_path / f"sent-{i}"), token=chief.token_for(f"w{i}"))
        for i in range(2)
    ]
    for w in workers:
        code, out = finish(w)
        assert code == 0, out
    assert chief.wait(60) == 0, chief.output()
    rows = rows_of(chief.state_dir)
    assert [r["round"] for r in rows] == [1, 2] and all(0 < r["accuracy"] <= 1 for r in rows)
    sent = [np.load(tmp_path / f"sent-{i}" / "round-000002.npz") for i in range(2)]
    ns = np.array([int(s["num_examples"]) for s in sent], dtype=np.float64)
    assert rows[-1]["examples"] == ns.sum()
    final = np.load(chief.state_dir / "final_weights.npz")
    for i, key in enumerate(sorted(final.files)):
        ref = sum(n * s[f"w{i:04d}"].astype(np.float64) for n, s in zip(ns, sent)) / ns.sum()
        np.testing.assert_allclose(final[key], ref, atol=tolerance(ref), rtol=0)


def test_unsound_combinations_are_refused_at_start(tmp_path):
    for extra, words in ((["--strategy", "median"], "needs every worker's own update"),
                         (["--compress", "fp16"], "do not compress"),
                         (["--min-workers", "1"], "--min-workers 2")):
        proc = subprocess.run([sys.executable, str(ROOT / "chief.py"), "--state-dir", str(tmp_path / "s"),
                               "--secure-agg", *extra], capture_output=True, text=True, env=env(), timeout=60)
        assert proc.returncode != 0 and words in proc.stderr + proc.stdout, proc.stderr


def test_chief_killed_mid_run_resumes_and_workers_start_the_secure_round_over(tmp_path):
    from tests.test_failures import free_port, wait_for

    port = free_port()
    state = tmp_path / "chief"
    cmd = [sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", str(port), "--state-dir",
           str(state), "--rounds", "6", "--min-workers", "3", "--secure-agg", "--progress", "plain"]
    log = open(tmp_path / "chief.log", "ab")
    chief = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env())
    wait_for(lambda: (state / "chief.addr").exists(), 90, "the chief to listen")

    class Addr:
        address = f"127.0.0.1:{port}"
        state_dir = state

    names = ["w1", "w2", "w3"]
    examples = {"w1": 10, "w2": 20, "w3": 30}
    procs = [numpy_worker(Addr, n, "--examples", str(examples[n])) for n in names]
    rows_path = state / "metrics.jsonl"
    wait_for(lambda: rows_path.exists() and len(rows_path.read_text().splitlines()) >= 2, 120, "round 2")
    chief.kill()
    chief.wait()
    (state / "chief.addr").unlink()
    chief = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env())
    for p in procs:
        code, out = finish(p, 180)
        assert code == 0, out
    assert chief.wait(60) == 0, (tmp_path / "chief.log").read_text()
    rows = rows_of(state)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    ref = expected(examples, [names] * 6)
    final = np.load(state / "final_weights.npz")
    np.testing.assert_allclose(final[final.files[0]], ref, atol=tolerance(ref, 6), rtol=0)


def test_secure_aggregation_with_dp_noise_added_by_the_workers(chiefs):
    """Each worker clips to C and adds N(0, (zC)^2 / min_survivors); the chief adds none.

    The unmasked mean therefore differs from the mean of the clipped steps by noise
    of std zC / K per element (K = 3 = min_survivors), and epsilon is reported."""
    from fedsock.aggregation.accounting import epsilon
    from fedsock.aggregation.dp import clip_update

    clip, z = 0.5, 1.0
    chief = chiefs("--rounds", "1", "--min-workers", "3", "--secure-agg", "--dp-clip", str(clip),
                   "--dp-noise", str(z))
    examples = {"a": 10, "b": 25, "c": 40}
    finals = run_clients(chief.address, chief.token_for, examples, shape=SHAPE)
    assert chief.wait(60) == 0, chief.output()
    zero = [np.zeros(SHAPE, np.float32)]
    clipped = [clip_update([step_for(n, 1, [SHAPE])[0]], zero, clip)[0][0].astype(np.float64) for n in examples]
    noise = finals["a"].astype(np.float64) - sum(clipped) / 3  # equal weights under DP
    assert abs(float(noise.mean())) < 4 * z * clip / 3 / np.sqrt(noise.size)
    assert abs(float(noise.std()) / (z * clip / 3) - 1) < 0.15, noise.std()
    row = rows_of(chief.state_dir)[0]
    assert row["examples"] == 3  # the summed weight: 1 per worker
    assert row["epsilon"] == pytest.approx(epsilon(1, z, 1.0, 1e-5), rel=1e-9)
    assert "the workers add the noise" in chief.output()


def test_secure_aggregation_with_client_sampling(chiefs):
    chief = chiefs("--rounds", "5", "--min-workers", "2", "--secure-agg", "--fraction", "0.5", "--seed", "3")
    finals = run_clients(chief.address, chief.token_for, {"a": 10, "b": 20, "c": 35, "d": 5}, shape=SHAPE)
    assert chief.wait(60) == 0, chief.output()
    rows = rows_of(chief.state_dir)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["workers"] == 2 and r["sampled"] == 2 for r in rows)  # only the sampled are in the sum
    assert len({tuple(r["participants"]) for r in rows}) > 1
    final = np.load(chief.state_dir / "final_weights.npz")
    assert all(np.array_equal(w, final[final.files[0]]) for w in finals.values())


def test_a_plain_update_is_refused_and_a_nan_worker_drops_out_without_costing_the_round(chiefs):
    """Under secure aggregation the chief refuses a plain Update (out_of_order); a worker whose
    update holds NaN stops with a clear error after sharing, and the others' round completes."""
    from dataclasses import replace

    import fedsock
    from fedsock.errors import FedsockError, PeerError

    chief = chiefs("--rounds", "1", "--min-workers", "2", "--secure-agg")
    with fedsock.Client(chief.address, token=chief.token_for("plain"), name="plain", reconnect_timeout=0) as c:
        c.join([np.zeros(SHAPE, np.float32)])
        c.plan = replace(c.plan, secure_agg=False)  # a worker that ignores the plan
        with pytest.raises(PeerError) as err:
            c.sync([np.ones(SHAPE, np.float32)], num_examples=1)
        assert err.value.code == "out_of_order" and "SecAggKeys" in str(err.value)

    results: dict[str, object] = {}
    tokens = {name: chief.token_for(name) for name in ("a", "b", "nan")}
    joined = threading.Barrier(3)  # all three are in the round before any sends its keys

    def work(name: str, value: float) -> None:
        try:
            with fedsock.Client(chief.address, token=tokens[name], name=name, reconnect_timeout=0) as c:
                w = c.join([np.zeros(SHAPE, np.float32)])
                joined.wait(30)
                results[name] = c.sync([w[0] + value], num_examples=10)[0]
        except FedsockError as exc:
            results[name] = exc

    threads = [threading.Thread(target=work, args=a) for a in (("a", 1.0), ("b", 3.0), ("nan", np.nan))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(results["nan"], FedsockError) and "NaN" in str(results["nan"])
    np.testing.assert_allclose(results["a"], np.full(SHAPE, 2.0), atol=tolerance(np.full(SHAPE, 2.0)))
    assert chief.wait(60) == 0, chief.output()
    row = rows_of(chief.state_dir)[0]
    assert row["workers"] == 2 and row["secure_agg"]["dropped"] == 1
