"""Attacks on a live chief, each a real-process test (docs/security.md, "Attacks and defences").

The chief and the honest workers are subprocesses on 127.0.0.1 (TensorFlow-free
numpy workers, bring-your-own-model chief); the attacker is
``fedsock.testing.attacker`` in this process. Where an attacker plays "another
machine" it connects from another loopback address (127.0.0.2, ...), so the
per-address limits that stop it must not lock out the honest workers on
127.0.0.1. Each test checks that the honest workers keep finishing rounds,
that the chief's peak RSS stays within its documented bound where the attack
is about memory, and that what a user reads says what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fedsock import limits
from fedsock.errors import FedsockError
from fedsock.protocol import (
    Challenge,
    ConnectionClosed,
    Error,
    Global,
    Kind,
    TensorSpec,
    Update,
    Welcome,
    frames,
    iter_chunks,
    message_bytes,
    specs_of,
)
from fedsock.testing.attacker import Hostile, IdleFlood, announce_frame, stale_update
from tests.conftest import ROOT, env

pytestmark = pytest.mark.integration

#: The chief's documented memory bound: "300 MiB + 3 x the model" (README.md, the
#: performance table and the paragraph after it; docs/security.md, "What a hostile
#: client gets").
RSS_BASE_MIB = 300
NUMPY_WORKER = "fedsock/testing/numpy_worker.py"
#: Chief flags shared by these tests: a run that does not end by itself, quick
#: rounds, frequent heartbeats (tests that need short idle deadlines set them).
FAST = ("--rounds", "1000000", "--round-timeout", "1", "--heartbeat-interval", "1", "--progress", "plain")


@dataclass
class Proc:
    """A subprocess whose output goes to a file (never a pipe nobody reads)."""

    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log.stem} still running after {timeout} s:\n{self.output()[-3000:]}") from None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@pytest.fixture
def procs(tmp_path):
    """``spawn(label, script, *args, token=...)``: start a process; all are killed at the end."""
    started: list[Proc] = []

    def spawn(label: str, script: str, *args: str, token: str | None = None) -> Proc:
        e = env()
        if token is not None:
            e["FEDSOCK_TOKEN"] = token
        log = tmp_path / f"{label}.log"
        p = Proc(subprocess.Popen([sys.executable, str(ROOT / script), *args], stdout=open(log, "wb"),
                                  stderr=subprocess.STDOUT, env=e, cwd=tmp_path), log)
        started.append(p)
        return p

    yield spawn
    for p in started:
        p.stop()


def honest(procs, chief, name: str, *args: str) -> Proc:
    return procs(name, NUMPY_WORKER, "--chief", chief.address, "--name", name, "--heartbeat-interval", "1",
                 *args, token=chief.token)


def rows(chief) -> list[dict]:
    """The chief's metrics.jsonl rows so far (one per closed round)."""
    path = chief.state_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


def wait_rounds(chief, n: int, names: tuple[str, ...] = (), timeout: float = 45.0) -> list[dict]:
    """Wait until ``n`` more rounds closed with every one of ``names`` taking part; return them."""
    start = len(rows(chief))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [r for r in rows(chief)[start:] if set(names) <= set(r.get("participants", []))]
        if len(new) >= n:
            return new
        assert chief.proc.poll() is None, f"chief exited ({chief.proc.returncode}):\n{chief.output()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} rounds with {names} in {timeout} s:\n{chief.output()[-3000:]}")


def rounds_in(chief, seconds: float) -> list[dict]:
    """The rounds that close during the next ``seconds``."""
    start = len(rows(chief))
    time.sleep(seconds)
    return rows(chief)[start:]


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def observe_global(chief, name: str = "observer") -> list[np.ndarray]:
    """The chief's current global model, read by joining under a fresh name."""
    h = Hostile(chief.address, chief.token)
    try:
        welcome = h.join(name)
        assert isinstance(welcome, Welcome), welcome
        return h.weights
    finally:
        h.close()


# --- 1. duplicate names ------------------------------------------------------------


def test_duplicate_names_refused_without_eviction_loop(tmp_path, chiefs, procs):
    from fedsock.data import save_shard

    idle = "6"
    chief = chiefs(*FAST, "--min-workers", "1", "--idle-timeout", idle)
    first = honest(procs, chief, "dup", "--idle-timeout", idle, "--work", "0.05")
    wait_rounds(chief, 3, ("dup",))
    # the same --name again: a second numpy worker that keeps retrying, and worker.py as a user starts it
    save_shard(tmp_path / "shard", np.zeros((20, 64), np.float32), np.zeros(20, np.int64))
    second = honest(procs, chief, "dup", "--idle-timeout", idle, "--reconnect-timeout", "60")
    cli = procs("worker-cli", "worker.py", "--chief", chief.address, "--name", "dup", "--data",
                str(tmp_path / "shard"), "--idle-timeout", idle, "--heartbeat-interval", "1",
                "--connect-timeout", "3", token=chief.token)
    progress_from = len(rows(chief))
    t0 = time.monotonic()
    # worker.py retries until the old connection would have timed out, then gives up saying what to do
    assert cli.wait(45) == 2, cli.output()
    waited = time.monotonic() - t0
    out = cli.output()
    assert "in use" in out and "--name" in out, out[-2000:]
    assert waited >= float(idle) - 1, f"gave up after {waited:.1f} s, before the name could have been freed"
    assert "refused the name 'dup'" in second.output(), second.output()[-2000:]  # refused too, not admitted
    # the run went on meanwhile, with the first worker, and nobody was evicted over and over
    assert first.popen.poll() is None, first.output()[-2000:]
    during = [r for r in rows(chief)[progress_from:] if "dup" in r["participants"]]
    assert len(during) >= 5, f"{len(during)} rounds in {waited:.0f} s of duplicate names"
    wait_rounds(chief, 3, ("dup",))
    evictions = chief.output().count("(dup) reconnected from")  # the chief's line for a replaced connection
    assert evictions <= 3, f"{evictions} evictions: the two workers evict each other"
    # Ctrl-C on the chief ends it within seconds
    t0 = time.monotonic()
    chief.proc.send_signal(signal.SIGINT)
    chief.wait(15)
    assert time.monotonic() - t0 < 15


# --- 2. stale-update amplification --------------------------------------------------

AMP_CONNECTIONS = 32  # each under its own name, from 127.0.0.2
AMP_STALE_EACH = 16  # stale updates each connection sends in one write, not waiting for answers
AMP_SHAPE = (256, 1024)  # a 1 MiB float32 model: each Global ~10,000 x a stale update's size


def test_stale_updates_amplify_nothing(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "2", "--idle-timeout", "30", "--compress", "topk:0.1")
    shape = ",".join(map(str, AMP_SHAPE))
    workers = [honest(procs, chief, f"honest-{i}", "--shape", shape, "--work", "0.05", "--idle-timeout", "30")
               for i in range(2)]
    names = ("honest-0", "honest-1")
    wait_rounds(chief, 3, names)
    before = rounds_in(chief, 6)
    assert len(before) >= 4, f"only {len(before)} rounds in 6 s before the attack"

    attackers: list[Hostile] = []
    stale_bytes = 0
    for i in range(AMP_CONNECTIONS):
        h = Hostile(chief.address, chief.token, source="127.0.0.2", rcvbuf=64 * 1024)
        welcome = h.join(f"amp-{i}")
        assert isinstance(welcome, Welcome), welcome
        assert welcome.round >= 1
        attackers.append(h)
    for h in attackers:  # then each stops reading
        assert h.welcome is not None
        h.received = 0
        stale_bytes += h.send_all([stale_update(h.welcome.tensors, h.welcome.round)] * AMP_STALE_EACH)
    assert stale_bytes / (AMP_CONNECTIONS * AMP_STALE_EACH) < 200  # ~100 bytes each

    during = rounds_in(chief, 15)
    with_both = [r for r in during if set(names) <= set(r["participants"])]
    assert len(with_both) >= 5, (f"{len(with_both)} rounds in 15 s under attack (before: {len(before)} in 6 s)\n"
                                 + chief.output()[-3000:])
    assert all(w.popen.poll() is None for w in workers)
    assert not any(p.startswith("amp-") for r in during for p in r["participants"])

    with ThreadPoolExecutor(len(attackers)) as pool:  # now read what the chief sent
        events = list(pool.map(lambda h: h.drain(quiet=3.0, limit=60.0), attackers))
    global_bytes = message_bytes(Global(0, attackers[0].welcome.tensors), attackers[0].weights)  # type: ignore[union-attr]
    for evs in events:
        replies = [ev.round for ev in evs if isinstance(ev, Global)]
        assert len(replies) <= 3, f"{len(replies)} Globals for {AMP_STALE_EACH} stale updates"
        assert len(set(replies)) == len(replies), f"more than one Global per round: rounds {replies}"
    received = sum(h.received for h in attackers)
    bound = AMP_CONNECTIONS * (3 * global_bytes + 256 * 1024)
    assert received <= bound, (f"the chief sent {received / 2**20:.0f} MiB for {stale_bytes} bytes of stale "
                               f"updates (x{received / stale_bytes:,.0f})")
    for h in attackers:
        h.close()
    model_mib = global_bytes / 2**20
    assert peak_rss_mib(chief.proc.pid) <= RSS_BASE_MIB + 3 * model_mib
    wait_rounds(chief, 3, names)


def test_encoded_update_refused_unless_compression_was_asked(chiefs):
    chief = chiefs(*FAST, "--min-workers", "1")  # no --compress
    h = Hostile(chief.address, chief.token)
    welcome = h.join("squeezer")
    assert isinstance(welcome, Welcome) and not welcome.tensors  # bring your own model: propose one
    w = [np.zeros((8, 4), np.float32)]
    h.send(Update(0, 0, specs_of(w)), w)
    assert isinstance(h.answer(timeout=10), Global)
    h.send(stale_update(specs_of(w), 1))  # topk, k = 0: an encoding this chief never announced
    err = h.error()
    assert err is not None and err.code == "bad_message", err
    assert "compression" in err.message, err.message
    h.close()


# --- 3. pre-authentication slots and buffers ---------------------------------------


def test_idle_connections_from_one_address_do_not_lock_out_others(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "1")
    with IdleFlood(chief.address, count=70, source="127.0.0.2", max_rate=300) as flood:
        deadline = time.monotonic() + 10
        while flood.opened < 70 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flood.opened >= 70, f"the flood opened only {flood.opened} connections"
        time.sleep(1)  # those over a cap are being dropped and reopened
        late = honest(procs, chief, "late", "--work", "0.05")
        wait_rounds(chief, 3, ("late",), timeout=30)  # it got in, within a bound
        assert late.popen.poll() is None, late.output()[-2000:]
        assert flood.dropped > 0 and flood.opened > 70  # the chief drops them and they come back


PREAUTH_CONNECTIONS = 32
#: 8 connections from each address (within its pre-authentication cap), 4 from each thread.
PREAUTH_SOURCES = ("127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13") * 2


def test_big_frames_before_auth_refused_at_the_header(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "1")
    honest(procs, chief, "steady", "--work", "0.05")
    wait_rounds(chief, 3, ("steady",))

    def flood(source: str) -> list[tuple[Hostile, Error | None]]:
        return [announce_frame(chief.address, limits.MAX_FRAME_BYTES, source=source, answer_within=1.0)
                for _ in range(PREAUTH_CONNECTIONS // len(PREAUTH_SOURCES))]

    with ThreadPoolExecutor(len(PREAUTH_SOURCES)) as pool:
        results = [r for batch in pool.map(flood, PREAUTH_SOURCES) for r in batch]
    peak = peak_rss_mib(chief.proc.pid)  # all 32 still open
    codes = [err.code if err is not None else None for _, err in results]
    for h, _ in results:
        h.close()
    assert peak <= RSS_BASE_MIB, f"chief peak RSS {peak:.0f} MiB with {PREAUTH_CONNECTIONS} big frames announced"
    assert codes == ["frame_too_large"] * PREAUTH_CONNECTIONS, codes
    wait_rounds(chief, 3, ("steady",))


POSTAUTH_CONNECTIONS = 24  # all from one address, each under its own name (the shared token)


def _announce_all(hostiles: list[Hostile], kind: Kind, nbytes: int) -> list[Error | None]:
    with ThreadPoolExecutor(len(hostiles)) as pool:
        return list(pool.map(lambda h: h.announce(kind, nbytes, answer_within=1.0), hostiles))


def _joined(chief, count: int, prefix: str, sources: tuple[str, ...]) -> list[Hostile]:
    out = []
    for i in range(count):
        h = Hostile(chief.address, chief.token, source=sources[i % len(sources)], timeout=10.0)
        assert isinstance(h.join(f"{prefix}-{i}"), Welcome)
        out.append(h)
    return out


def test_big_frames_after_auth_refused_at_the_header(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "1")
    honest(procs, chief, "steady", "--work", "0.05")
    wait_rounds(chief, 3, ("steady",))
    hostiles = _joined(chief, POSTAUTH_CONNECTIONS, "big", ("127.0.0.20",))
    # a Heartbeat of 16 MiB, and an Update header larger than any legitimate one
    errors = (_announce_all(hostiles[::2], Kind.HEARTBEAT, limits.MAX_FRAME_BYTES)
              + _announce_all(hostiles[1::2], Kind.UPDATE, limits.MAX_WORKER_MESSAGE_BYTES + 1))
    peak = peak_rss_mib(chief.proc.pid)
    for h in hostiles:
        h.close()
    assert peak <= RSS_BASE_MIB, f"chief peak RSS {peak:.0f} MiB with {POSTAUTH_CONNECTIONS} big frames announced"
    codes = [err.code if err is not None else None for err in errors]
    assert codes == ["frame_too_large"] * POSTAUTH_CONNECTIONS, codes
    wait_rounds(chief, 3, ("steady",))


#: Frames as large as a worker's message may be, from more connections than the budget for
#: partly received frames can hold: 40 x 8 MiB would be 320 MiB buffered.
BUDGET_CONNECTIONS = 40


def test_partly_received_frames_share_a_byte_budget(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "1")
    honest(procs, chief, "steady", "--work", "0.05")
    wait_rounds(chief, 3, ("steady",))
    hostiles = _joined(chief, BUDGET_CONNECTIONS, "fat", ("127.0.0.21", "127.0.0.22"))
    errors = _announce_all(hostiles, Kind.UPDATE, limits.MAX_WORKER_MESSAGE_BYTES)
    during = rounds_in(chief, 3)  # all of them are still open, their frames unfinished
    peak = peak_rss_mib(chief.proc.pid)
    for h in hostiles:
        h.close()
    assert all(err is None for err in errors), errors  # within the cap: not refused, just not buffered at once
    assert peak <= RSS_BASE_MIB, f"chief peak RSS {peak:.0f} MiB with {BUDGET_CONNECTIONS} frames held open"
    assert len([r for r in during if "steady" in r["participants"]]) >= 3, during
    wait_rounds(chief, 3, ("steady",))


#: An 8 MiB float32 model: a Welcome a connection does not read blocks its send.
STALL_SHAPE = "2048,1024"


def test_stuck_connections_from_a_workers_address_do_not_stall_its_rounds(chiefs, procs):
    # A shared NAT: the attacker's connections come from the honest worker's own address.
    chief = chiefs(*FAST, "--min-workers", "1", "--idle-timeout", "30")
    honest(procs, chief, "natted", "--shape", STALL_SHAPE, "--idle-timeout", "30")
    wait_rounds(chief, 3, ("natted",))
    before = rounds_in(chief, 5)
    assert len(before) >= 5, f"only {len(before)} rounds in 5 s before the attack"
    stuck = []
    for i in range(limits.MAX_SENDS_PER_ADDRESS):  # every send slot of 127.0.0.1 for replies
        h = Hostile(chief.address, chief.token, source="127.0.0.1", rcvbuf=64 * 1024)
        assert h.authenticate(f"stuck-{i}") is None  # and never reads its Welcome
        stuck.append(h)
    time.sleep(1)
    during = [r for r in rounds_in(chief, 10) if "natted" in r["participants"]]
    for h in stuck:
        h.close()
    assert len(during) >= len(before), (f"{len(during)} rounds in 10 s with {len(stuck)} stuck connections "
                                        f"from the worker's address (before: {len(before)} in 5 s)")
    wait_rounds(chief, 3, ("natted",))


def test_a_welcome_nobody_reads_is_dropped_at_the_send_timeout(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "1", "--idle-timeout", "60", "--send-timeout", "2")
    honest(procs, chief, "reader", "--shape", STALL_SHAPE)
    wait_rounds(chief, 2, ("reader",))
    h = Hostile(chief.address, chief.token, rcvbuf=64 * 1024)
    t0 = time.monotonic()
    assert h.authenticate("nonreader") is None  # its 8 MiB Welcome is never read
    while "(nonreader): Welcome not sent within the send timeout (2 s)" not in chief.output():
        assert time.monotonic() - t0 < 20, chief.output()[-3000:]
        time.sleep(0.1)
    assert time.monotonic() - t0 < 10  # --send-timeout, not --idle-timeout (60 s)
    h.close()
    wait_rounds(chief, 2, ("reader",))


# --- 4. names are identities -------------------------------------------------------


def test_name_takeover_refused_and_victim_keeps_training(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "2", "--idle-timeout", "30")
    victim = honest(procs, chief, "victim", "--work", "0.05", "--idle-timeout", "30")
    honest(procs, chief, "bystander", "--work", "0.05", "--idle-timeout", "30")
    names = ("victim", "bystander")
    wait_rounds(chief, 3, names)
    start = len(rows(chief))
    answers = []
    for resume in (None, os.urandom(limits.MAC_BYTES)):  # no proof, and a forged one
        h = Hostile(chief.address, chief.token)  # holds the shared token, not the victim's secret
        ev = h.join("victim", resume=resume)
        if isinstance(ev, Welcome):  # taken over: the attacker's update would count as the victim's
            h.send(Update(ev.round + 1, 10, ev.tensors), [np.full(s.shape, 1000.0, np.float32) for s in ev.tensors])
            with contextlib.suppress(FedsockError, OSError):  # the victim may evict it back meanwhile
                h.answer(timeout=10)
        h.close()
        answers.append(ev)
    after = wait_rounds(chief, 5, names)
    assert max(float(np.abs(w).max()) for w in observe_global(chief)) < 100, "the attacker's update counted"
    for ev in answers:
        assert isinstance(ev, Error) and ev.code == "name_in_use", ev
        assert "victim" in ev.message and "--name" in ev.message, ev.message
    assert all(set(r["participants"]) <= set(names) for r in rows(chief)[start:])
    assert victim.popen.poll() is None
    assert "(victim) reconnected from" not in chief.output(), "the victim's connection was replaced"
    assert after[-1]["workers"] == 2


def test_name_with_newline_and_escapes_refused(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "1")
    honest(procs, chief, "plain", "--work", "0.05")
    wait_rounds(chief, 2, ("plain",))
    forged = "INFO worker 7 (admin) joined from 10.0.0.1"
    evil = f"x\n{forged}\x1b[2K\x1b[1A"  # within the 64-byte name limit: refused for its characters
    h = Hostile(chief.address, chief.token)
    ev = h.hello(evil)
    h.close()
    assert isinstance(ev, Error) and ev.code == "bad_message", ev
    time.sleep(0.5)
    raw = chief.log.read_bytes()
    assert b"\x1b" not in raw, "an escape sequence from a name reached the chief's log"
    lines = raw.decode(errors="replace").splitlines()
    assert not any(line.startswith(forged) for line in lines), "a name's newline forged a line in the chief's log"
    wait_rounds(chief, 2, ("plain",))


def test_a_trickled_update_is_cut_at_the_minimum_upload_rate(chiefs, procs):
    # An authenticated worker sends its update a few bytes at a time, each just inside the idle
    # timeout: without a rate it would hold its staging room (which others' updates may wait
    # for) for as long as it likes.
    chief = chiefs(*FAST, "--min-workers", "1", "--idle-timeout", "3")
    honest(procs, chief, "prompt", "--shape", "512,512", "--idle-timeout", "3")  # a 1 MiB model
    wait_rounds(chief, 2, ("prompt",))
    h = Hostile(chief.address, chief.token)
    welcome = h.join("trickler")
    assert isinstance(welcome, Welcome), welcome
    mine = [np.zeros(t.shape, np.float32) for t in welcome.tensors]
    data = h.conn.send(Update(welcome.round + 1, 1, welcome.tensors)) + b"".join(
        h.conn.send(c) for c in iter_chunks(mine))
    allowed = 3 + sum(t.nbytes for t in mine) / limits.MIN_UPLOAD_BYTES_PER_S  # 7 s
    start = len(rows(chief))
    h.send_raw(data[:65536])
    t0, sent, answer = time.monotonic(), 65536, None
    while answer is None and time.monotonic() - t0 < 4 * allowed:
        try:
            ev = h.next(timeout=0.5)  # 1 KiB/s: far below the minimum, far inside the idle timeout
            answer = ev if isinstance(ev, Error | ConnectionClosed) else None
        except TimeoutError:
            with contextlib.suppress(OSError):
                sent += h.send_raw(data[sent:sent + 512])
    took = time.monotonic() - t0
    h.close()
    assert isinstance(answer, Error) and answer.code == "timeout", answer
    assert "MIN_UPLOAD_BYTES_PER_S" in answer.message and "256 KiB/s" in answer.message, answer.message
    assert allowed - 1 < took < allowed + 4, f"cut after {took:.1f} s (allowed {allowed:.1f} s)"
    assert sent < len(data) // 4  # it was nowhere near done
    during = [r for r in rows(chief)[start:] if "prompt" in r["participants"]]
    assert len(during) >= 3, f"{len(during)} rounds of the honest worker while the update trickled"
    assert "Traceback" not in chief.output()
    wait_rounds(chief, 2, ("prompt",))


def _cannot_allocate(nbytes: int) -> bool:
    """Whether this machine refuses one allocation of ``nbytes`` outright (heuristic overcommit,
    less memory and swap than that), as the test below needs."""
    mem = Path("/proc/meminfo").read_text()
    kib = sum(int(re.search(rf"{k}:\s+(\d+) kB", mem).group(1)) for k in ("MemTotal", "SwapTotal"))  # type: ignore[union-attr]
    return Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "0" and kib * 1024 < nbytes


HUGE_PROPOSAL = tuple(TensorSpec(f"t{i}", "float64", (2**31,)) for i in range(4))  # 64 GiB, MAX_MODEL_BYTES


@pytest.mark.skipif(not _cannot_allocate(sum(t.nbytes for t in HUGE_PROPOSAL)),
                    reason="this machine would lend 64 GiB of address space without complaint")
def test_a_proposal_the_chief_cannot_allocate_is_refused_and_frees_its_room(chiefs, procs):
    # A chief without --model takes its model from the first worker's proposal: a token holder
    # proposes the largest model the protocol allows, more than the machine has.
    chief = chiefs(*FAST, "--min-workers", "1")
    h = Hostile(chief.address, chief.token)
    assert isinstance(h.join("mallory"), Welcome)
    h.send(Update(round=0, num_examples=1, tensors=HUGE_PROPOSAL))
    answer = h.error(timeout=10)
    h.close()
    assert answer is not None and answer.code == "limit_exceeded", answer
    assert "cannot allocate" in answer.message and "--model" in answer.message, answer.message
    honest(procs, chief, "proposer")  # its own proposal is staged: the room was given back
    wait_rounds(chief, 3, ("proposer",))
    assert "Traceback" not in chief.output()


FORGED = "bye\n12:00:00 fedsock.chief INFO worker 1 (alice) disconnected\x1b[31m\x1d]0;pwned\x07"


def test_connections_that_give_up_before_auth_keep_their_slot_until_closed(chiefs, procs):
    # No token: TLS, Hello, then an Error instead of Auth (its text a forged log line and terminal
    # escapes), the socket kept open. Each such connection used to leave its pre-authentication
    # slot at once while the chief drained it: thousands piled up (fds, buffers), and at an
    # open-file limit of 1024 the chief stopped.
    chief = chiefs(*FAST, "--min-workers", "1")
    honest(procs, chief, "steady", "--work", "0.05")
    wait_rounds(chief, 3, ("steady",))
    fd_dir = Path(f"/proc/{chief.proc.pid}/fd")
    base_fds, start = len(os.listdir(fd_dir)), len(rows(chief))
    stop = time.monotonic() + 6
    held: list[Hostile] = []

    def give_up() -> int:
        n = 0
        while time.monotonic() < stop:
            try:
                h = Hostile(chief.address, None, source="127.0.0.2", timeout=3)
                held.append(h)
                if isinstance(h.hello("x"), Challenge):
                    h.send_raw(h.conn.send(Error(code="internal", message=FORGED)))
                    n += 1
            except (OSError, TimeoutError):
                time.sleep(0.05)
        return n

    most = 0
    with ThreadPoolExecutor(6) as pool:
        runs = [pool.submit(give_up) for _ in range(6)]
        while not all(r.done() for r in runs):
            with contextlib.suppress(FileNotFoundError):
                most = max(most, len(os.listdir(fd_dir)))
            time.sleep(0.05)
    gave_up = sum(r.result() for r in runs)
    during = [r for r in rows(chief)[start:] if "steady" in r["participants"]]
    for h in held:
        h.close()
    assert gave_up >= 1
    assert most <= base_fds + limits.MAX_UNAUTHENTICATED_PER_ADDRESS + 4, (most, base_fds, gave_up)
    log_text = chief.output()
    assert "\x1b" not in log_text and "\x07" not in log_text
    assert not any(line.startswith("12:00:00 fedsock.chief") for line in log_text.splitlines())
    assert "gave up during the handshake: bye\\n12:00:00" in log_text  # escaped, on its own line
    assert len(during) >= 3
    wait_rounds(chief, 3, ("steady",))


def test_a_body_of_millions_of_tiny_values_is_refused_as_it_is_decoded(chiefs, procs):
    # A token holder's Heartbeat within MAX_WORKER_MESSAGE_BYTES: 8 million empty arrays, one
    # byte each, which decoded whole took the chief to about 650 MiB and 5 s of its event loop.
    chief = chiefs(*FAST, "--min-workers", "1")
    honest(procs, chief, "steady", "--work", "0.05")
    wait_rounds(chief, 3, ("steady",))
    h = Hostile(chief.address, chief.token)
    assert isinstance(h.join("bomber"), Welcome)
    body = msgpack.packb({"x": [[[]] * 80] * 100_000})
    assert len(body) <= limits.MAX_WORKER_MESSAGE_BYTES
    t0 = time.monotonic()
    h.send_raw(frames.encode_header(Kind.HEARTBEAT, len(body)) + body)
    answer = h.error(timeout=20)
    took = time.monotonic() - t0
    h.close()
    assert answer is not None and answer.code == "limit_exceeded", answer
    assert "max_body_items" in answer.message
    assert took < 3, f"refused after {took:.1f} s"
    assert peak_rss_mib(chief.proc.pid) <= RSS_BASE_MIB
    wait_rounds(chief, 3, ("steady",))


# --- 5. num_examples -------------------------------------------------------------------


def test_huge_num_examples_refused(chiefs, procs):
    chief = chiefs(*FAST, "--min-workers", "1", "--round-timeout", "5")
    honest(procs, chief, "modest", "--work", "0.5")
    wait_rounds(chief, 2, ("modest",))
    h = Hostile(chief.address, chief.token)
    welcome = h.join("greedy")
    assert isinstance(welcome, Welcome), welcome
    mine = [np.full(s.shape, 7.0, np.float32) for s in welcome.tensors]
    h.send(Update(welcome.round + 1, 2**63 - 1, welcome.tensors), mine)  # for the round being collected
    answer = h.answer(timeout=20)
    h.close()
    wait_rounds(chief, 2, ("modest",))
    # the honest worker's weights drift from 0 by small steps; the attacker's are all 7.0
    drift = max(float(np.abs(g).mean()) for g in observe_global(chief))
    assert drift < 3.5, f"the global model moved to the attacker's weights (mean |w| = {drift:.2f})"
    assert isinstance(answer, Error) and answer.code == "limit_exceeded", answer
    assert "--max-examples" in answer.message, answer.message
    assert "greedy" not in {p for r in rows(chief) for p in r["participants"]}


# --- 6. the state dir is locked ------------------------------------------------------------


def test_second_chief_on_the_same_state_dir_exits(chiefs):
    first = chiefs("--rounds", "1000000", "--min-workers", "1")
    addr_file = first.state_dir / "chief.addr"
    before = addr_file.read_text()
    log = first.log.with_name("second-chief.log")
    second = subprocess.Popen(
        [sys.executable, str(ROOT / "chief.py"), "--host", "127.0.0.1", "--port", "0",
         "--state-dir", str(first.state_dir)],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env(), cwd=first.state_dir.parent)
    try:
        code = second.wait(20)
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait()
        raise AssertionError(f"a second chief runs on the same state dir:\n{log.read_text()[-2000:]}") from None
    out = log.read_text(errors="replace")
    assert code != 0, out
    assert str(first.proc.pid) in out, f"the message does not name the chief holding the lock:\n{out}"
    assert addr_file.read_text() == before
    assert first.proc.poll() is None
