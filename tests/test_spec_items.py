"""The fifteen places where protocol.md and the chief disagreed or were silent, one test
each: the code and the spec now say the same thing. Live checks of the same items are in
conformance/ (tests/test_conformance.py) and tests/test_error_matrix.py."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fedsock import limits
from fedsock.aggregation import fedavg
from fedsock.chief.intake import check_update
from fedsock.chief.rounds import Accepted, RoundController
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol import (
    Auth,
    Connection,
    Encoding,
    Hello,
    Kind,
    Role,
    TensorSpec,
    frames,
    parse_compression,
    specs_of,
)

DOC = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()


def section(title: str) -> str:
    """The text of protocol.md's section (or subsection) whose heading starts with ``title``."""
    start = DOC.index("\n" + title)
    level = DOC[start + 1 :].split(" ", 1)[0]
    rest = DOC[start + 1 + len(title) :]
    end = re.search(rf"^{level} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def flat(text: str) -> str:
    return " ".join(text.split())


def code_of(fn, *args) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        fn(*args)
    return info.value.code


def received(data: bytes, role: Role = Role.CHIEF) -> str:
    conn = Connection(role)
    conn.receive_data(data)
    return code_of(conn.next_event)


def frame(kind: int, body: bytes) -> bytes:
    return frames.HEADER.pack(frames.MAGIC, 1, kind, len(body)) + body


# 1. kinds 1-22 exist (EvalResult is 22); 0 and >= 23 are bad_frame -----------------------------
def test_item_01_kinds_1_to_22_exist_and_only_0_and_23_up_are_bad_frame():
    for kind in range(1, 23):
        assert frames.decode_header(frames.HEADER.pack(b"FS", 1, kind, 1), 10)[0] == kind
    for kind in (0, 23, 255):
        assert code_of(frames.decode_header, frames.HEADER.pack(b"FS", 1, kind, 1), 10) == "bad_frame"
    assert "kind is not one of 1–22 (it is 0 or ≥ 23) → `bad_frame`" in section("## 2. Frames")


# 2. an ext type is bad_frame, whether msgpack's length limit or the hook refuses it ------------
@pytest.mark.parametrize("value", [msgpack.ExtType(2, b"ab"), [msgpack.ExtType(0, b"")],
                                   {"k": [msgpack.ExtType(127, bytes(300))]}])
def test_item_02_ext_is_bad_frame_not_limit_exceeded(value):
    body = msgpack.packb({"x": value}, use_bin_type=True)
    assert code_of(frames.unpack_body, body) == "bad_frame"
    assert "contains an\n**ext** type" in section("### 3.1")


# 3. an encoded Update to a chief without compression is refused ------------------------------
def test_item_03_encoding_not_asked_for_is_bad_message():
    specs = (TensorSpec("w", "float32", (4,), enc=Encoding("fp16")),)
    assert code_of(check_update, specs, 1, "none", limits.MAX_EXAMPLES) == "bad_message"
    check_update(specs, 1, "fp16", limits.MAX_EXAMPLES)  # asked for: accepted
    assert code_of(check_update, specs, 1, "int8", limits.MAX_EXAMPLES) == "bad_message"
    assert "this chief did not ask for compression" in section("### 7.6")


# 4. the phase is checked on the header, before the body --------------------------------------
def test_item_04_kind_12_with_an_empty_body_in_hello_is_out_of_order():
    assert received(frame(Kind.SECAGG_KEYS, b"")) == "out_of_order"
    assert received(frame(Kind.HELLO, b"")) == "bad_frame"  # allowed kind: then the body decides
    assert "kind 12 with an empty body in phase HELLO is `out_of_order`" in section("### 8.1")


# 5. a replaced connection gets Error name_in_use (live: tests/test_error_matrix.py) -------------
def test_item_05_replacement_is_specified_as_name_in_use():
    text = section("### 7.2")
    assert "replaced by a newer" in text and "not as a protocol error of the old connection" in text


# 6. no model yet, secure aggregation mismatches: out_of_order, in 7.6 and the matrix -------------
def test_item_06_update_before_a_model_and_secagg_mismatch_are_specified():
    c = RoundController(rounds=3, min_workers=1, round_timeout=10.0, transform=fedavg())
    w = [np.zeros(2, np.float32)]
    assert code_of(c.submit, 1, 1, 1, specs_of(w), w) == "out_of_order"
    table = section("### 7.6")
    assert "| no global model yet (bring your own model, before the first proposal) | `out_of_order` |" in table
    assert "| the plan has `secure_agg`: a plain Update for round ≥ 1 | `out_of_order` |" in table
    assert "| SecAggKeys … SecAggReveal to a chief whose plan has no `secure_agg` | `out_of_order` |" in table


# 7. a mac of the wrong length is auth_failed and counts (live: tests/test_error_matrix.py) --------
def test_item_07_short_mac_is_auth_failed():
    for size in (0, 31, 33):
        assert code_of(Auth.from_body, {"mac": bytes(size)}) == "auth_failed"
    assert code_of(Auth.from_body, {"mac": "x" * 32}) == "bad_message"
    assert "an Auth answered with `auth_failed` (wrong mac or a mac of the wrong length" in flat(section("### 5.2"))


# 8. integer and bool tensors: float64 mean, then truncation toward zero; bool is OR ---------------
def test_item_08_integer_and_bool_averaging_is_as_specified():
    init = [np.zeros(1, np.int32), np.zeros(3, bool), np.zeros(1, np.int64), np.zeros(1, np.int32)]
    specs = specs_of(init)
    c = RoundController(rounds=3, min_workers=2, round_timeout=10.0, transform=fedavg())
    c.set_model(specs, init)
    c.join(1), c.join(2)
    assert c.open_if_ready(0.0)
    a = [np.array([8], np.int32), np.array([True, False, False]), np.array([2**53 + 1]), np.array([-8], np.int32)]
    b = [np.array([9], np.int32), np.array([False, False, True]), np.array([2**53 + 1]), np.array([-9], np.int32)]
    assert isinstance(c.submit(1, 1, 1, specs, a), Accepted) and isinstance(c.submit(2, 1, 3, specs, b), Accepted)
    c.close(1.0)
    got = c.weights
    assert got is not None
    assert got[0].tolist() == [8] and got[3].tolist() == [-8]  # 8.75 and -8.75, toward zero
    assert got[1].tolist() == [True, False, True]  # true where any update with examples is true
    assert got[2].tolist() == [2**53]  # through float64
    text = flat(section("### 7.5"))
    assert "truncated toward zero (8.75 → 8, −8.75 → −8" in text and "2^53" in text and "logical OR" in text


# 9. a worker that joins while a round is open is not waited for -----------------------------
def test_item_09_a_joiner_is_not_waited_for_in_the_open_round():
    w = [np.zeros(2, np.float32)]
    specs = specs_of(w)
    c = RoundController(rounds=3, min_workers=2, round_timeout=300.0, transform=fedavg())
    c.set_model(specs, w)
    c.join(1), c.join(2), c.join(3)
    assert c.open_if_ready(0.0)
    c.submit(1, 1, 1, specs, w), c.submit(2, 1, 1, specs, w)
    c.join(4)  # joins round 1 while it is open and already holds min_workers updates
    assert c.expected() == {3}
    c.submit(3, 1, 1, specs, w)
    assert c.should_close(1.0)  # at once, not at the 300 s deadline for worker 4
    c.close(1.0)
    assert c.expected() == {1, 2, 3, 4}  # it takes part from the next round
    assert "joins while a round is open and already holds `min_workers` updates" in flat(section("### 7.5"))


def test_item_09_a_worker_joining_before_the_rounds_first_update_takes_part():
    """At the start of a run several workers join at once: those in before the round has
    min_workers updates take part in it."""
    w = [np.zeros(2, np.float32)]
    c = RoundController(rounds=3, min_workers=2, round_timeout=300.0, transform=fedavg())
    c.set_model(specs_of(w), w)
    c.join(1), c.join(2)
    c.open_if_ready(0.0)
    c.submit(1, 1, 1, specs_of(w), w)
    c.join(3)
    assert c.expected() == {2, 3}


def test_item_09_a_joiners_update_for_the_open_round_still_counts():
    w = [np.zeros(2, np.float32)]
    specs = specs_of(w)
    c = RoundController(rounds=3, min_workers=2, round_timeout=300.0, transform=fedavg())
    c.set_model(specs, w)
    c.join(1), c.join(2), c.join(3)
    c.open_if_ready(0.0)
    c.submit(1, 1, 1, specs, w), c.submit(2, 1, 1, specs, w)
    c.join(4)
    assert isinstance(c.submit(4, 1, 1, specs, w), Accepted)
    assert not c.should_close(1.0)  # worker 3 took part from the start: the round waits for it
    c.submit(3, 1, 1, specs, w)
    assert c.should_close(1.0) and c.close(1.0).workers == (1, 2, 3, 4)


# 10. names: 1-64 characters of the name set ----------------------------------------------------
@pytest.mark.parametrize("name,code", [("", "bad_message"), (" x", "bad_message"), ("-x", "bad_message"),
                                       ("é", "bad_message"), ("a" * 65, "limit_exceeded")])
def test_item_10_names_outside_the_character_set_are_refused(name, code):
    body = {"version": 1, "name": name, "capabilities": [], "instance": bytes(16)}
    assert code_of(Hello.from_body, body) == code
    assert "`[A-Za-z0-9][A-Za-z0-9_.@-]*`" in section("#### Hello (1)")


# 11. TLS close_notify ---------------------------------------------------------------------------
def test_item_11_close_notify_is_specified():
    text = flat(section("## 1. Transport"))
    assert "close_notify" in text and "MUST treat the end of the TCP connection" in text


# 12-15. documentation bugs ------------------------------------------------------------------------
def test_item_12_uptime_is_int_or_float_in_both_tables():
    kinds_row = next(line for line in section("### 3.2").splitlines() if line.startswith("| 11 | Status |"))
    status_row = next(line for line in section("#### Status (11)").splitlines() if line.startswith('| "uptime"'))
    assert "`uptime` int or float" in kinds_row and "| int or float |" in status_row


def test_item_13_kinds_table_lists_welcome_compress():
    row = next(line for line in section("### 3.2").splitlines() if line.startswith("| 4 | Welcome |"))
    assert "optional `compress` str" in row


@pytest.mark.parametrize("text,ok", [("topk:0.01", True), ("topk:.5", True), ("topk:1e-05", True),
                                     ("topk:1", True), ("topk:+0.5", False), ("topk:nan", False),
                                     ("topk:inf", False), ("topk:0_5", False), ("topk:1.5", False),
                                     ("topk:0", False)])
def test_item_14_topk_decimal_is_the_documented_one(text, ok):
    if ok:
        assert 0 < parse_compression(text).ratio <= 1
    else:
        with pytest.raises(ConfigError):
            parse_compression(text)
    assert "digits with an optional `.` and fraction, optionally followed by `e` or `E`" in DOC


def test_item_15_the_fence_after_the_topk_chunk_2_dump_is_closed():
    lines = DOC.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("--- Update") and "topk" in line
              and "Chunk 2" in line)
    after = next(line for line in lines[at + 1 :] if not re.match(r"^(header|body|[0-9a-f]{8})  ", line))
    assert after == "```"  # and every dump is inside a fence: tests/test_contract.py
