"""A worker's side of one secure-aggregation attempt, without I/O.

Create it with ``WorkerRound.start`` (which gives the ``SecAggKeys`` to send),
then feed it the chief's messages in order; each answer is the next message
to send. Anything the chief gets wrong raises ``RemoteProtocolError``.

What a *neighbour* gets wrong is not fatal: a neighbour whose key does not
agree or whose sealed shares do not open is left out of this worker's shares
and masks (``excluded``) and named to the chief (no share sealed to it in
``SecAggShares``, or ``excluded`` in ``SecAggMasked``), which drops it and
starts the attempt over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedsock.errors import RemoteProtocolError
from fedsock.protocol.secagg import (
    Peer,
    SecAggInbox,
    SecAggKeys,
    SecAggReveal,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
)
from fedsock.secagg import crypto, shamir
from fedsock.secagg import metrics as metric_words


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(why, code="bad_message")


@dataclass
class WorkerRound:
    """Secrets and progress of one attempt. Start with ``WorkerRound.start``."""

    round: int
    share_sk: X25519PrivateKey
    mask_sk: X25519PrivateKey
    seed: bytes
    phase: str = "keys"
    roster: SecAggRoster | None = None
    #: Shares this worker holds: owner id -> (share of its mask key, share of its seed).
    held: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Neighbours left out of this attempt: their key did not agree or their shares did not open.
    excluded: dict[int, str] = field(default_factory=dict)

    @classmethod
    def start(cls, round_: int) -> tuple[WorkerRound, SecAggKeys]:
        """Fresh keys and self-mask seed for an attempt at ``round_``."""
        state = cls(round_, crypto.new_private_key(), crypto.new_private_key(), os.urandom(crypto.KEY_BYTES))
        keys = SecAggKeys(round_, crypto.public_bytes(state.share_sk), crypto.public_bytes(state.mask_sk))
        return state, keys

    @property
    def attempt(self) -> int:
        assert self.roster is not None
        return self.roster.attempt

    def _check(self, phase: str, round_: int, attempt: int | None = None) -> None:
        if self.phase != phase:
            raise RemoteProtocolError(f"secure aggregation: message for phase {phase!r} in phase {self.phase!r}",
                                      code="out_of_order")
        if round_ != self.round or (attempt is not None and attempt != self.attempt):
            raise _bad(f"secure aggregation: message for round {round_} attempt {attempt}, "
                       f"this worker is at round {self.round}")

    def _peer(self, pid: int) -> Peer:
        assert self.roster is not None
        for p in self.roster.peers:
            if p.id == pid:
                return p
        raise _bad(f"secure aggregation: worker {pid} is not a neighbour")

    def carried_by(self, peer: Peer) -> bool:
        """Whether ``peer`` (a roster's entry) has this attempt's public keys."""
        mine = (crypto.public_bytes(self.share_sk), crypto.public_bytes(self.mask_sk))
        return (peer.share_key, peer.mask_key) == mine

    def on_roster(self, roster: SecAggRoster) -> SecAggShares:
        """Split the mask key and seed among the neighbours; seal each share to its holder."""
        self._check("keys", roster.round)
        self.roster = roster
        if not self.carried_by(self._peer(roster.you)):
            raise _bad("secure aggregation: the roster does not carry this worker's keys")
        xs = [p.id for p in roster.peers]
        key_sh = shamir.split(int.from_bytes(crypto.private_bytes(self.mask_sk), "big"), xs, roster.threshold)
        seed_sh = shamir.split(int.from_bytes(self.seed, "big"), xs, roster.threshold)
        self.held[roster.you] = (key_sh[roster.you], seed_sh[roster.you])
        sealed = []
        for p in roster.peers:
            if p.id == roster.you:
                continue
            try:
                key = crypto.agree(self.share_sk, p.share_key, crypto.SHARE_LABEL, roster.round, roster.attempt)
                crypto.check_public(p.mask_key)
            except crypto.CryptoError as exc:
                self.excluded[p.id] = f"its key: {exc}"
                continue
            plain = shamir.to_bytes(key_sh[p.id]) + shamir.to_bytes(seed_sh[p.id])
            sealed.append((p.id, crypto.seal(key, plain, crypto.share_aad(roster.round, roster.attempt,
                                                                          roster.you, p.id))))
        self.phase = "shares"
        return SecAggShares(roster.round, roster.attempt, tuple(sealed))

    def on_inbox(self, inbox: SecAggInbox) -> None:
        """Open the shares the neighbours sent; they are the workers to mask with."""
        self._check("shares", inbox.round, inbox.attempt)
        assert self.roster is not None
        r = self.roster
        for sender, sealed in inbox.shares:
            if sender == r.you:
                raise _bad("secure aggregation: an inbox share from this worker itself")
            peer = self._peer(sender)
            if sender in self.excluded:
                continue
            try:
                key = crypto.agree(self.share_sk, peer.share_key, crypto.SHARE_LABEL, r.round, r.attempt)
                plain = crypto.open_sealed(key, sealed, crypto.share_aad(r.round, r.attempt, sender, r.you))
                half = shamir.SHARE_BYTES
                if len(plain) != 2 * half:
                    raise crypto.CryptoError("wrong plaintext length")
                self.held[sender] = (shamir.from_bytes(plain[:half]), shamir.from_bytes(plain[half:]))
            except (crypto.CryptoError, shamir.ShamirError) as exc:
                self.excluded[sender] = f"its shares: {exc}"
        if not self.excluded and len(self.held) < r.threshold:
            raise _bad(f"secure aggregation: {len(self.held)} shares held, {r.threshold} needed")
        self.phase = "inbox"

    def mask(self, encoded: np.ndarray) -> np.ndarray:
        """Mask ``encoded`` (flat uint64, see ``fixedpoint.encode``) in place and return it.

        Adds PRG(seed) and, for every neighbour v that sent shares, +PRG(s_uv)
        if this worker's id is below v's, -PRG(s_uv) otherwise. The pairwise keys
        depend on the roster's metric names: a chief that gives two workers
        different lists (to isolate one worker's metrics) gets masks that do not cancel.
        """
        if self.phase != "inbox":
            raise RuntimeError("mask() before the inbox")
        assert self.roster is not None
        r = self.roster
        streams = [(crypto.mask_blocks(self.seed, len(encoded)), True)]
        for v in sorted(self.held):
            if v == r.you or v in self.excluded:
                continue
            try:
                key = crypto.agree(self.mask_sk, self._peer(v).mask_key, crypto.MASK_LABEL, r.round, r.attempt,
                                   metric_words.layout_digest(r.metrics))
            except crypto.CryptoError as exc:
                self.excluded[v] = f"its mask key: {exc}"
                continue
            streams.append((crypto.mask_blocks(key, len(encoded)), r.you < v))
        for blocks, positive in streams:
            pos = 0
            for blk in blocks:
                part = encoded[pos:pos + len(blk)]
                if positive:
                    np.add(part, blk, out=part)
                else:
                    np.subtract(part, blk, out=part)
                pos += len(blk)
        self.phase = "masked"
        return encoded

    def on_unmask(self, req: SecAggUnmask) -> SecAggReveal:
        """Shares of survivors' seeds and of dropped workers' mask keys: never both for one worker."""
        self._check("masked", req.round, req.attempt)
        assert self.roster is not None
        r = self.roster
        if self.excluded:
            raise _bad("secure aggregation: the chief asks to unmask an attempt in which this worker reported "
                       f"workers {', '.join(map(str, sorted(self.excluded)))}")
        if r.you not in req.survivors:
            raise _bad("secure aggregation: this worker sent its masked update but is not among the survivors")
        if len(req.survivors) < r.min_survivors:
            raise _bad(f"secure aggregation: {len(req.survivors)} survivors, fewer than {r.min_survivors}")
        self.phase = "revealed"
        seeds = tuple((u, shamir.to_bytes(self.held[u][1])) for u in req.survivors if u in self.held)
        keys = tuple((d, shamir.to_bytes(self.held[d][0])) for d in req.dropped if d in self.held and d != r.you)
        return SecAggReveal(r.round, r.attempt, seeds, keys)
