"""The chief's side of one secure-aggregation attempt, without I/O.

The chief only routes: it never holds a worker's key, seed or unmasked
update. It keeps the running sum (mod 2**64) of the masked updates as they
arrive; after the Unmask/Reveal step it rebuilds, from Shamir shares, the
self-mask seeds of the survivors and the mask keys of the workers that
dropped out after sharing, and removes exactly those masks from the sum.

The shell (``fedsock.chief.secure``) moves messages and decides when a phase
has waited long enough; a phase left with too few workers raises
``TooFewWorkers`` and the attempt is abandoned.

Misbehaviour is a dropout, never a failure of the chief: keys that are not
usable X25519 points are refused on arrival (a trial agreement); a worker
that could not agree with a neighbour's key or open its sealed shares names
it (``reported``: it left it out of its shares or masks), and reveal shares
of one secret that do not lie on one polynomial single out their sender
(``PeerMisbehaved``). The shell leaves those workers out of the round and
starts the attempt over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsock.errors import PeerMisbehaved as PeerMisbehaved  # defined with the others, importable from here
from fedsock.errors import RemoteProtocolError
from fedsock.errors import TooFewWorkers as TooFewWorkers  # defined with the others, importable from here
from fedsock.protocol.messages import TensorSpec
from fedsock.protocol.secagg import (
    Peer,
    SecAggInbox,
    SecAggKeys,
    SecAggReveal,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
)
from fedsock.secagg import crypto, graph, shamir
from fedsock.secagg import metrics as metric_words


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"secure aggregation: {why}", code="bad_message")


@dataclass
class ChiefRound:
    """One attempt at one round.

    Args:
        round: the round being aggregated.
        attempt: the attempt number within the round (1, 2, ...).
        words: length of the masked vector's model part (model elements + 1).
        threshold: shares needed to rebuild a secret (0: a majority of each neighbourhood).
        neighbours: k for SecAgg+ (0: everyone masks with everyone).
        metrics: the metric names the rosters announce (``rosters`` sets them); their words
            (``fedsock.secagg.metrics``) follow the model part.
    """

    round: int
    attempt: int
    words: int
    threshold: int = 0
    neighbours: int = 0
    metrics: tuple[str, ...] = ()
    phase: str = "keys"
    keys: dict[int, SecAggKeys] = field(default_factory=dict)
    hoods: dict[int, tuple[int, ...]] = field(default_factory=dict)
    min_survivors: int = 0
    mailbox: dict[int, dict[int, bytes]] = field(default_factory=dict)  # receiver -> sender -> sealed
    shared: set[int] = field(default_factory=set)  # U2
    masked: set[int] = field(default_factory=set)  # U3
    reveals: dict[int, SecAggReveal] = field(default_factory=dict)
    #: reporter -> the neighbours it left out (their key or shares did not check out).
    reported: dict[int, frozenset[int]] = field(default_factory=dict)
    survivors: tuple[int, ...] = ()
    dropped: tuple[int, ...] = ()
    total: np.ndarray | None = None  # running sum of masked updates, mod 2**64

    # --- what the phase waits for -------------------------------------

    def waiting(self) -> set[int]:
        """Workers whose message the current phase still expects."""
        if self.phase == "shares":
            return set(self.hoods) - self.shared
        if self.phase == "masked":
            return self.shared - self.masked
        if self.phase == "reveal":
            return set(self.survivors) - set(self.reveals)
        return set()

    def _check(self, phase: str, worker: int, round_: int, attempt: int) -> None:
        if (round_, attempt) != (self.round, self.attempt):
            raise _bad(f"message for round {round_} attempt {attempt}; round {self.round} attempt "
                       f"{self.attempt} is under way")
        if self.phase != phase:
            raise RemoteProtocolError(f"secure aggregation: {phase} message in phase {self.phase}",
                                      code="out_of_order")
        if worker not in self.hoods:
            raise _bad(f"worker {worker} is not in this attempt")

    # --- keys -> roster -----------------------------------------------

    def add_keys(self, worker: int, msg: SecAggKeys) -> None:
        """A worker's public keys (replacing earlier ones from it in this attempt)."""
        if self.phase != "keys":
            raise RemoteProtocolError("secure aggregation: keys after the roster went out", code="out_of_order")
        check_keys(msg)
        self.keys[worker] = msg

    def drop_keys(self, worker: int) -> None:
        self.keys.pop(worker, None)

    @property
    def size(self) -> int:
        """Words of the masked vector: the model part, then the metrics' words."""
        return self.words + metric_words.WORDS * len(self.metrics)

    def rosters(self, min_workers: int, metrics: tuple[str, ...] = ()) -> dict[int, SecAggRoster]:
        """Close the key phase: each worker's roster (its neighbourhood's keys, and ``metrics``).

        Raises:
            TooFewWorkers: fewer than the threshold (or ``min_workers``) sent keys.
        """
        ids = sorted(self.keys)
        t = self.threshold or graph.default_threshold(len(ids), self.neighbours)
        if len(ids) < max(t, min_workers, 2):
            raise TooFewWorkers(f"{len(ids)} workers sent keys; {max(t, min_workers, 2)} needed")
        self.hoods = graph.neighbourhoods(ids, self.neighbours)
        if any(len(h) < t for h in self.hoods.values()):
            raise TooFewWorkers(f"threshold {t} exceeds a neighbourhood of {min(map(len, self.hoods.values()))}")
        self.threshold, self.min_survivors = t, max(t, min_workers)
        self.metrics = metrics
        self.phase = "shares"
        out = {}
        for w, hood in self.hoods.items():
            peers = tuple(Peer(v, self.keys[v].share_key, self.keys[v].mask_key) for v in hood)
            out[w] = SecAggRoster(self.round, self.attempt, w, t, self.min_survivors, len(ids), peers, metrics)
        return out

    # --- shares -> inbox ----------------------------------------------

    def add_shares(self, worker: int, msg: SecAggShares) -> None:
        """A worker's sealed shares: exactly one per neighbour."""
        self._check("shares", worker, msg.round, msg.attempt)
        if worker in self.shared:
            raise _bad("shares sent twice")
        to = {i for i, _ in msg.shares}
        expected = set(self.hoods[worker]) - {worker}
        if not to <= expected:
            raise _bad(f"shares for workers {sorted(to)}, expected {sorted(expected)}")
        if to != expected:  # it could not agree with the others' keys: it reports them
            self._report(worker, expected - to)
        for receiver, sealed in msg.shares:
            self.mailbox.setdefault(receiver, {})[worker] = sealed
        self.shared.add(worker)

    def inboxes(self) -> dict[int, SecAggInbox]:
        """Close the share phase: each sharing worker's inbox.

        Raises:
            TooFewWorkers: fewer than ``min_survivors`` shared, or a worker's
                neighbourhood holds fewer than the threshold who did.
        """
        self._need(self.shared, "sent shares")
        self.phase = "masked"
        self.total = np.zeros(self.size, dtype="<u8")
        return {w: SecAggInbox(self.round, self.attempt,
                               tuple((s, c) for s, c in sorted(self.mailbox.get(w, {}).items())
                                     if s in self.shared))
                for w in sorted(self.shared)}

    def _need(self, alive: set[int], what: str) -> None:
        if len(alive) < self.min_survivors:
            raise TooFewWorkers(f"{len(alive)} workers {what}; {self.min_survivors} needed")
        for w in alive:
            holders = len(set(self.hoods[w]) & alive)
            if holders < self.threshold:
                raise TooFewWorkers(f"worker {w} has {holders} neighbours left who {what}; "
                                    f"{self.threshold} needed to unmask")

    # --- masked updates -----------------------------------------------

    def _report(self, worker: int, accused: set[int] | tuple[int, ...]) -> None:
        accused = set(accused) & (set(self.hoods[worker]) - {worker})
        if accused:
            self.reported[worker] = self.reported.get(worker, frozenset()) | frozenset(accused)

    def check_masked(self, worker: int, round_: int, attempt: int, specs: Sequence[TensorSpec],
                     shapes: Sequence[tuple[int, ...]], excluded: tuple[int, ...] = ()) -> bool:
        """Before reading a masked update: is it expected, and of the model's shapes plus [1] (and the
        metrics' words)?

        Returns:
            False if it comes after the masking phase closed (read it and discard it).
        """
        if (round_, attempt) == (self.round, self.attempt) and self.phase in ("reveal", "done"):
            return False
        self._check("masked", worker, round_, attempt)
        if worker not in self.shared or worker in self.masked:
            raise _bad(f"worker {worker} may not send a masked update now")
        want = [*map(tuple, shapes), (1,)] + ([(self.size - self.words,)] if self.metrics else [])
        got = [tuple(s.shape) for s in specs]
        if got != want or any(s.dtype != "uint64" for s in specs):
            raise RemoteProtocolError(f"secure aggregation: masked update of shapes {got}, expected uint64 {want}",
                                      code="signature_mismatch")
        self._report(worker, excluded)
        return True

    def add_masked(self, worker: int, arrays: Sequence[np.ndarray]) -> bool:
        """Fold a masked update into the sum (mod 2**64); it is not kept.

        Only while the masking phase is open and its sender counts as one of
        its senders: one that completes later (its sender already declared
        dropped, its self mask never to be removed) is discarded.

        Returns:
            Whether it was folded.
        """
        if self.phase != "masked" or worker not in self.shared or worker in self.masked:
            return False
        assert self.total is not None
        pos = 0
        for a in arrays:
            flat = np.asarray(a).reshape(-1).view("<u8")
            part = self.total[pos:pos + flat.size]
            np.add(part, flat, out=part)
            pos += flat.size
        self.masked.add(worker)
        return True

    # --- unmask -> reveal ---------------------------------------------

    def unmask(self) -> SecAggUnmask:
        """Close the masking phase: who is in the sum, who dropped out after sharing."""
        self._need(self.masked, "sent masked updates")
        self.survivors = tuple(sorted(self.masked))
        self.dropped = tuple(sorted(self.shared - self.masked))
        self.phase = "reveal"
        return SecAggUnmask(self.round, self.attempt, self.survivors, self.dropped)

    def add_reveal(self, worker: int, msg: SecAggReveal) -> None:
        """A survivor's shares: seeds of survivors and keys of dropped workers in its neighbourhood."""
        self._check("reveal", worker, msg.round, msg.attempt)
        if worker not in self.survivors or worker in self.reveals:
            raise _bad(f"worker {worker} may not reveal now")
        hood = set(self.hoods[worker])
        if not {u for u, _ in msg.seed_shares} <= hood & set(self.survivors):
            raise _bad("seed shares of workers that are not surviving neighbours")
        if not {d for d, _ in msg.key_shares} <= hood & set(self.dropped):
            raise _bad("key shares of workers that did not drop out")
        for _, s in (*msg.seed_shares, *msg.key_shares):
            try:
                shamir.from_bytes(s)
            except shamir.ShamirError as exc:
                raise _bad(str(exc)) from None
        self.reveals[worker] = msg

    def can_finish(self) -> bool:
        """Enough shares for every seed and key to rebuild."""
        return all(len(self._shares(u, seed=True)) >= self.threshold for u in self.survivors) and all(
            len(self._shares(d, seed=False)) >= self.threshold for d in self.dropped)

    def _shares(self, owner: int, seed: bool) -> dict[int, int]:
        out = {}
        for w, msg in self.reveals.items():
            for u, s in msg.seed_shares if seed else msg.key_shares:
                if u == owner:
                    out[w] = shamir.from_bytes(s)
        return out

    def check_reveals(self) -> None:
        """The revealed shares of each secret must lie on one polynomial.

        Raises:
            PeerMisbehaved: some shares disagree with the others; ``workers``
                are their senders (empty if they cannot be singled out: then
                nobody is blamed and the attempt just fails).
        """
        blamed: set[int] = set()
        bad = []
        secrets_ = [(u, True) for u in self.survivors] + [(d, False) for d in self.dropped]
        for owner, seed in secrets_:
            shares = self._shares(owner, seed)
            if not shamir.consistent(shares, self.threshold):
                bad.append(owner)
                blamed |= shamir.liars(shares, self.threshold)
        if bad:
            who = f"; sent by {', '.join(map(str, sorted(blamed)))}" if blamed else ""
            raise PeerMisbehaved(f"revealed shares of worker(s) {', '.join(map(str, bad))} disagree{who}",
                                 frozenset(blamed))

    def finish(self) -> np.ndarray:
        """The sum of the survivors' encoded updates (``size`` words), masks removed.

        Raises:
            TooFewWorkers: too few shares for some seed or key, or the rebuilt
                secrets do not check out (not attributable to a worker).
            PeerMisbehaved: revealed shares that disagree, with their senders.
        """
        if not self.can_finish():
            raise TooFewWorkers(f"{len(self.reveals)} workers revealed shares; not enough to unmask")
        self.check_reveals()
        assert self.total is not None
        total = self.total
        for u in self.survivors:
            seed = shamir.reconstruct(self._shares(u, seed=True), self.threshold)
            if seed >= 2 ** (8 * crypto.KEY_BYTES):
                raise TooFewWorkers(f"worker {u}'s seed did not rebuild (inconsistent shares)")
            _apply(total, seed.to_bytes(crypto.KEY_BYTES, "big"), add=False)
        for d in self.dropped:
            secret = shamir.reconstruct(self._shares(d, seed=False), self.threshold)
            if secret >= 2 ** (8 * crypto.KEY_BYTES):
                raise TooFewWorkers(f"worker {d}'s key did not rebuild (inconsistent shares)")
            sk = crypto.private_from_bytes(secret.to_bytes(crypto.KEY_BYTES, "big"))
            if crypto.public_bytes(sk) != self.keys[d].mask_key:
                raise TooFewWorkers(f"worker {d}'s mask key did not rebuild (inconsistent shares)")
            for v in self.survivors:
                if v in self.hoods[d] and v != d:
                    # v added +PRG(s_vd) if v < d, else -PRG(s_vd): take it back out.
                    key = crypto.agree(sk, self.keys[v].mask_key, crypto.MASK_LABEL, self.round, self.attempt,
                                       metric_words.layout_digest(self.metrics))
                    _apply(total, key, add=v > d)
        self.phase = "done"
        self.total = None
        return total


def check_keys(msg: SecAggKeys) -> None:
    """Both public keys must be distinct, usable X25519 points (a trial agreement each).

    Raises:
        RemoteProtocolError: equal keys, or a low-order or malformed point.
    """
    if msg.share_key == msg.mask_key:
        raise _bad("the two public keys must differ")
    for name, key in (("share key", msg.share_key), ("mask key", msg.mask_key)):
        try:
            crypto.check_public(key)
        except crypto.CryptoError as exc:
            raise _bad(f"the {name} is refused: {exc}") from None


def _apply(total: np.ndarray, key: bytes, add: bool) -> None:
    pos = 0
    for blk in crypto.mask_blocks(key, len(total)):
        part = total[pos:pos + len(blk)]
        if add:
            np.add(part, blk, out=part)
        else:
            np.subtract(part, blk, out=part)
        pos += len(blk)
