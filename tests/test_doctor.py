"""`mta doctor` as a subprocess against a test config: DNS records (fixed answers from the
config), listeners, the SMTP certificate, and the store on both engines."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import Process, cli_env, free_port, run_cli, store_env
from tests.test_cli import records


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, env, *args, check=False)


def lines(result: subprocess.CompletedProcess[str], status: str, subject: str) -> list[str]:
    """The lines of `status` whose subject starts with `subject`."""
    return [
        line for line in result.stdout.splitlines()
        if line.split(None, 1)[:1] == [status] and line[5:].startswith(subject)
    ]


def answers(printed: dict[tuple[str, str], str]) -> str:
    """MTA_DNS_ANSWERS publishing every record `mta domain add` printed."""
    out: dict[str, list[str]] = {}
    for (name, kind), value in printed.items():
        out[f"{name} {kind}"] = [value if kind != "CNAME" else value + "."]
    return json.dumps(out)


def certificate(tmp_path: Path, days: float) -> dict[str, str]:
    """A certificate pair valid for `days` more days (negative: expired), as env settings."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.doctor.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return {"MTA_SMTP_TLS_CERT": str(cert_path), "MTA_SMTP_TLS_KEY": str(key_path)}


async def test_published_records_are_ok_and_missing_ones_say_what_to_publish(
    tmp_path: Path, store_url: str
):
    env = cli_env(tmp_path) | store_env(store_url)
    printed = records((await cli(env, "domain", "add", "good.test")).stdout)
    await cli(env, "domain", "add", "bare.test")
    await cli(env, "key", "create")
    env |= {"MTA_DNS_ANSWERS": answers(printed)} | certificate(tmp_path, 90)
    result = await cli(env, "doctor")
    assert len(lines(result, "OK", "dns good.test")) == 4, result.stdout
    assert not lines(result, "FAIL", "dns good.test") and not lines(result, "WARN", "dns good.")
    [spf, dkim] = lines(result, "FAIL", "dns bare.test")
    assert 'publish: bare.test TXT "v=spf1 a:localhost ~all"' in spf
    assert 'publish: mta._domainkey.bare.test TXT "k=rsa; p=' in dkim
    [mx] = [line for line in lines(result, "WARN", "dns bare.test") if " MX " in line]
    assert mx.endswith("publish: bare.test MX 10 localhost")
    assert lines(result, "OK", "api keys") and lines(result, "OK", "smtp tls")
    assert result.returncode == 1  # bare.test's SPF and DKIM


async def test_a_listener_not_running_fails_and_a_running_one_is_ok(
    tmp_path: Path, server_process: Callable[..., Process]
):
    port = free_port()
    env = cli_env(tmp_path, port)
    result = await cli(env, "doctor")
    [down] = lines(result, "FAIL", "api.listen")
    assert f"127.0.0.1:{port} not reachable" in down and "start `mta serve`" in down
    assert result.returncode == 1
    running = await asyncio.to_thread(server_process)
    result = await cli(env | {"MTA_API_LISTEN": running.env["MTA_API_LISTEN"]}, "doctor")
    assert lines(result, "OK", "api.listen"), result.stdout
    assert lines(result, "WARN", "smtp.mx")  # an ephemeral port: nothing to connect to


async def test_certificates_expiring_expired_and_unreadable(tmp_path: Path):
    env = cli_env(tmp_path)
    result = await cli(env | certificate(tmp_path, 3), "doctor")
    [soon] = lines(result, "WARN", "smtp tls")
    assert "expires" in soon and "renew it" in soon
    result = await cli(env | certificate(tmp_path, -1), "doctor")
    [expired] = lines(result, "FAIL", "smtp tls")
    assert "expired" in expired and result.returncode == 1
    settings = certificate(tmp_path, 90)
    Path(settings["MTA_SMTP_TLS_CERT"]).write_text("not a certificate")
    result = await cli(env | settings, "doctor")
    [unreadable] = lines(result, "FAIL", "smtp tls")
    assert "cannot read" in unreadable


async def test_store_health_on_each_engine(tmp_path: Path, store_url: str):
    env = cli_env(tmp_path) | store_env(store_url) | {"MTA_DOCTOR_MIN_FREE_DISK_MB": "0"}
    result = await cli(env, "doctor")
    store = lines(result, "OK", "store")
    if store_url:
        assert any("postgresql reachable, schema at" in line for line in store), result.stdout
    else:
        assert any("quick_check ok" in line for line in store), result.stdout
        assert any(line.endswith("mta.db mode 0600") for line in store)
    assert lines(result, "OK", "disk")
    result = await cli(env | {"MTA_DOCTOR_MIN_FREE_DISK_MB": str(10**12)}, "doctor")
    assert "below doctor.min_free_disk_mb" in lines(result, "WARN", "disk")[0]
    assert not lines(result, "FAIL", "store")
