"""What a worker needs to reach and join a chief: its address and credentials.

A join token (pinned certificate fingerprint + secret for the HMAC
challenge), or mutual TLS with an organisation's PKI (CA file, client
certificate and key: the certificate's common name is the identity).
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedsock.errors import ConfigError
from fedsock.transport import tls

if TYPE_CHECKING:
    from cryptography import x509


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port).

    Raises:
        ConfigError: no port, or not a number.
    """
    if isinstance(address, tuple):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bad chief address {address!r}: use HOST:PORT, e.g. 1.2.3.4:7777")
    return host.strip("[]"), int(port)


def token_from(token: str | tls.JoinToken | None) -> tls.JoinToken:
    """The join token given, or ``$FEDSOCK_TOKEN``.

    Raises:
        ConfigError: none given, or not a token.
    """
    tok = optional_token(token, optional=False)
    assert tok is not None
    return tok


def optional_token(token: str | tls.JoinToken | None, optional: bool) -> tls.JoinToken | None:
    """The join token given, or ``$FEDSOCK_TOKEN``; None if there is none and it is ``optional``."""
    if isinstance(token, tls.JoinToken):
        return token
    text = token or os.environ.get("FEDSOCK_TOKEN")
    if not text and optional:
        return None
    if not text:
        raise ConfigError(
            "no join token: pass --token (or token=...) or set FEDSOCK_TOKEN; the chief prints it "
            "at start and stores it in <state-dir>/token"
        )
    return tls.JoinToken.parse(text)


def _load_cert(cert: Path) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {cert}: {exc}") from None


def check_validity(cert: Path) -> None:
    """Refuse to start with a client certificate that is expired or not yet valid.

    Raises:
        ConfigError: unreadable, expired or not yet valid.
    """
    c = _load_cert(cert)
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > c.not_valid_after_utc:
        raise ConfigError(f"the client certificate {cert} expired on {c.not_valid_after_utc:%Y-%m-%d}; "
                          "ask for a new one ('fedsock certs client')")
    if now < c.not_valid_before_utc:
        raise ConfigError(f"the client certificate {cert} is not valid before {c.not_valid_before_utc:%Y-%m-%d}")


def common_name(cert: Path) -> str | None:
    """The subject common name of a PEM certificate, if it has one."""
    from cryptography.x509.oid import NameOID

    names = _load_cert(cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


@dataclass(frozen=True)
class Credentials:
    """How this worker proves who it is and recognises its chief.

    Exactly one of ``token`` (pinned fingerprint + HMAC secret) and
    ``tls_files`` (CA, client certificate, key) is the credential; with both,
    mutual TLS verifies the chief and the token's secret signs ``Auth``.
    """

    token: tls.JoinToken | None
    tls_files: tuple[Path, Path, Path] | None = None

    @classmethod
    def resolve(cls, token: str | tls.JoinToken | None, ca: str | os.PathLike[str] | None = None,
                cert: str | os.PathLike[str] | None = None,
                key: str | os.PathLike[str] | None = None) -> Credentials:
        """From the user's arguments (the token defaults to ``$FEDSOCK_TOKEN`` unless ``ca`` is given).

        Raises:
            ConfigError: no token, a malformed one, an incomplete or invalid set of TLS files.
        """
        files = (Path(ca), Path(cert), Path(key)) if ca and cert and key else None
        if ca is not None and files is None:
            raise ConfigError("mutual TLS needs ca, cert and key together")
        tok = optional_token(token, optional=ca is not None)
        if cert is not None:
            check_validity(Path(cert))
        return cls(tok, files)

    @property
    def own_name(self) -> str | None:
        """The identity the credential is bound to (a per-worker token's or the certificate's), if any."""
        if self.token is not None:
            return self.token.name
        if self.tls_files is not None:
            return common_name(self.tls_files[1])
        return None

    @property
    def pin(self) -> bytes | None:
        """The certificate fingerprint to pin (None: the CA verifies the chief)."""
        return self.token.fingerprint if self.tls_files is None and self.token is not None else None

    def context(self) -> ssl.SSLContext:
        """The TLS client context these credentials call for."""
        return tls.mutual_client_context(*self.tls_files) if self.tls_files else tls.client_context()

    def mac(self, nonce: bytes, name: str) -> bytes:
        """The ``Auth`` mac for the chief's ``nonce``; with mutual TLS the certificate is the
        credential and the mac is not checked (zeros)."""
        if self.token is None:
            return bytes(32)
        return tls.auth_mac(self.token.secret, nonce, self.token.fingerprint, name)
