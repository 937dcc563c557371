"""WorkerRegistry: membership and the one-live-connection-per-name rules, without sockets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fedsock import limits
from fedsock.chief.registry import Full, Joined, NameInUse, WorkerRegistry

IDLE = 60.0


@dataclass(eq=False)
class Conn:
    last_received: float = 0.0


def joined(verdict) -> Joined:
    assert isinstance(verdict, Joined), verdict
    return verdict


def test_a_free_name_joins_with_a_fresh_secret_and_a_stable_id():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    a = joined(reg.join("alice", b"i" * 16, Conn(0.0), proven=False, now=0.0))
    b = joined(reg.join("bob", b"j" * 16, Conn(0.0), proven=False, now=0.0))
    assert a.worker != b.worker and a.replaced is None
    assert len(a.secret) == limits.RECONNECT_SECRET_BYTES and a.secret != b.secret
    assert reg.reconnect_secret("alice") == a.secret and reg.worker_of("alice") == a.worker
    assert reg.label(a.worker) == f"worker {a.worker} (alice)" and reg.names([b.worker, a.worker]) == ["alice", "bob"]


def test_a_held_name_refuses_a_second_worker_without_evicting_the_first():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    first = Conn(10.0)
    a = joined(reg.join("n", b"1" * 16, first, proven=False, now=10.0))
    refused = reg.join("n", b"2" * 16, Conn(12.0), proven=False, now=12.0)
    assert isinstance(refused, NameInUse) and refused.wait_s == pytest.approx(IDLE - 2)
    assert "different --name" in refused.message and "wait 58 s" in refused.message
    assert reg.live == {a.worker: first} and reg.reconnect_secret("n") == a.secret  # untouched


def test_a_proven_reconnect_replaces_the_old_connection_and_gets_a_new_secret():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    old, new = Conn(5.0), Conn(6.0)
    a = joined(reg.join("n", b"1" * 16, old, proven=False, now=5.0))
    b = joined(reg.join("n", b"1" * 16, new, proven=True, now=6.0))
    assert b.worker == a.worker and b.replaced is old and b.secret != a.secret
    assert reg.live[a.worker] is new
    assert not reg.leave(a.worker, old)  # the old connection ending changes nothing
    assert reg.live[a.worker] is new


def test_a_live_name_is_free_once_silent_past_the_idle_timeout():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    stuck = Conn(0.0)
    a = joined(reg.join("n", b"1" * 16, stuck, proven=False, now=0.0))
    stuck.last_received = 30.0  # bytes keep the name held
    assert isinstance(reg.join("n", b"2" * 16, Conn(), proven=False, now=80.0), NameInUse)
    b = joined(reg.join("n", b"2" * 16, Conn(91.0), proven=False, now=91.0))  # 61 s of silence: free
    assert b.worker == a.worker and b.replaced is stuck


def test_a_name_whose_connection_ended_is_free_at_once_for_a_new_instance():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    old = Conn(10.0)
    a = joined(reg.join("n", b"1" * 16, old, proven=False, now=10.0))
    reg.hold(a.worker)
    assert reg.leave(a.worker, old) and reg.held_for("n", 10.5) == 0.0
    # a restarted process: another instance id, no reconnect proof, well within the idle timeout
    b = joined(reg.join("n", b"2" * 16, Conn(11.0), proven=False, now=11.0))
    assert b.worker == a.worker and b.replaced is None and b.secret != a.secret  # the same stable id
    assert reg.instance_of(b.worker) == b"2" * 16 and reg.reconnect_secret("n") == b.secret
    # and now it is live again, so a third instance is refused
    assert isinstance(reg.join("n", b"3" * 16, Conn(12.0), proven=False, now=12.0), NameInUse)


def test_names_from_a_checkpoint_keep_their_ids_but_are_not_held():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    reg.expect(["a", "b"], now=100.0)
    assert reg.reconnect_secret("a") is None and reg.held_for("a", 100.0) == 0.0
    wid = reg.worker_of("a")
    assert joined(reg.join("a", b"x" * 16, Conn(100.0), proven=False, now=100.0)).worker == wid
    assert reg.owed_done(since=50.0) == {reg.worker_of("b")}  # b was there before and has not come back


def test_the_worker_cap_counts_live_workers_and_lets_a_live_one_reconnect():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE, max_workers=1)
    a = joined(reg.join("a", b"", Conn(0.0), proven=False, now=0.0))
    assert isinstance(reg.join("b", b"", Conn(0.0), proven=False, now=0.0), Full)
    assert joined(reg.join("a", b"", Conn(1.0), proven=True, now=1.0)).worker == a.worker


def test_recipients_hold_the_unsampled_and_everyone_live_gets_the_final_model():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    ids = [joined(reg.join(n, b"", Conn(0.0), proven=False, now=0.0)).worker for n in "abc"]
    reg.hold(ids[2])
    assert reg.recipients([ids[0], ids[1]], lambda w: w != ids[1], final=False) == [ids[0], ids[2]]
    assert reg.held == {ids[1]}
    reg.leave(ids[1], reg.live[ids[1]])
    assert reg.held == set()
    assert reg.recipients([], lambda w: False, final=True) == [ids[0], ids[2]]


def test_stale_replies_are_capped_per_round_per_worker():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    answers = [reg.allow_stale_reply(1, round_=5) for _ in range(3)]
    assert answers == [True] * limits.MAX_STALE_REPLIES_PER_ROUND + [False] * (3 - limits.MAX_STALE_REPLIES_PER_ROUND)
    assert reg.allow_stale_reply(2, round_=5)  # per worker
    assert reg.allow_stale_reply(1, round_=6)  # per round


def test_done_workers_are_not_owed_the_final_model():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE)
    c = Conn(3.0)
    wid = joined(reg.join("a", b"", c, proven=False, now=0.0)).worker
    assert reg.owed_done(since=0.0) == set()  # connected: it gets Done from the fan-out
    reg.leave(wid, c)
    assert reg.owed_done(since=0.0) == {wid}
    reg.done(wid)
    assert reg.owed_done(since=0.0) == set()


def test_a_worker_dropped_for_silence_just_before_the_end_is_owed_the_final_model():
    """Found by bench/chaos.py: a stalled link made the chief drop a worker (silent for the idle
    timeout) just before the last round closed. Its last byte was an idle timeout old by then, so the
    chief did not count it as reconnecting, exited at once, and the worker retried a chief that was
    gone for its whole reconnect timeout. When the connection ended counts."""
    reg: WorkerRegistry[Conn] = WorkerRegistry(3.0)
    c = Conn(0.0)
    wid = joined(reg.join("a", b"", c, proven=False, now=0.0)).worker
    c.last_received = 27.0  # then the link stalls
    assert reg.leave(wid, c, now=30.0)  # dropped at 30 s, silent for 3 s
    finish = 30.5  # the last round closes; the chief waits for those that left since finish - idle
    assert reg.owed_done(since=finish - 3.0) == {wid}
    assert reg.owed_done(since=30.0) == set()  # it left before that


def test_a_worker_of_before_a_restart_is_owed_the_final_model_until_it_comes_back():
    """Found by bench/chaos.py: a restarted chief finished its last rounds before a worker still in its
    reconnect pauses came back; it did not wait for it, and the worker retried a chief that was gone."""
    reg: WorkerRegistry[Conn] = WorkerRegistry(3.0)
    reg.expect(["a", "b"], now=100.0)
    wid = joined(reg.join("a", b"", Conn(101.0), proven=False, now=101.0)).worker
    late = 100.0 + 3600  # however long the restarted run took
    assert reg.owed_done(since=late) == {reg.worker_of("b")}
    c = reg.live[wid]
    reg.leave(wid, c, now=102.0)
    assert reg.owed_done(since=late) == {reg.worker_of("b")}  # "a" came back: only the usual window


def test_a_done_on_a_connection_that_then_failed_is_owed_again():
    """Found by bench/chaos.py: the final model went into a stalled link (the write succeeded, the
    worker never read it); the chief counted it delivered, exited, and the worker retried a chief
    that was gone. A connection handed Done that fails instead of being closed leaves it owed."""
    reg: WorkerRegistry[Conn] = WorkerRegistry(3.0)
    c = Conn(0.0)
    wid = joined(reg.join("a", b"", c, proven=False, now=0.0)).worker
    reg.done(wid)
    reg.done_unconfirmed(wid)  # silent past the idle timeout after Done was written
    reg.leave(wid, c, now=10.0)
    assert reg.owed_done(since=5.0) == {wid}


def test_names_are_forgotten_beyond_the_cap_but_never_live_or_held_ones():
    reg: WorkerRegistry[Conn] = WorkerRegistry(IDLE, max_names=8)
    keep = joined(reg.join("live", b"", Conn(0.0), proven=False, now=0.0)).worker
    for i in range(40):  # each joins and leaves; long silent by the time the next comes
        now = 100.0 * (i + 1)
        c = Conn(now)
        wid = joined(reg.join(f"n{i}", b"", c, proven=False, now=now)).worker
        reg.leave(wid, c)
        reg.live[keep].last_received = now  # the live worker keeps talking
    assert len(reg._names) <= 8
    assert reg.worker_of("live") == keep and reg.name_of(keep) == "live"
    assert reg.worker_of("n39") is not None and reg.worker_of("n0") is None  # the least recently seen went
