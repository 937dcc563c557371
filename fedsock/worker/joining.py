"""Joining the chief: connect, pin, authenticate, check the Welcome, read its model.

Transient failures are retried with backoff and jitter (``reconnect.Backoff``)
until a timeout; the same function serves the first join (``connect_timeout``)
and every reconnect (``reconnect_timeout``). A Welcome this worker's limits or
policy do not allow is refused here, and the chief told why.
"""

from __future__ import annotations

import errno
import logging
import ssl
import threading
import time

import numpy as np

from fedsock.errors import ChiefStopping, ClientClosed, ConnectError, ErrorCode, PolicyRefused
from fedsock.protocol import FEATURES, Error, Welcome
from fedsock.transport import tls
from fedsock.transport.channel import BlockingChannel, open_tls
from fedsock.transport.credentials import Credentials
from fedsock.transport.errors import ConnectionLost, NameInUse
from fedsock.transport.handshake import handshake
from fedsock.worker.buffers import ModelMemory
from fedsock.worker.policy import WorkerPolicy, refusal
from fedsock.worker.reconnect import Backoff, name_in_use_message

__all__ = ["accept_welcome", "join_chief"]

log = logging.getLogger("fedsock.worker")
#: Connection failures that mean nothing listens at the address (besides ConnectionRefusedError).
NOBODY_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH})


def join_chief(address: tuple[str, int], credentials: Credentials, name: str, instance: bytes,
               reconnect_secret: bytes | None, *, timeout: float, idle_timeout: float,
               heartbeat_interval: float, memory: ModelMemory, policy: WorkerPolicy,
               max_model_bytes: int, evaluations: bool = False, gone_timeout: float | None = None,
               stop: threading.Event | None = None) -> tuple[BlockingChannel, Welcome, list[np.ndarray] | None]:
    """Connect, pin, authenticate, read the Welcome's model; retry transient failures with
    backoff and jitter (``Backoff``).

    Refused or reset connections, a chief that dies mid-handshake or says
    it is busy are retried until ``timeout``; a name held by another
    connection until the chief would have let a silent one go (``idle_timeout``);
    a wrong certificate, a rejected token or a peer that does not speak TLS 1.3
    are not retried. ``evaluations``: the Hello says the worker answers evaluation requests.
    With ``gone_timeout``, attempts that all find nothing listening at the
    address for that long end the retries early, unless the chief answered one
    of them with Error ``shutdown`` (it will be back). ``stop`` set
    (``Client.close``) ends the retries at once.

    Returns:
        The channel, the Welcome (its ``reconnect_secret`` is the one to present
        next time) and the model it carried (None: the chief has none yet).

    Raises:
        ConnectError, NameInUse, AuthenticationError, PolicyRefused: as ``Client``.
        ClientClosed: ``stop`` was set.
    """
    host, port = address
    backoff = Backoff(time.monotonic(), timeout, name_hold=idle_timeout, gone=gone_timeout)
    ctx = credentials.context()
    mutual = credentials.tls_files is not None
    while True:
        channel: BlockingChannel | None = None
        refused: NameInUse | None = None
        nobody = False
        if stop is not None and stop.is_set():
            raise ClientClosed("the Client was closed while it reconnected")
        try:
            sock = open_tls(ctx, host, port, timeout, credentials.pin)
            channel = BlockingChannel(sock, idle_timeout=idle_timeout, heartbeat_interval=heartbeat_interval,
                                      send_timeout=idle_timeout, mutual_tls=mutual)
            welcome = handshake(channel, name, credentials, instance, reconnect_secret=reconnect_secret,
                                evaluations=evaluations)
            assert isinstance(welcome, Welcome)
            backoff.reached()
            if welcome.plan.heartbeat_interval is not None:  # the chief's interval, if it asks for more
                channel.heartbeat_interval = min(channel.heartbeat_interval, welcome.plan.heartbeat_interval)
            nbytes = sum(s.wire_nbytes for s in welcome.tensors)
            accept_welcome(channel, welcome, nbytes, policy, max_model_bytes)
            model = channel.read_weights(welcome.tensors, memory.allocate(nbytes))
            if stop is not None and stop.is_set():
                channel.close()
                raise ClientClosed("the Client was closed while it reconnected")
            return channel, welcome, (model if welcome.has_weights else None)
        except ssl.SSLError as exc:
            if tls.is_fatal_tls_error(exc):
                raise ConnectError(
                    f"TLS handshake with {host}:{port} failed: {tls.describe_tls_failure(exc)}"
                ) from None
            last = str(exc)
        except NameInUse as exc:
            refused, last = exc, f"the name {name!r} is in use"
        except ChiefStopping as exc:  # it will be back: wait for it however long nothing listens
            if backoff.gone is not None:
                log.warning("%s; waiting for it for up to %g s", exc, timeout)
            last, backoff.gone = str(exc), None
        except (OSError, ConnectionLost) as exc:
            last = str(exc) or type(exc).__name__
            nobody = isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) in NOBODY_ERRNOS
            if mutual and isinstance(exc, ConnectionLost) and "handshake" in last:
                # asyncio servers close without a TLS alert when they refuse a client certificate
                last += ("; with mutual TLS this means the chief refused this worker's certificate "
                         "(not signed by the chief's CA?); the chief's log says why")
        if channel is not None:
            channel.close()
        now = time.monotonic()
        delay = backoff.retry_in(now, name_in_use=refused is not None, nobody=nobody)
        if delay is None and refused is not None:
            raise NameInUse(name_in_use_message(refused.text, name, backoff.refused_for(now)))
        if delay is None and backoff.is_gone(now):
            raise ConnectError(
                f"nothing has listened at {host}:{port} for {gone_timeout:g} s ({last}): the chief has stopped, "
                "and it did not say it would be back (its run may be over); start this worker again once the "
                "chief runs again, or give it a longer --gone-timeout")
        if delay is None:
            raise ConnectError(
                f"could not reach the chief at {host}:{port} within {timeout:g} s ({last}); "
                "is it running, and is the port open?"
            )
        if refused is not None:
            log.warning("the chief at %s:%s refused the name %r: another running worker holds it; retrying "
                        "in %.1f s in case that worker has stopped (or start this one with another --name)",
                        host, port, name, delay)
        else:
            log.info("chief at %s:%s not reachable (%s); retrying in %.1f s", host, port, last, delay)
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)


def accept_welcome(channel: BlockingChannel, welcome: Welcome, nbytes: int, policy: WorkerPolicy,
                   max_model_bytes: int) -> None:
    """Refuse a Welcome (its weights ``nbytes``) this worker's limits or policy do not allow,
    telling the chief why and closing ``channel``.

    Raises:
        PolicyRefused: the plan needs a feature this worker lacks, or violates ``policy``.
        ConfigError: (as ``refusal``) the weights exceed ``max_model_bytes``.
    """
    unknown = [f for f in welcome.requires if f not in FEATURES]
    if unknown:  # a newer chief's plan needs what this worker cannot do: say so before training
        err = PolicyRefused(f"the chief requires {', '.join(unknown)}, which this worker does not implement; "
                            "upgrade fedsock on this machine")
        channel.send_quietly(Error(code=ErrorCode.UNSUPPORTED_FEATURE, message=str(err)))
        channel.close()
        raise err
    log.info("%s", policy.describe(welcome.plan))
    refused = refusal(welcome.plan, nbytes, max_model_bytes, policy)
    if refused is not None:
        channel.send_quietly(Error(code=refused[0], message=str(refused[1])))
        channel.close()
        raise refused[1]
