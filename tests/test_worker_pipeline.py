"""The worker's update pipeline and model memory, without sockets."""

from __future__ import annotations

import numpy as np

from fedsock.protocol import Plan, TensorAssembler, Update, specs_of
from fedsock.protocol.compression import decode, parse_compression
from fedsock.worker.buffers import ModelMemory
from fedsock.worker.pipeline import Outgoing, UpdatePipeline, audit_step, clip_step, run_steps

PLAN = Plan(rounds=2, sync_every=1, batch_size=1)
BASE = [np.zeros(100, np.float32), np.zeros((3, 3), np.float32)]


def outgoing(weights):
    return Outgoing(Update(1, 5, specs_of(weights, ["a", "b"])), weights)


def test_without_dp_compression_or_audit_the_weights_go_out_untouched():
    w = [np.full(100, 2, np.float32), np.ones((3, 3), np.float32)]
    steps = UpdatePipeline().steps(PLAN, parse_compression("none"), BASE, have_global=True)
    out = run_steps(steps, outgoing(w))
    assert out.tensors is w and out.update == outgoing(w).update


def test_dp_clips_the_delta_before_the_audit_copy_and_the_encoding(tmp_path):
    plan = Plan(rounds=2, sync_every=1, batch_size=1, dp_clip=1.0)
    w = [np.full(100, 3, np.float32), np.full((3, 3), 4, np.float32)]
    pipe = UpdatePipeline(tmp_path)
    out = run_steps(pipe.steps(plan, parse_compression("fp16"), BASE, have_global=True), outgoing(w))
    saved = np.load(tmp_path / "round-000001.npz")
    clipped = [saved["w0000"], saved["w0001"]]
    norm = np.sqrt(sum(float(np.sum(np.square(c.astype(np.float64)))) for c in clipped))
    assert abs(norm - 1.0) < 1e-4 and int(saved["num_examples"]) == 5  # the copy is what was clipped
    assert [s.enc.kind for s in out.update.tensors] == ["fp16", "fp16"]  # then encoded as deltas
    sent = decode(out.tensors[0], out.update.tensors[0].enc, 100)
    np.testing.assert_allclose(sent, clipped[0] - BASE[0], rtol=1e-3)


def test_secure_aggregation_takes_no_compression():
    plan = Plan(rounds=2, sync_every=1, batch_size=1, secure_agg=True)
    w = [np.full(100, 2, np.float32), np.ones((3, 3), np.float32)]
    out = run_steps(UpdatePipeline().steps(plan, parse_compression("int8"), BASE, have_global=True), outgoing(w))
    assert out.tensors is w and all(s.enc is None for s in out.update.tensors)


def test_topk_keeps_its_residual_from_one_round_to_the_next():
    comp = parse_compression("topk:0.1")
    pipe = UpdatePipeline()
    w = [np.arange(100, dtype=np.float32), np.ones((3, 3), np.float32)]
    first = run_steps(pipe.steps(PLAN, comp, BASE, True), outgoing(w))
    second = run_steps(pipe.steps(PLAN, comp, BASE, True), outgoing(w))
    # what the first round left out is sent with the second: the two rounds differ
    assert not np.array_equal(np.asarray(first.tensors[0]), np.asarray(second.tensors[0]))


def test_steps_compose_in_order(tmp_path):
    plan = Plan(rounds=2, sync_every=1, batch_size=1, dp_clip=0.5)
    w = [np.full(100, 1, np.float32), np.zeros((3, 3), np.float32)]
    out = run_steps([audit_step(tmp_path), clip_step(BASE, plan)], outgoing(w))  # audit before clipping
    np.testing.assert_array_equal(np.load(tmp_path / "round-000001.npz")["w0000"], w[0])
    assert float(np.linalg.norm(out.tensors[0])) < 0.51


def _model_in(memory: ModelMemory, nbytes: int, reuse=None, keep=()):
    buf = memory.buffer_for(nbytes, reuse, keep)
    specs = specs_of(BASE, ["a", "b"])
    return buf, TensorAssembler(specs, buf).arrays()


def test_a_handed_back_model_is_read_into_again_and_others_are_not():
    memory = ModelMemory()
    nbytes = sum(a.nbytes for a in BASE)
    buf, model = _model_in(memory, nbytes)
    again, _ = _model_in(memory, nbytes, reuse=model)
    assert again is buf
    assert memory.reclaim(model, nbytes + 1) is None  # too small
    assert memory.reclaim([np.zeros(100, np.float32)], 10) is None  # not ours
    assert memory.reclaim([model[0], np.zeros(9, np.float32)], 10) is None  # not all of one model
    assert memory.reclaim(model, nbytes, keep=[model[1][1:]]) is None  # still to be sent
    assert memory.reclaim(None, nbytes) is None
    assert ModelMemory.shares(model, buf) and not ModelMemory.shares(None, buf)


def test_only_handed_back_memory_is_overwritten():
    memory = ModelMemory()
    nbytes = sum(a.nbytes for a in BASE)
    _, kept = _model_in(memory, nbytes)
    kept[0][:] = 7
    buf2, _ = _model_in(memory, nbytes)  # nothing handed back: fresh memory
    buf2[:] = 0
    assert (kept[0] == 7).all()
