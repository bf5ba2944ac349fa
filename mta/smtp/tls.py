"""The TLS certificate the SMTP listeners present: the operator's, or a self-signed pair made
once in the data directory so that STARTTLS works out of the box."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mta.config import Config
from mta.store import owner_only

log = logging.getLogger("mta.smtp")


def _self_signed(hostname: str, cert_path: Path, key_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    with contextlib.suppress(ValueError):  # a host name, not an address
        alt_names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older key file keeps its mode through O_TRUNC
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certificate_paths(config: Config) -> tuple[Path, Path]:
    """The configured pair, or the generated one (made on first use, and logged)."""
    if config.smtp.tls_cert:
        return Path(config.smtp.tls_cert), Path(config.smtp.tls_key)
    data = Path(config.server.data_dir)
    cert_path, key_path = data / "smtp-selfsigned.crt", data / "smtp-selfsigned.key"
    if not (cert_path.exists() and key_path.exists()):
        _self_signed(config.server.hostname, cert_path, key_path)
        log.warning("no smtp.tls_cert configured: made a self-signed certificate for %s in %s"
                    " (clients must be told not to verify it)", config.server.hostname, cert_path)
    owner_only(key_path, 0o600)
    return cert_path, key_path


def server_context(config: Config) -> ssl.SSLContext:
    cert_path, key_path = certificate_paths(config)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context
