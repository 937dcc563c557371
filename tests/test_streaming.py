"""Streaming aggregation, compression codecs and the staging budget."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from fedsock.aggregation import fedavg, weighted_mean
from fedsock.chief.intake import decode_update
from fedsock.chief.rounds import Accepted, RoundController
from fedsock.chief.staging import StagingBudget
from fedsock.errors import ConfigError, RemoteProtocolError
from fedsock.protocol import (
    NEED_DATA,
    Chunk,
    Connection,
    EndOfMessage,
    Global,
    Role,
    TensorAssembler,
    TensorSpec,
    Update,
    Welcome,
    iter_chunks,
    specs_of,
)
from fedsock.protocol.compression import Compression, Encoding, decode, encode, parse_compression
from fedsock.protocol.messages import Plan
from fedsock.worker.compress import UpdateEncoder

rng = np.random.default_rng(7)
SHAPES = [(300, 50), (50,), (7, 3, 2)]


def _established() -> tuple[Connection, Connection]:
    """A worker and a chief Connection past the handshake."""
    from fedsock.protocol import Auth, Challenge, Hello

    w, c = Connection(Role.WORKER), Connection(Role.CHIEF)
    for sender, receiver, msg in ((w, c, Hello("w", instance=bytes(16))),
                                  (c, w, Challenge(bytes(32))), (w, c, Auth(bytes(32))),
                                  (c, w, Welcome(1, 0, Plan(1, 1, 1), reconnect_secret=bytes(32)))):
        receiver.receive_data(sender.send(msg))
        while receiver.next_event() is not NEED_DATA:
            pass
    return w, c


def _through_wire(upd: Update, arrays: list[np.ndarray], chunk_bytes: int = 4096) -> tuple[Update, list[np.ndarray]]:
    """Send an Update and its chunks over a Connection pair; return what the chief assembled."""
    w, c = _established()
    c.receive_data(w.send(upd))
    got = c.next_event()
    assert isinstance(got, Update)
    asm = TensorAssembler(got.tensors)
    for chunk in iter_chunks(arrays, chunk_bytes):
        c.receive_data(w.send(chunk))
    while (ev := c.next_event()) is not NEED_DATA:
        if isinstance(ev, Chunk):
            asm.add(ev)
        else:
            assert isinstance(ev, EndOfMessage)
    return got, asm.arrays()


def _controller(base: list[np.ndarray], acc_dtype: type = np.float64) -> RoundController:
    c = RoundController(rounds=3, min_workers=1, round_timeout=60, transform=fedavg(),
                        reducer=weighted_mean(acc_dtype), decode=decode_update)
    c.set_model(specs_of(base), base)
    c.join(1)
    assert c.open_if_ready(0.0)
    return c


def test_streamed_round_equals_numpy_average_with_a_rejected_nan_update():
    base = [np.zeros(s, np.float32) for s in SHAPES]
    ctrl = _controller(base)
    ups = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(4)]
    ns = [3, 10, 1, 7]
    bad = [u.copy() for u in ups[0]]
    bad[0].reshape(-1)[-1] = np.nan  # in the very last chunk of the first tensor
    for wid, (u, n) in enumerate(zip(ups[:2], ns[:2]), start=1):
        got, arrays = _through_wire(Update(1, n, specs_of(u)), u)
        assert isinstance(ctrl.submit(wid, 1, n, got.tensors, arrays), Accepted)
    got, arrays = _through_wire(Update(1, 5, specs_of(bad)), bad)
    with pytest.raises(RemoteProtocolError) as exc:
        ctrl.submit(9, 1, 5, got.tensors, arrays)
    assert exc.value.code == "invalid_weights"
    for wid, (u, n) in enumerate(zip(ups[2:], ns[2:]), start=3):
        got, arrays = _through_wire(Update(1, n, specs_of(u)), u)
        assert isinstance(ctrl.submit(wid, 1, n, got.tensors, arrays), Accepted)
    result = ctrl.close(0.0)
    for t in range(len(SHAPES)):
        ref = np.average(np.stack([u[t] for u in ups]).astype(np.float64), axis=0, weights=ns).astype(np.float32)
        np.testing.assert_array_equal(result.weights[t], ref)


def test_float32_accumulator_is_close_to_the_average():
    base = [np.zeros(s, np.float32) for s in SHAPES]
    ctrl = _controller(base, np.float32)
    ups = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(5)]
    for wid, u in enumerate(ups, start=1):
        ctrl.submit(wid, 1, wid, specs_of(u), u)
    out = ctrl.close(0.0).weights
    ref = np.average(np.stack([u[0] for u in ups]), axis=0, weights=[1, 2, 3, 4, 5])
    np.testing.assert_allclose(out[0], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["fp16", "int8", "topk:0.1", "topk:1"])
def test_codecs_decode_within_their_stated_error(mode):
    comp = parse_compression(mode)
    for scale in (1e-3, 1.0, 300.0):
        delta = (rng.normal(size=10_000) * scale).astype(np.float32)
        enc, payload = encode(delta, comp)
        assert enc is not None
        assert payload.nbytes == enc.wire_nbytes(delta.size)
        back = decode(payload.tobytes(), enc, delta.size)
        err = np.abs(back - delta)
        if comp.mode == "fp16":
            assert np.all(err <= np.maximum(np.abs(delta) * 2.0**-11, 2.0**-25))
        elif comp.mode == "int8":
            assert np.all(err <= enc.scale / 2 * (1 + 1e-5) + 1e-6 * np.abs(delta))
        else:
            k = math.ceil(comp.ratio * delta.size)
            kept = np.flatnonzero(back)
            assert len(kept) == k and np.array_equal(back[kept], delta[kept])
            assert np.min(np.abs(delta[kept])) >= np.max(np.abs(np.delete(delta, kept)), initial=0)


@pytest.mark.parametrize("scale, offset", [(1e300, 0.0), (3e38, 0.0), (1.0, -1e300), (3e38, 3e38)])
def test_an_int8_scale_beyond_float32_is_invalid_weights_without_a_numpy_warning(scale, offset):
    """Found by the suite's bounded fuzz run: a peer's huge scale overflowed float32 with a RuntimeWarning
    on the chief's stderr before the check refused it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RemoteProtocolError) as exc:
            decode(np.full(4, 127, np.int8).tobytes(), Encoding("int8", scale, offset), 4)
    assert exc.value.code == "invalid_weights"


def test_codecs_edge_cases():
    assert encode(np.arange(4, dtype=np.int32), Compression("int8"))[0] is None  # not floating point
    assert encode(np.array([1e5], np.float32), Compression("fp16"))[0] is None  # would overflow float16
    enc, payload = encode(np.full(5, 2.5, np.float32), Compression("int8"))
    np.testing.assert_array_equal(decode(payload, enc, 5), np.full(5, 2.5, np.float32))
    enc, payload = encode(np.zeros(0, np.float32), Compression("topk", 0.5))
    assert decode(payload, enc, 0).size == 0
    for bad in ("zip", "topk", "topk:0", "topk:2", "int8:3"):
        with pytest.raises(ConfigError):
            parse_compression(bad)


def test_hostile_encodings_are_remote_errors():
    with pytest.raises(RemoteProtocolError):
        Encoding.from_wire({"kind": "int8", "scale": float("nan"), "offset": 0.0}, 4)
    with pytest.raises(RemoteProtocolError):
        Encoding.from_wire({"kind": "topk", "k": 5}, 4)
    with pytest.raises(RemoteProtocolError):
        Encoding.from_wire({"kind": "zstd"}, 4)
    idx_vals = np.array([3, 1, 0, 0], "<u4")  # indices not ascending
    with pytest.raises(RemoteProtocolError):
        decode(idx_vals.tobytes(), Encoding("topk", k=2), 4)
    with pytest.raises(RemoteProtocolError):
        decode(np.array([9, 0], "<u4").tobytes(), Encoding("topk", k=1), 4)  # index out of range
    with pytest.raises(RemoteProtocolError) as exc:
        decode(np.array([np.inf], "<f2").tobytes(), Encoding("fp16"), 1)
    assert exc.value.code == "invalid_weights"
    # enc is for Updates only, and only on floating-point tensors
    spec = TensorSpec("t", "float32", (4,), Encoding("fp16"))
    with pytest.raises(RemoteProtocolError):
        Global.from_body({"round": 1, "tensors": [spec.to_wire()]})
    with pytest.raises(RemoteProtocolError):
        TensorSpec.from_wire({"name": "t", "dtype": "int32", "shape": [4], "enc": {"kind": "fp16"}})
    with pytest.raises(RemoteProtocolError):
        Welcome.from_body({**Welcome(1, 0, Plan(1, 1, 1)).to_body(), "compress": "topk:7"})


@pytest.mark.parametrize("mode", ["fp16", "int8", "topk:0.05"])
def test_compressed_update_through_the_wire_and_the_round(mode):
    comp = parse_compression(mode)
    base = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    ctrl = _controller(base)
    trained = [[b + rng.normal(0, 0.01, size=b.shape).astype(np.float32) for b in base] for _ in range(3)]
    decoded = []
    for wid, w in enumerate(trained, start=1):
        specs, payloads = UpdateEncoder(comp).encode(w, base, specs_of(w))
        got, arrays = _through_wire(Update(1, 4, specs), payloads)
        assert sum(a.nbytes for a in arrays) < sum(x.nbytes for x in w)
        assert isinstance(ctrl.submit(wid, 1, 4, got.tensors, arrays), Accepted)
        decoded.append([b + decode(a, s.enc, b.size).reshape(b.shape) for a, s, b in zip(arrays, got.tensors, base)])
    out = ctrl.close(0.0).weights
    for t in range(len(SHAPES)):
        ref = np.mean(np.stack([d[t] for d in decoded]).astype(np.float64), axis=0)
        np.testing.assert_allclose(out[t], ref, rtol=1e-6, atol=1e-6)


def test_topk_error_feedback_loses_nothing():
    comp = Compression("topk", 0.1)
    enc_ = UpdateEncoder(comp)
    base = [np.zeros(1000, np.float32)]
    deltas, sent = [], np.zeros(1000, np.float64)
    for _ in range(5):
        d = rng.normal(size=1000).astype(np.float32)
        deltas.append(d)
        specs, payloads = enc_.encode([d], base, specs_of([d]))
        sent += decode(payloads[0], specs[0].enc, 1000)
    assert enc_._residual is not None
    np.testing.assert_allclose(sent + enc_._residual[0], np.sum(deltas, axis=0), atol=1e-4)


def test_staging_budget_admits_what_fits_and_always_one():
    async def scenario() -> list[str]:
        budget, log = StagingBudget(10), []

        async def upload(name: str, nbytes: int, hold: float) -> None:
            async with budget.hold(nbytes):
                log.append(f"+{name}")
                await asyncio.sleep(hold)
                log.append(f"-{name}")

        await asyncio.gather(upload("a", 6, 0.05), upload("b", 6, 0.01), upload("c", 4, 0.01))
        await upload("huge", 100, 0)  # larger than the budget: admitted alone
        assert budget.used == 0 and budget.peak <= 100
        return log

    log = asyncio.run(scenario())
    assert log.index("+b") > log.index("-a")  # b waited for a
    assert log.index("+c") < log.index("-a")  # c fitted next to a


def test_staging_keeps_the_buffer_of_an_update_larger_than_the_budget():
    """An update over the budget is staged every round: its buffer is reused, not faulted in anew
    each time; a smaller update that needs room within the budget evicts it."""

    async def scenario() -> None:
        budget = StagingBudget(10)
        async with budget.hold(100) as first:
            pass
        async with budget.hold(100) as again:
            assert again is first
        async with budget.hold(6) as small:  # 6 + the pooled 100 would exceed 10: the big one goes
            assert small is not first and small.size == 6
        assert sum(b.size for b in budget._free) <= budget.limit
        async with budget.hold(100) as third:
            assert third is not first and third.size == 100

    asyncio.run(scenario())


def test_model_streams_during_checkpoint_but_completes_only_after_it(tmp_path, monkeypatch):
    """The Global streams out while the chief checkpoints; its last bytes wait for the
    checkpoint, trickling out a byte per heartbeat interval so the worker does not give up."""
    import threading
    import time

    import fedsock
    from fedsock.chief import Chief
    from fedsock.chief.records import Checkpoints

    done_at: list[float] = []
    real = Checkpoints.checkpoint

    def slow_checkpoint(self, snap, members=(), row=None):
        if snap.round >= 1:  # the round's checkpoint, not the initial model's
            time.sleep(1.5)
        real(self, snap, members, row)
        done_at.append(time.monotonic())

    monkeypatch.setattr(Checkpoints, "checkpoint", slow_checkpoint)
    chief = Chief(state_dir=tmp_path, host="127.0.0.1", port=0, rounds=1, min_workers=1,
                  heartbeat_interval=0.2, idle_timeout=5.0, done_grace=0.5)
    t = threading.Thread(target=chief.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "chief.addr").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    addr = (tmp_path / "chief.addr").read_text().strip()
    w = [np.arange(3_000_000, dtype=np.float32)]  # several chunks
    with fedsock.Client(addr, token=(tmp_path / "token").read_text().strip(), name="w",
                        idle_timeout=1.0, heartbeat_interval=0.2, reconnect_timeout=0) as c:
        c.join(w)
        got = c.sync([w[0] + 2], num_examples=3)
        returned = time.monotonic()
        assert c.finished and c.reconnects == 0
    np.testing.assert_array_equal(got[0], w[0] + 2)
    assert returned >= done_at[-1]  # the worker held the model only after the checkpoint
    t.join(timeout=30)
    assert not t.is_alive()
