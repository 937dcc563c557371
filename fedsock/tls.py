"""TLS contexts, certificate pinning and join tokens: moved to ``fedsock.transport.tls``.

This module re-exports them so that existing imports (``from fedsock import tls``) keep working.
"""

from fedsock.transport.tls import (
    AUTH_LABEL,
    TOKEN_PREFIX,
    ChiefIdentity,
    JoinToken,
    auth_mac,
    cert_fingerprint,
    check_name,
    check_pinned,
    client_context,
    describe_tls_failure,
    ensure_identity,
    is_fatal_tls_error,
    make_self_signed,
    mutual_client_context,
    peer_identity,
    server_context,
    verify_mac,
)

__all__ = [
    "AUTH_LABEL", "TOKEN_PREFIX", "ChiefIdentity", "JoinToken", "auth_mac", "cert_fingerprint",
    "check_name", "check_pinned", "client_context", "describe_tls_failure", "ensure_identity",
    "is_fatal_tls_error", "make_self_signed", "mutual_client_context", "peer_identity", "server_context",
    "verify_mac",
]
