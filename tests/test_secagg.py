"""Secure aggregation's pure parts: Shamir, masks, fixed point, and both state machines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsock.errors import PeerMisbehaved, RemoteProtocolError
from fedsock.protocol.connection import Connection, Role
from fedsock.protocol.messages import Plan, TensorSpec
from fedsock.protocol.secagg import Peer, SecAggKeys, SecAggMasked, SecAggRoster, SecAggUnmask
from fedsock.secagg import crypto, fixedpoint, graph, shamir
from fedsock.secagg.chief import ChiefRound, TooFewWorkers
from fedsock.secagg.worker import WorkerRound
from fedsock.worker.secure import masked_update

SHAPES = [(30, 20), (20,)]
WORDS = sum(math.prod(s) for s in SHAPES) + 1


# --- Shamir -------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(secret=st.integers(0, 2**256 - 1), n=st.integers(2, 12), data=st.data())
def test_shamir_any_threshold_subset_rebuilds(secret: int, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, range(1, n + 1), t)
    pick = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=t, max_size=n, unique=True))
    assert shamir.reconstruct({x: shares[x] for x in pick}, t) == secret


def test_shamir_fewer_than_threshold_is_refused_and_reveals_nothing() -> None:
    shares = shamir.split(12345, [1, 2, 3, 4], 3)
    with pytest.raises(shamir.ShamirError):
        shamir.reconstruct({1: shares[1], 2: shares[2]}, 3)
    # two shares are consistent with every secret: interpolating them with any third point works
    forged = dict(list(shares.items())[:2]) | {9: 777}
    assert shamir.reconstruct(forged, 3) != 12345


def test_share_bytes_round_trip_and_bounds() -> None:
    v = shamir.split(2**255, [5], 1)[5]
    assert shamir.from_bytes(shamir.to_bytes(v)) == v
    with pytest.raises(shamir.ShamirError):
        shamir.from_bytes(b"\xff" * shamir.SHARE_BYTES)  # >= the prime
    with pytest.raises(shamir.ShamirError):
        shamir.from_bytes(b"\x01" * 10)


# --- crypto ---------------------------------------------------------------

def test_pairwise_keys_agree_and_depend_on_round_and_label() -> None:
    a, b = crypto.new_private_key(), crypto.new_private_key()
    k_ab = crypto.agree(a, crypto.public_bytes(b), crypto.MASK_LABEL, 3, 1)
    assert k_ab == crypto.agree(b, crypto.public_bytes(a), crypto.MASK_LABEL, 3, 1)
    assert k_ab != crypto.agree(a, crypto.public_bytes(b), crypto.MASK_LABEL, 3, 2)
    assert k_ab != crypto.agree(a, crypto.public_bytes(b), crypto.SHARE_LABEL, 3, 1)
    with pytest.raises(crypto.CryptoError):
        crypto.agree(a, bytes(32), crypto.MASK_LABEL, 1, 1)  # a low-order point


def test_sealed_shares_authenticate_sender_receiver_and_round() -> None:
    key = bytes(range(32))
    sealed = crypto.seal(key, b"secret", crypto.share_aad(1, 1, 2, 3))
    assert crypto.open_sealed(key, sealed, crypto.share_aad(1, 1, 2, 3)) == b"secret"
    for aad in (crypto.share_aad(1, 1, 3, 2), crypto.share_aad(2, 1, 2, 3)):
        with pytest.raises(crypto.CryptoError):
            crypto.open_sealed(key, sealed, aad)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(crypto.CryptoError):
        crypto.open_sealed(key, tampered, crypto.share_aad(1, 1, 2, 3))


def test_mask_blocks_are_one_stream() -> None:
    key = b"k" * 32
    whole = crypto.mask(key, 1000)
    parts = np.concatenate([b.copy() for b in crypto.mask_blocks(key, 1000, block=64)])
    assert np.array_equal(whole, parts)
    assert not np.array_equal(whole, crypto.mask(b"j" * 32, 1000))


def chi_square_p(data: bytes) -> float:
    """p-value that the bytes are uniform over 0..255 (chi-square, 255 degrees of freedom)."""
    from scipy.stats import chi2

    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    expected = len(data) / 256
    return float(chi2.sf(((counts - expected) ** 2 / expected).sum(), 255))


def test_masked_update_bytes_look_uniform_though_the_input_does_not() -> None:
    x = [np.full(s, 0.5, np.float32) for s in SHAPES]  # as far from uniform as it gets
    enc = fixedpoint.encode(x, 10, 3)
    assert chi_square_p(enc.tobytes()) < 1e-6
    workers = run_attempt({1: x, 2: x, 3: x}, {1: 10, 2: 10, 3: 10}, capture=True)
    for masked in workers.captured:
        assert chi_square_p(masked.tobytes()) > 1e-4


# --- fixed point ----------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=50),
       weight=st.integers(1, 10_000))
def test_fixed_point_error_is_within_the_stated_bound(values: list[float], weight: int) -> None:
    x = np.array(values, np.float32)
    total = fixedpoint.encode([x], weight, 1)
    avg, w = fixedpoint.decode(total, [x.shape])
    assert w == weight
    assert np.max(np.abs(avg[0] - x.astype(np.float64))) <= fixedpoint.MAX_ERROR


def test_fixed_point_refuses_nan_and_overflow() -> None:
    with pytest.raises(fixedpoint.RangeError, match="NaN"):
        fixedpoint.encode([np.array([np.nan], np.float32)], 1, 2)
    with pytest.raises(fixedpoint.RangeError, match="range"):
        fixedpoint.encode([np.array([1e9], np.float32)], 1000, 100)


# --- the two state machines, wired back to back ----------------------------

class Run:
    def __init__(self) -> None:
        self.captured: list[np.ndarray] = []
        self.chief: ChiefRound | None = None


def run_attempt(updates: dict[int, list[np.ndarray]], examples: dict[int, int], *, before_mask: tuple[int, ...] = (),
                after_mask: tuple[int, ...] = (), threshold: int = 0, neighbours: int = 0,
                capture: bool = False) -> Run:
    """One attempt; workers in ``before_mask`` vanish after sharing, those in ``after_mask``
    after sending their masked update. Messages go through real Connections (encode/decode)."""
    run = Run()
    chief = run.chief = ChiefRound(1, 1, WORDS, threshold=threshold, neighbours=neighbours)
    wire = Connection(Role.CHIEF), Connection(Role.WORKER)
    for c in wire:
        c.phase = c.phase.ESTABLISHED

    def relay(msg, sender: Connection, receiver: Connection):  # type: ignore[no-untyped-def]
        receiver.receive_data(sender.send(msg))
        return receiver.next_event()

    up = lambda m: relay(m, wire[1], wire[0])  # noqa: E731
    down = lambda m: relay(m, wire[0], wire[1])  # noqa: E731
    states = {}
    for w in updates:
        states[w], keys = WorkerRound.start(1)
        chief.add_keys(w, up(keys))
    rosters = chief.rosters(2)
    for w in updates:
        chief.add_shares(w, up(states[w].on_roster(down(rosters[w]))))
    inboxes = chief.inboxes()
    for w, x in updates.items():
        if w in before_mask:
            continue
        states[w].on_inbox(down(inboxes[w]))
        masked = states[w].mask(fixedpoint.encode(x, examples[w], len(updates)))
        if capture:
            run.captured.append(masked.copy())
        specs = [TensorSpec("t", "uint64", s) for s in [*SHAPES, (1,)]]
        chief.check_masked(w, 1, 1, specs, SHAPES)
        chief.add_masked(w, [masked[:600], masked[600:620], masked[620:]])
    unmask = down(chief.unmask())
    for w in unmask.survivors:
        if w not in after_mask:
            chief.add_reveal(w, up(states[w].on_unmask(unmask)))
    total = chief.finish()
    run.result = fixedpoint.decode(total, SHAPES)  # type: ignore[attr-defined]
    return run


def plain_average(updates: dict[int, list[np.ndarray]], examples: dict[int, int],
                  only: set[int]) -> list[np.ndarray]:
    n = sum(examples[w] for w in only)
    return [sum(examples[w] * updates[w][i].astype(np.float64) for w in only) / n for i in range(len(SHAPES))]


def updates_for(n: int) -> tuple[dict[int, list[np.ndarray]], dict[int, int]]:
    rng = np.random.default_rng(n)
    return ({w: [rng.normal(size=s).astype(np.float32) for s in SHAPES] for w in range(1, n + 1)},
            {w: int(rng.integers(1, 500)) for w in range(1, n + 1)})


@pytest.mark.parametrize("before, after, neighbours, threshold", [
    ((), (), 0, 0),
    ((2,), (), 0, 0),           # dropped after sharing: its pairwise masks are rebuilt and removed
    ((), (3, 5), 0, 0),         # died after masking: counted; survivors reveal its self-mask seed
    ((1,), (6,), 0, 3),
    ((4,), (), 4, 3),           # SecAgg+: 4 neighbours each
])
def test_masks_cancel_to_the_weighted_average(before: tuple[int, ...], after: tuple[int, ...], neighbours: int,
                                              threshold: int) -> None:
    updates, examples = updates_for(6)
    run = run_attempt(updates, examples, before_mask=before, after_mask=after, neighbours=neighbours,
                      threshold=threshold)
    avg, weight = run.result  # type: ignore[attr-defined]
    counted = set(updates) - set(before)
    assert weight == sum(examples[w] for w in counted)
    for got, want in zip(avg, plain_average(updates, examples, counted)):
        assert np.max(np.abs(got - want)) <= fixedpoint.MAX_ERROR


def test_too_few_survivors_fails_instead_of_unmasking() -> None:
    updates, examples = updates_for(4)
    with pytest.raises(TooFewWorkers):
        run_attempt(updates, examples, before_mask=(1, 2), threshold=3)


def test_a_worker_never_reveals_both_secrets_of_one_peer() -> None:
    updates, examples = updates_for(3)
    chief = ChiefRound(1, 1, WORDS)
    states = {}
    for w in updates:
        states[w], keys = WorkerRound.start(1)
        chief.add_keys(w, keys)
    rosters = chief.rosters(2)
    for w in updates:
        chief.add_shares(w, states[w].on_roster(rosters[w]))
    for w, inbox in chief.inboxes().items():
        states[w].on_inbox(inbox)
        states[w].mask(fixedpoint.encode(updates[w], 1, 3))
    reveal = states[1].on_unmask(SecAggUnmask(1, 1, (1, 2), (3,)))
    assert {u for u, _ in reveal.seed_shares} == {1, 2} and {d for d, _ in reveal.key_shares} == {3}
    with pytest.raises(RemoteProtocolError):  # a second request (e.g. now calling 3 a survivor) is refused
        states[1].on_unmask(SecAggUnmask(1, 1, (1, 2, 3), ()))
    with pytest.raises(RemoteProtocolError):  # a survivor list without the worker itself
        states[2].on_unmask(SecAggUnmask(1, 1, (1, 3), (2,)))


def test_chief_refuses_shares_for_strangers_and_replays() -> None:
    chief = ChiefRound(1, 1, WORDS)
    states = {}
    for w in (1, 2, 3):
        states[w], keys = WorkerRound.start(1)
        chief.add_keys(w, keys)
    rosters = chief.rosters(2)
    shares = states[1].on_roster(rosters[1])
    with pytest.raises(RemoteProtocolError):
        chief.add_shares(1, type(shares)(1, 1, (*shares.shares, (9, b"x" * 60))))  # a stranger
    chief.add_shares(1, shares)
    with pytest.raises(RemoteProtocolError):
        chief.add_shares(1, shares)
    with pytest.raises(RemoteProtocolError):
        chief.add_shares(2, type(shares)(1, 2, shares.shares))  # another attempt
    with pytest.raises(RemoteProtocolError):
        chief.add_keys(4, SecAggKeys(1, b"a" * 32, b"b" * 32))  # the roster is out


def test_neighbourhoods_are_symmetric_and_of_size_k_plus_one() -> None:
    ids = list(range(1, 21))
    hoods = graph.neighbourhoods(ids, 6)
    for i, hood in hoods.items():
        assert i in hood and len(hood) == 7
        assert all(i in hoods[j] for j in hood)
    assert all(len(h) == 20 for h in graph.neighbourhoods(ids, 0).values())
    assert graph.default_threshold(20) == 11 and graph.default_threshold(20, 6) == 4


def test_chief_refuses_a_masked_update_of_the_wrong_shape_before_reading_it() -> None:
    chief = ChiefRound(1, 1, WORDS)
    states = {}
    for w in (1, 2):
        states[w], keys = WorkerRound.start(1)
        chief.add_keys(w, keys)
    rosters = chief.rosters(2)
    for w in (1, 2):
        chief.add_shares(w, states[w].on_roster(rosters[w]))
    chief.inboxes()
    wrong = [TensorSpec("t", "uint64", s) for s in [(20, 30), (20,), (1,)]]
    with pytest.raises(RemoteProtocolError) as err:
        chief.check_masked(1, 1, 1, wrong, SHAPES)
    assert err.value.code == "signature_mismatch"
    with pytest.raises(RemoteProtocolError):  # a masked update for another attempt
        chief.check_masked(1, 1, 2, [TensorSpec("t", "uint64", s) for s in [*SHAPES, (1,)]], SHAPES)


# --- misbehaving workers are dropouts ----------------------------------------

#: X25519 points of small order (RFC 7748 section 6.1 / libsodium's blacklist): the shared secret is zero.
LOW_ORDER = [bytes(32), (1).to_bytes(32, "little"),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
             bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
             (2**255 - 19 - 1).to_bytes(32, "little"), (2**255 - 19).to_bytes(32, "little")]


@pytest.mark.parametrize("point", LOW_ORDER)
def test_the_chief_refuses_low_order_keys_on_arrival(point: bytes) -> None:
    chief = ChiefRound(1, 1, WORDS)
    good = crypto.public_bytes(crypto.new_private_key())
    for keys in (SecAggKeys(1, point, good), SecAggKeys(1, good, point)):
        with pytest.raises(RemoteProtocolError, match="refused"):
            chief.add_keys(7, keys)
    assert not chief.keys


def wired(n: int, threshold: int = 0) -> tuple[ChiefRound, dict[int, WorkerRound], dict[int, SecAggRoster]]:
    chief = ChiefRound(1, 1, WORDS, threshold=threshold)
    states = {}
    for w in range(1, n + 1):
        states[w], keys = WorkerRound.start(1)
        chief.add_keys(w, keys)
    return chief, states, chief.rosters(2)


def test_a_worker_leaves_out_a_neighbour_whose_key_does_not_agree_and_the_chief_learns_it() -> None:
    chief, states, rosters = wired(3)
    r = rosters[1]  # as a chief that did not check keys would send it: worker 3's share key is low-order
    bad = SecAggRoster(r.round, r.attempt, r.you, r.threshold, r.min_survivors, r.workers,
                       tuple(Peer(p.id, bytes(32), p.mask_key) if p.id == 3 else p for p in r.peers))
    shares = states[1].on_roster(bad)
    assert {i for i, _ in shares.shares} == {2} and set(states[1].excluded) == {3}
    chief.add_shares(1, shares)
    assert chief.reported == {1: frozenset({3})}


def test_a_worker_that_cannot_open_a_share_masks_without_its_sender_and_names_it() -> None:
    updates, examples = updates_for(3)
    chief, states, rosters = wired(3)
    for w in states:
        shares = states[w].on_roster(rosters[w])
        if w == 3:  # random sealed shares
            shares = type(shares)(1, 1, tuple((i, crypto.seal(b"k" * 32, b"z" * 132, b"")) for i, _ in shares.shares))
        chief.add_shares(w, shares)
    inboxes = chief.inboxes()
    states[1].on_inbox(inboxes[1])  # does not raise: worker 3 is left out
    assert set(states[1].excluded) == {3} and 3 not in states[1].held
    msg, _ = masked_update(states[1], updates[1], examples[1], Plan(rounds=3, sync_every=1, batch_size=1),
                           ["a", "b"])
    assert msg.excluded == (3,)
    assert SecAggMasked.from_body(msg.to_body()).excluded == (3,)
    specs = [TensorSpec("t", "uint64", s) for s in [*SHAPES, (1,)]]
    assert chief.check_masked(1, 1, 1, specs, SHAPES, msg.excluded)
    assert chief.reported == {1: frozenset({3})}
    with pytest.raises(RemoteProtocolError):  # it never unmasks an attempt in which it named someone
        states[1].on_unmask(SecAggUnmask(1, 1, (1, 2), (3,)))


def test_a_masked_update_that_completes_after_the_masking_phase_is_discarded() -> None:
    updates, examples = updates_for(3)
    chief, states, rosters = wired(3)
    for w in states:
        chief.add_shares(w, states[w].on_roster(rosters[w]))
    specs = [TensorSpec("t", "uint64", s) for s in [*SHAPES, (1,)]]
    for w, inbox in chief.inboxes().items():
        states[w].on_inbox(inbox)
    masked = {w: states[w].mask(fixedpoint.encode(updates[w], examples[w], 3)) for w in states}
    for w in (1, 2):
        assert chief.check_masked(w, 1, 1, specs, SHAPES)
        assert chief.add_masked(w, [masked[w]])
    assert chief.check_masked(3, 1, 1, specs, SHAPES)  # its header came in time ...
    unmask = chief.unmask()  # ... but the deadline passed before its chunks did
    assert unmask.dropped == (3,)
    assert not chief.add_masked(3, [masked[3]])  # not folded: its self mask would never be removed
    assert not chief.check_masked(3, 1, 1, specs, SHAPES)  # and one that starts now is read and dropped
    for w in unmask.survivors:
        chief.add_reveal(w, states[w].on_unmask(unmask))
    avg, weight = fixedpoint.decode(chief.finish(), SHAPES)
    assert weight == examples[1] + examples[2]
    for got, want in zip(avg, plain_average(updates, examples, {1, 2})):
        assert np.max(np.abs(got - want)) <= fixedpoint.MAX_ERROR


def reveal_with_liar(n: int, liar: int, dead: tuple[int, ...] = ()) -> ChiefRound:
    updates, examples = updates_for(n)
    chief, states, rosters = wired(n)
    for w in states:
        chief.add_shares(w, states[w].on_roster(rosters[w]))
    specs = [TensorSpec("t", "uint64", s) for s in [*SHAPES, (1,)]]
    for w, inbox in chief.inboxes().items():
        states[w].on_inbox(inbox)
        if w in dead:
            continue
        chief.check_masked(w, 1, 1, specs, SHAPES)
        chief.add_masked(w, [states[w].mask(fixedpoint.encode(updates[w], examples[w], n))])
    unmask = chief.unmask()
    rng = np.random.default_rng(0)
    for w in unmask.survivors:
        msg = states[w].on_unmask(unmask)
        if w == liar:
            noise = lambda: shamir.to_bytes(int(rng.integers(1, 2**62)))  # noqa: E731
            msg = type(msg)(1, 1, tuple((u, noise()) for u, _ in msg.seed_shares),
                            tuple((d, noise()) for d, _ in msg.key_shares))
        chief.add_reveal(w, msg)
    return chief


@pytest.mark.parametrize("n, dead", [(6, ()), (7, (5,))])
def test_reveal_shares_that_disagree_single_out_their_sender(n: int, dead: tuple[int, ...]) -> None:
    chief = reveal_with_liar(n, liar=2, dead=dead)  # threshold 4: 6 shares of each secret
    with pytest.raises(PeerMisbehaved) as err:
        chief.finish()
    assert err.value.workers == {2}


def test_reveal_shares_that_disagree_but_cannot_be_attributed_blame_nobody() -> None:
    chief = reveal_with_liar(4, liar=1)  # threshold 3, 4 shares: detected, but not whose
    with pytest.raises(PeerMisbehaved) as err:
        chief.finish()
    assert err.value.workers == frozenset()


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 9), data=st.data())
def test_shamir_liars_found_with_two_spare_shares(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(2, n - 2))
    shares = shamir.split(data.draw(st.integers(0, 2**256)), range(1, n + 1), t)
    assert shamir.consistent(shares, t) and shamir.liars(shares, t) == set()
    x = data.draw(st.integers(1, n))
    shares[x] = (shares[x] + data.draw(st.integers(1, shamir.PRIME - 1))) % shamir.PRIME
    assert not shamir.consistent(shares, t)
    assert shamir.liars(shares, t) == {x}


def test_named_workers_leave_the_round_and_so_does_a_worker_that_names_twice(tmp_path) -> None:
    from fedsock.chief.config import ChiefConfig
    from fedsock.chief.secure import SecureAggregation

    sec = SecureAggregation(ChiefConfig(state_dir=tmp_path, secure_agg=True, min_workers=2), controller=None)  # type: ignore[arg-type]
    first = ChiefRound(1, 1, WORDS)
    first.reported = {1: frozenset({3})}
    with pytest.raises(PeerMisbehaved) as err:
        sec._reported(first)
    assert err.value.workers == {3}
    second = ChiefRound(1, 2, WORDS)
    second.reported = {1: frozenset({2})}  # the chief cannot tell who lies: both leave
    with pytest.raises(PeerMisbehaved) as err:
        sec._reported(second)
    assert err.value.workers == {1, 2}
    sec._reported(ChiefRound(1, 3, WORDS))  # no report: nothing happens
