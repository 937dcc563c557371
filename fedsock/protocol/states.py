"""Who may send what when: the roles, the phases and the one table of legal messages.

Conversation (W = worker, C = chief)::

    HELLO --W:Hello--> CHALLENGE --C:Challenge--> AUTH --W:Auth--> WELCOME
    WELCOME --C:Welcome(+chunks)--> ESTABLISHED
    If Hello's capabilities hold "status", Auth leads to STATUS instead of
    WELCOME: STATUS --C:Status--> CLOSED (a read-only query; nothing follows).
    ESTABLISHED: W may send Update(+chunks), Heartbeat, the SecAgg*
                 messages of secure aggregation (SecAggMasked +chunks), and
                 EvalResult if its Hello had "eval";
                 C may send Global(+chunks), Heartbeat, Done(+chunks), SecAgg*,
                 Ack if the Hello had "ack", EvalRequest(+chunks) if it had "eval"
    Error from either side, at any time, ends that side's sending; during
    the handshake it ends the conversation. Done ends the chief's sending
    (the worker may still send, e.g. its final EvalResult).
"""

from __future__ import annotations

import enum

from fedsock.protocol.frames import Kind


class Role(enum.Enum):
    """Which end of the conversation a ``Connection`` is."""

    CHIEF = "chief"
    WORKER = "worker"


class Phase(enum.Enum):
    """Where the conversation is."""

    HELLO = "hello"
    CHALLENGE = "challenge"
    AUTH = "auth"
    WELCOME = "welcome"
    ESTABLISHED = "established"
    STATUS = "status"
    CLOSED = "closed"


#: Phases in which the chief has not yet received Auth (its frames are capped at
#: ``limits.MAX_PREAUTH_FRAME_BYTES``).
PREAUTH_PHASES = frozenset({Phase.HELLO, Phase.CHALLENGE, Phase.AUTH})

#: Kinds that are followed by chunks.
WEIGHTS_KINDS = frozenset({Kind.WELCOME, Kind.UPDATE, Kind.GLOBAL, Kind.DONE, Kind.SECAGG_MASKED, Kind.EVAL_REQUEST})
#: Kinds allowed only on a connection whose Hello had the "eval" capability (``Connection.evals``).
EVAL_KINDS = frozenset({Kind.EVAL_REQUEST, Kind.EVAL_RESULT})
_WORKER_SECAGG = (Kind.SECAGG_KEYS, Kind.SECAGG_SHARES, Kind.SECAGG_MASKED, Kind.SECAGG_REVEAL)
_CHIEF_SECAGG = (Kind.SECAGG_ROSTER, Kind.SECAGG_INBOX, Kind.SECAGG_UNMASK, Kind.SECAGG_ABORT)

#: (sender, phase) -> {kind: phase after it}. Error is allowed everywhere and
#: handled apart; Chunk is governed by the open stream, not by this table.
ALLOWED: dict[tuple[Role, Phase], dict[Kind, Phase]] = {
    (Role.WORKER, Phase.HELLO): {Kind.HELLO: Phase.CHALLENGE},
    (Role.CHIEF, Phase.CHALLENGE): {Kind.CHALLENGE: Phase.AUTH},
    (Role.WORKER, Phase.AUTH): {Kind.AUTH: Phase.WELCOME},
    (Role.CHIEF, Phase.WELCOME): {Kind.WELCOME: Phase.ESTABLISHED},
    (Role.CHIEF, Phase.STATUS): {Kind.STATUS: Phase.CLOSED},  # and the chief's sending ends
    (Role.WORKER, Phase.ESTABLISHED): {
        Kind.UPDATE: Phase.ESTABLISHED,
        Kind.HEARTBEAT: Phase.ESTABLISHED,
        Kind.EVAL_RESULT: Phase.ESTABLISHED,  # only if the Hello asked for it (Connection.evals)
        **{k: Phase.ESTABLISHED for k in _WORKER_SECAGG},  # their order: fedsock.secagg's state machines
    },
    (Role.CHIEF, Phase.ESTABLISHED): {
        Kind.GLOBAL: Phase.ESTABLISHED,
        Kind.HEARTBEAT: Phase.ESTABLISHED,
        Kind.DONE: Phase.ESTABLISHED,  # and the chief's sending ends
        Kind.ACK: Phase.ESTABLISHED,  # only if the Hello asked for it (Connection.acks)
        Kind.EVAL_REQUEST: Phase.ESTABLISHED,  # only if the Hello had "eval" (Connection.evals)
        **{k: Phase.ESTABLISHED for k in _CHIEF_SECAGG},
    },
}
