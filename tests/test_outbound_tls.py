"""TLS when delivering (manual: "TLS Sending Connection Settings"): the four combinations of
require-tls and skip-verification, per message (o:require-tls, o:skip-verification) and per
domain (the connection settings), against capture servers with a self-signed certificate and
with one from a CA we are told to trust."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, Running
from tests.test_outbound_delivery import deliver, events_of

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
MX_NAME = "mx.dest.example.test"


@dataclass
class Pki:
    ca_file: str
    trusted: ssl.SSLContext  # a certificate for MX_NAME signed by the CA in ca_file
    self_signed: ssl.SSLContext  # a certificate for MX_NAME nobody vouches for


def _key_and_name(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    return ec.generate_private_key(ec.SECP256R1()), x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )


def _certificate(subject: x509.Name, key: Any, issuer: x509.Name, signer: Any,
                 *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(MX_NAME)]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _server_context(tmp: Path, name: str, cert: x509.Certificate, key: Any) -> ssl.SSLContext:
    cert_file, key_file = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca_key, ca_name = _key_and_name("Test delivery CA")
    ca_cert = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    (tmp / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    mx_key, mx_name = _key_and_name(MX_NAME)
    trusted = _certificate(mx_name, mx_key, ca_name, ca_key, ca=False)
    self_signed = _certificate(mx_name, mx_key, mx_name, mx_key, ca=False)
    return Pki(
        ca_file=str(tmp / "ca.pem"),
        trusted=_server_context(tmp, "trusted", trusted, mx_key),
        self_signed=_server_context(tmp, "self-signed", self_signed, mx_key),
    )


@pytest.fixture
async def captures() -> AsyncIterator[Callable[..., Any]]:
    started: list[Capture] = []

    async def start(**kwargs: Any) -> Capture:
        capture = await start_capture(**kwargs)
        started.append(capture)
        return capture

    yield start
    for capture in started:
        await capture.close()


async def sender(start_server: Callable[..., Any], mx: Capture, pki: Pki, **overrides: Any
                 ) -> Running:
    return await start_server(
        outbound__enabled=True,
        outbound__tls_ca_file=pki.ca_file,
        outbound__retry_intervals_s=[60],
        dns__static_mx={DEST: [f"{MX_NAME}:{mx.port}"]},
        dns__answers={f"{MX_NAME} A": ["127.0.0.1"]},
        **overrides,
    )


def status_of(event: dict[str, Any]) -> tuple[bool, bool, str]:
    status = event["delivery-status"]
    return status["tls"], status["certificate-verified"], status["mx-host"]


async def test_default_policy_delivers_over_verified_tls(start_server, captures, pki):
    mx = await captures(tls=pki.trusted)
    running = await sender(start_server, mx, pki)
    await deliver(running, f"alice@{DEST}")
    [got] = await mx.wait_for(1)
    assert got.tls
    [event] = await events_of(running, "delivered")
    assert status_of(event) == (True, True, MX_NAME)


async def test_default_policy_falls_back_to_plain_text_when_the_certificate_is_not_verified(
    start_server, captures, pki
):
    """require-tls false, skip-verification false: "If either one can not be verified, a TLS
    connection will not be established" and the message goes in plain text."""
    mx = await captures(tls=pki.self_signed)
    running = await sender(start_server, mx, pki)
    await deliver(running, f"alice@{DEST}")
    [got] = await mx.wait_for(1)
    assert not got.tls
    [event] = await events_of(running, "delivered")
    assert status_of(event) == (False, False, MX_NAME)


async def test_default_policy_delivers_in_plain_text_when_starttls_is_not_offered(
    start_server, captures, pki
):
    mx = await captures()
    running = await sender(start_server, mx, pki)
    await deliver(running, f"alice@{DEST}")
    [got] = await mx.wait_for(1)
    assert not got.tls
    [event] = await events_of(running, "delivered")
    assert status_of(event)[:2] == (False, False)


async def test_skip_verification_accepts_any_certificate(start_server, captures, pki):
    mx = await captures(tls=pki.self_signed)
    running = await sender(start_server, mx, pki)
    await deliver(running, f"alice@{DEST}", **{"o:skip-verification": "yes"})
    [got] = await mx.wait_for(1)
    assert got.tls
    [event] = await events_of(running, "delivered")
    assert status_of(event) == (True, False, MX_NAME)


async def test_require_tls_refuses_an_unverified_certificate_and_retries_later(
    start_server, captures, pki
):
    mx = await captures(tls=pki.self_signed)
    running = await sender(start_server, mx, pki)
    await deliver(running, f"alice@{DEST}", **{"o:require-tls": "yes"})
    [event] = await events_of(running, "failed")
    assert event["severity"] == "temporary"
    assert event["delivery-status"]["enhanced-code"] == "4.7.5"
    assert "could not be verified" in event["delivery-status"]["message"]
    assert event["delivery-status"]["retry-seconds"] == 60
    assert mx.messages == []


async def test_require_tls_refuses_a_host_without_starttls(start_server, captures, pki):
    mx = await captures()
    running = await sender(start_server, mx, pki)
    await deliver(running, f"alice@{DEST}", **{"o:require-tls": "true"})
    [event] = await events_of(running, "failed")
    assert event["severity"] == "temporary"
    assert event["delivery-status"]["enhanced-code"] == "4.7.4"
    assert "does not offer STARTTLS" in event["delivery-status"]["message"]
    assert mx.messages == []


async def test_require_tls_delivers_over_a_verified_certificate(start_server, captures, pki):
    mx = await captures(tls=pki.trusted)
    running = await sender(start_server, mx, pki)
    await deliver(running, f"alice@{DEST}", **{"o:require-tls": "yes"})
    [got] = await mx.wait_for(1)
    assert got.tls
    [event] = await events_of(running, "delivered")
    assert status_of(event) == (True, True, MX_NAME)


async def test_require_tls_with_skip_verification_delivers_over_any_certificate(
    start_server, captures, pki
):
    mx = await captures(tls=pki.self_signed)
    running = await sender(start_server, mx, pki)
    await deliver(
        running, f"alice@{DEST}", **{"o:require-tls": "yes", "o:skip-verification": "yes"}
    )
    [got] = await mx.wait_for(1)
    assert got.tls
    [event] = await events_of(running, "delivered")
    assert status_of(event) == (True, False, MX_NAME)


async def test_require_tls_header_over_smtp_style_headers_is_honoured(
    start_server, captures, pki
):
    """The X-Mailgun-Require-TLS header of a pre-built message is the same option."""
    mx = await captures()
    running = await sender(start_server, mx, pki)
    mime = (
        f"From: sender@{DOMAIN}\r\nTo: alice@{DEST}\r\nSubject: hi\r\n"
        "X-Mailgun-Require-TLS: yes\r\n\r\nbody\r\n"
    )
    async with running.session() as api:
        form = {"to": f"alice@{DEST}", "message": mime}
        async with api.post(f"/v3/{DOMAIN}/messages.mime", data=form) as resp:
            assert resp.status == 200, await resp.text()
    [event] = await events_of(running, "failed")
    assert event["delivery-status"]["enhanced-code"] == "4.7.4"
    assert mx.messages == []


async def test_connection_settings_are_read_and_updated_like_mailgun(start_server, captures, pki):
    mx = await captures()
    running = await sender(start_server, mx, pki)
    async with running.session() as api:
        async with api.get(f"/v3/domains/{DOMAIN}/connection") as resp:
            assert await resp.json() == {
                "connection": {"require_tls": False, "skip_verification": False}
            }
        form = {"require_tls": "true", "skip_verification": "false"}
        async with api.put(f"/v3/domains/{DOMAIN}/connection", data=form) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "message": "Domain connection settings have been updated, may take 10 minutes"
                " to fully propagate",
                "require-tls": True,
                "skip-verification": False,
            }
        async with api.get(f"/v4/domains/{DOMAIN}") as resp:
            assert (await resp.json())["domain"]["require_tls"] is True
        async with api.put(f"/v3/domains/{DOMAIN}/connection", data={"require_tls": "maybe"}
                           ) as resp:
            assert resp.status == 400
            assert "require_tls" in (await resp.json())["message"]
        async with api.get("/v3/domains/nope.example.test/connection") as resp:
            assert resp.status == 404
            assert await resp.json() == {"message": "Domain not found"}


async def test_the_domains_require_tls_applies_unless_the_message_says_otherwise(
    start_server, captures, pki
):
    mx = await captures()
    running = await sender(start_server, mx, pki)
    form = {"require_tls": "yes"}
    async with (
        running.session() as api,
        api.put(f"/v3/domains/{DOMAIN}/connection", data=form) as resp,
    ):
        assert resp.status == 200
    await deliver(running, f"strict@{DEST}")
    await deliver(running, f"relaxed@{DEST}", **{"o:require-tls": "no"})
    [got] = await mx.wait_for(1)
    assert got.rcpt_to == f"relaxed@{DEST}"
    [failed] = await events_of(running, "failed")
    assert failed["recipient"] == f"strict@{DEST}"
    assert failed["delivery-status"]["enhanced-code"] == "4.7.4"
