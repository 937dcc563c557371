"""``fedsock certs ca|server|client``: a small PKI for mutual TLS, with ``cryptography``.

Files are PEM; private keys are written with mode 0600.

    fedsock certs ca --out pki                                # pki/ca.crt, pki/ca.key
    fedsock certs server --ca pki --host chief.example.org --host 10.0.0.5 --out pki
    fedsock certs client --ca pki --name hospital-a --out pki # pki/hospital-a.crt/.key
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsock.errors import ConfigError
from fedsock.tls import check_name


def _write_key(path: Path, key: Any) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, Any]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the CA from {ca_dir} (ca.crt, ca.key): {exc}") from None
    return cert, key


def _validity(days: float, start: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    begin = start or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    return begin, begin + datetime.timedelta(days=days)


def make_ca(out: Path, name: str = "fedsock CA", days: float = 3650) -> Path:
    """Create ``out/ca.key`` and ``out/ca.crt``. Returns the certificate path."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    begin, end = _validity(days, None)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(begin).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(out / "ca.key", key)
    _write_cert(out / "ca.crt", cert)
    return out / "ca.crt"


def _issue(ca_dir: Path, out: Path, stem: str, common_name: str, sans: list[x509.GeneralName],
           usage: x509.ObjectIdentifier, days: float, start: datetime.datetime | None) -> Path:
    ca_cert, ca_key = _load_ca(ca_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    begin, end = _validity(days, start)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(begin).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(out / f"{stem}.key", key)
    _write_cert(out / f"{stem}.crt", cert)
    return out / f"{stem}.crt"


def make_server(ca_dir: Path, out: Path, hosts: list[str], days: float = 825,
                start: datetime.datetime | None = None) -> Path:
    """A chief certificate for ``hosts`` (DNS names or IP addresses, as SANs)."""
    if not hosts:
        raise ConfigError("give the chief's host names or addresses with --host (at least one)")
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    return _issue(ca_dir, out, "server", hosts[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, days, start)


def make_client(ca_dir: Path, out: Path, name: str, days: float = 825,
                start: datetime.datetime | None = None) -> Path:
    """A worker certificate; its subject common name ``name`` is the worker's identity."""
    check_name(name)
    return _issue(ca_dir, out, name, name, [], ExtendedKeyUsageOID.CLIENT_AUTH, days, start)
