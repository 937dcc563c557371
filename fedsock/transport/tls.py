"""TLS 1.3 contexts, the chief's self-signed certificate and the join token.

A join token (kubeadm style) is ``fs1.<sha256 of the chief certificate, hex>.<secret, hex>``.
The worker pins the certificate by that fingerprint (no CA file needed) and
proves it knows the secret with an HMAC over a fresh challenge; the secret
never crosses the wire.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from fedsock import limits, statefiles
from fedsock.errors import AuthenticationError, ConfigError
from fedsock.protocol.identity import NAME_RULE, is_valid_name

TOKEN_PREFIX = "fs1"
AUTH_LABEL = b"fedsock-auth-v1\x00"


def check_name(name: str) -> str:
    """A worker name given by the user (``--name``, per-worker tokens, certificates).

    The rule is Hello's (``fedsock.protocol.identity``), with a ``ConfigError``.

    Raises:
        ConfigError: empty, too long, or with characters other than letters,
            digits and ``_ . @ -``.
    """
    if not is_valid_name(name):
        raise ConfigError(f"bad worker name {name!r}: use {NAME_RULE}")
    return name


@dataclass(frozen=True)
class JoinToken:
    """What a worker needs to join: the chief's certificate fingerprint and a secret.

    The shared join token is ``fs1.<fingerprint>.<secret>``; a per-worker
    token adds the worker's identity: ``fs1.<fingerprint>.<secret>.<name>``.
    """

    fingerprint: bytes  # SHA-256 of the DER certificate
    secret: bytes
    name: str | None = None

    def __str__(self) -> str:
        base = f"{TOKEN_PREFIX}.{self.fingerprint.hex()}.{self.secret.hex()}"
        return f"{base}.{self.name}" if self.name else base

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Parse a token string.

        Raises:
            ConfigError: it is not a fedsock join token.
        """
        parts = text.strip().split(".", 3)
        try:
            if len(parts) not in (3, 4) or parts[0] != TOKEN_PREFIX:
                raise ValueError
            fp, secret = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
            if len(fp) != 32 or len(secret) != limits.SECRET_BYTES:
                raise ValueError
            name = check_name(parts[3]) if len(parts) == 4 else None
        except (ValueError, ConfigError):
            raise ConfigError(
                "malformed join token: expected fs1.<64 hex digits>.<64 hex digits>[.<worker name>], "
                "as printed by the chief (shared token in <state-dir>/token) or by 'fedsock token create'"
            ) from None
        return cls(fp, secret, name)


def auth_mac(secret: bytes, nonce: bytes, fingerprint: bytes, name: str) -> bytes:
    """HMAC-SHA256 a worker sends in ``Auth``.

    It covers the chief's nonce (so it cannot be replayed on another
    connection), the certificate fingerprint (binding it to this chief) and
    the worker's name (so it cannot be replayed under another name).
    """
    msg = AUTH_LABEL + nonce + fingerprint + name.encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


def verify_mac(secret: bytes, nonce: bytes, fingerprint: bytes, name: str, mac: bytes) -> bool:
    """Constant-time check of a worker's ``Auth`` mac."""
    return hmac.compare_digest(auth_mac(secret, nonce, fingerprint, name), mac)


def cert_fingerprint(der: bytes) -> bytes:
    """SHA-256 of a DER certificate."""
    return hashlib.sha256(der).digest()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, 0600 from the start, replacing (never following) what is there."""
    from fedsock.checkpoint import atomic_write

    atomic_write(path, data)


def make_self_signed(hosts: list[str]) -> tuple[bytes, bytes]:
    """A new EC P-256 key and a self-signed certificate for ``hosts`` (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsock chief")])
    sans: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class ChiefIdentity:
    """The chief's TLS files and join token inside its state dir."""

    cert_path: Path
    key_path: Path
    token: JoinToken
    created: bool


def ensure_identity(state_dir: Path, hosts: list[str], cert_path: Path | None = None,
                    key_path: Path | None = None) -> ChiefIdentity:
    """Load the chief's key, certificate and token, creating them on first start.

    With ``cert_path``/``key_path`` (an organisation's certificate) those are
    used instead of the self-signed pair; the token pins that certificate.

    Raises:
        ConfigError: the state dir holds a token that does not match the
            certificate (e.g. files copied from another chief).
    """
    statefiles.ensure_dir(state_dir)
    token_path = state_dir / "token"
    statefiles.check_regular(token_path)
    created = False
    if cert_path is not None and key_path is not None:
        if not cert_path.exists() or not key_path.exists():
            raise ConfigError(f"--cert {cert_path} or --key {key_path} does not exist")
    else:
        key_path, cert_path = state_dir / "chief.key", state_dir / "chief.crt"
        for own in (key_path, cert_path):  # the chief's own files: no symlinks, none of another user
            statefiles.check_regular(own)
    if not cert_path.exists() or not key_path.exists():
        key_pem, cert_pem = make_self_signed(hosts + ["localhost", "127.0.0.1", socket.gethostname()])
        _write_private(key_path, key_pem)
        _write_private(cert_path, cert_pem)
        created = True
    try:
        fp = cert_fingerprint(ssl.PEM_cert_to_DER_cert(statefiles.read_text(cert_path)))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{cert_path} is not a PEM certificate: {exc}") from None
    if token_path.exists() and not created:
        token = JoinToken.parse(statefiles.read_text(token_path))
        if token.fingerprint != fp:
            raise ConfigError(
                f"{token_path} belongs to another certificate than {cert_path}; "
                "remove the token file to issue a new one (workers then need the new token)"
            )
    else:
        token = JoinToken(fp, secrets.token_bytes(limits.SECRET_BYTES))
        _write_private(token_path, (str(token) + "\n").encode())
    return ChiefIdentity(cert_path, key_path, token, created)


def server_context(cert_path: Path, key_path: Path, ca_path: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3-only server context; with ``ca_path``, client certificates signed by that CA are required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(cert_path, key_path)
        if ca_path is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(ca_path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the chief's TLS files ({cert_path}, {key_path}, {ca_path}): {exc}") from None
    return ctx


def mutual_client_context(ca_path: Path, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """TLS 1.3 client context for a PKI: verify the chief against ``ca_path`` (and its
    host name), present our own client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_verify_locations(cafile=str(ca_path))
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the worker's TLS files ({ca_path}, {cert_path}, {key_path}): {exc}") from None
    return ctx


def peer_identity(sock_or_obj: ssl.SSLSocket | ssl.SSLObject) -> str | None:
    """The subject common name of the peer's (verified) certificate, if any."""
    cert = sock_or_obj.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def describe_tls_failure(exc: BaseException) -> str:
    """Say in words why a TLS handshake failed."""
    text = str(exc)
    low = text.lower()
    if "unsupported protocol" in low or "protocol version" in low or "no protocols available" in low:
        return f"the peer does not speak TLS 1.3, which fedsock requires ({text})"
    if "http request" in low:
        return "the peer spoke plaintext HTTP, not TLS"
    if "wrong version number" in low or "unknown protocol" in low or "record layer failure" in low:
        return f"the peer did not speak TLS (plaintext or garbage) ({text})"
    if "certificate has expired" in low or "expired" in low:
        return f"a certificate has expired ({text})"
    if "certificate required" in low or "peer did not return a certificate" in low:
        return "the peer presented no client certificate, which this chief requires (--ca)"
    if "certificate verify failed" in low or "unknown ca" in low or "bad certificate" in low:
        return f"a certificate was rejected: not signed by the trusted CA, wrong host name or revoked ({text})"
    return text or type(exc).__name__


def is_fatal_tls_error(exc: ssl.SSLError) -> bool:
    """Whether a TLS failure will not go away by retrying (certificates, versions, not TLS);
    a torn or reset connection (e.g. a chief being restarted) is worth retrying."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return False
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    text = str(exc).lower()
    return any(w in text for w in ("alert", "certificate", "version", "unsupported protocol", "no protocols"))


def client_context() -> ssl.SSLContext:
    """TLS 1.3-only client context for a fingerprint-pinned chief.

    Chain and hostname verification are replaced by pinning: after the
    handshake, ``check_pinned`` compares the certificate's SHA-256 with the
    token, before a single application byte is sent.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_pinned(sock: ssl.SSLSocket, fingerprint: bytes) -> None:
    """Raise unless the peer's certificate has the pinned fingerprint.

    Raises:
        AuthenticationError: a different certificate (wrong token, or someone
            in between).
    """
    der = sock.getpeercert(binary_form=True)
    if der is None or not hmac.compare_digest(cert_fingerprint(der), fingerprint):
        got = cert_fingerprint(der).hex()[:16] if der else "none"
        raise AuthenticationError(
            f"authentication failed: the chief's certificate (sha256 {got}...) does not "
            f"match the pinned fingerprint in the token (sha256 {fingerprint.hex()[:16]}...); check the "
            "token or the address"
        )
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > cert.not_valid_after_utc:
        raise AuthenticationError(
            f"the chief's certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; the chief "
            "must make a new one (remove chief.crt and chief.key from its state dir) and hand out the new token"
        )
    if now < cert.not_valid_before_utc:
        raise AuthenticationError(
            f"the chief's certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
            "check the clocks"
        )
