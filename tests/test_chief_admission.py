"""Admission counters and send slots, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from fedsock import limits
from fedsock.chief.admission import BufferedFrames, FailureLimiter, PreAuthCounts, SendCounts
from fedsock.chief.intake import check_update
from fedsock.chief.sendslots import SendSlots
from fedsock.errors import RemoteProtocolError
from fedsock.protocol import TensorSpec
from fedsock.protocol.compression import Encoding


def test_preauth_connections_are_capped_per_address_and_in_all():
    c = PreAuthCounts(limit=5, per_address=2)
    for _ in range(2):
        assert c.refusal("10.0.0.1") is None
        c.enter("10.0.0.1")
    assert "from this address" in (c.refusal("10.0.0.1") or "")
    for addr in ("10.0.0.2", "10.0.0.2", "10.0.0.3"):
        assert c.refusal(addr) is None
        c.enter(addr)
    assert c.refusal("10.0.0.9") == "too many connections still in the handshake"
    c.leave("10.0.0.1")
    assert c.refusal("10.0.0.1") is None and c.of("10.0.0.1") == 1
    c.leave("10.0.0.1")
    assert c.of("10.0.0.1") == 0 and "10.0.0.1" not in c._by_address  # forgotten with its last connection


def test_failures_block_an_address_for_the_window():
    f = FailureLimiter(limit=2, window=60.0)
    f.failed("a", 0.0)
    assert not f.blocked("a", 1.0)
    f.failed("a", 1.0)
    assert f.blocked("a", 2.0) and not f.blocked("b", 2.0)
    assert not f.blocked("a", 61.0)


def test_send_counts_cap_in_all_per_address_and_per_worker():
    c = SendCounts(limit=3, per_address=2, per_worker=1)
    c.start("a", 1)
    assert not c.fits("a", 1) and c.fits("a", 2)
    c.start("a", 2)
    assert not c.fits("a", 3) and c.fits("b", 3)
    c.start("b", 3)
    assert not c.fits("c", 4)
    c.finish("a", 1)
    assert c.fits("a", 4) and c.total == 2


def test_fan_out_counts_have_no_per_address_cap_but_keep_the_per_worker_one():
    c = SendCounts(limit=16, per_address=None, per_worker=1)
    for w in range(16):  # sixteen workers behind one address, all at once
        assert c.fits("10.0.0.1", w)
        c.start("10.0.0.1", w)
    assert not c.fits("10.0.0.1", 99)  # the global cap still holds
    c.finish("10.0.0.1", 3)
    assert c.fits("10.0.0.1", 99) and not c.fits("10.0.0.1", 4)


def test_buffered_frames_share_a_budget_in_all_and_per_address():
    b = BufferedFrames(limit=30, per_address=16)
    assert b.fits("a", 16) and not b.fits("a", 17)
    b.take("a", 10)
    assert not b.fits("a", 7) and b.fits("b", 16)
    b.take("b", 16)
    assert not b.fits("c", 5) and b.fits("c", 4)
    b.give("a", 10)
    assert b.of("a") == 0 and b.fits("a", 14) and b.total == 16


def test_send_slots_make_senders_wait_and_serve_them_as_slots_free():
    async def main() -> list[str]:
        slots = SendSlots(limit=10)
        slots.counts.per_address = 1
        order: list[str] = []
        gate = asyncio.Event()

        async def send(tag: str, address: str) -> None:
            async with slots.hold(address, None):
                order.append(f"start {tag}")
                await gate.wait()
                order.append(f"end {tag}")

        tasks = [asyncio.create_task(send(t, a)) for t, a in (("a1", "A"), ("a2", "A"), ("b1", "B"))]
        await asyncio.sleep(0.01)
        assert order == ["start a1", "start b1"]  # a2 waits for its address; B is not held up
        blocked = asyncio.create_task(send("a3", "A"))
        await asyncio.sleep(0.01)
        blocked.cancel()  # a cancelled waiter leaves the queue
        gate.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(blocked, return_exceptions=True)
        assert slots.counts.total == 0
        return order

    order = asyncio.run(main())
    assert order.index("start a2") > order.index("end a1") and "start a3" not in order


SPEC = TensorSpec("w", "float32", (4,))


def test_an_encoded_update_needs_the_compression_the_chief_asked_for():
    fp16 = TensorSpec("w", "float32", (4,), enc=Encoding("fp16"))
    check_update([SPEC], 10, "none", limits.MAX_EXAMPLES)
    check_update([fp16], 10, "fp16", limits.MAX_EXAMPLES)
    with pytest.raises(RemoteProtocolError, match="did not ask for compression") as e:
        check_update([TensorSpec("w", "float32", (4,), enc=Encoding("topk", k=0))], 10, "none", 100)
    assert e.value.code == "bad_message"
    with pytest.raises(RemoteProtocolError, match="asked for int8"):
        check_update([fp16], 10, "int8", 100)


def test_num_examples_over_the_cap_is_limit_exceeded_naming_the_flag():
    check_update([SPEC], 100, "none", 100)
    with pytest.raises(RemoteProtocolError, match="--max-examples") as e:
        check_update([SPEC], 2**63 - 1, "none", 100)
    assert e.value.code == "limit_exceeded"
