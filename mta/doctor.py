"""`mta doctor` (issue 14): checks a node's set-up and prints what to fix.

One line per check: OK, WARN or FAIL, and for the last two what to do about it. The exit
status is 1 when anything FAILs, so a deploy script or a timer can run it. Every check is
cheap (a DNS lookup per published record, a connect per listener, a file read or a query).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mta.config import Config, parse_listen
from mta.services import Services
from mta.store.schema import MIGRATIONS

NAME = "doctor"
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Finding:
    status: str  # "OK", "WARN" or "FAIL"
    subject: str
    text: str

    def line(self) -> str:
        return f"{self.status:<4} {self.subject}: {self.text}"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `mta doctor` to the CLI."""
    sub.add_parser(
        NAME,
        parents=[common],
        help="check DNS, listeners, certificates, disk and store; print what to fix",
    )


def work(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    async def run(services: Services) -> int:
        findings: list[Finding] = []
        for check in (_settings, _dns, _listeners, _certificate, _disk, _store):
            findings += await check(services)
        for finding in findings:
            print(finding.line())
        failed = sum(f.status == "FAIL" for f in findings)
        warned = sum(f.status == "WARN" for f in findings)
        print(f"{len(findings)} checks: {failed} failed, {warned} warnings")
        return 1 if failed else 0

    return run


async def _settings(s: Services) -> list[Finding]:
    """Cheap things an operator forgets: a host name, an API key, outbound delivery."""
    config = s.config
    found = []
    if config.server.hostname == "localhost":
        found.append(Finding("WARN", "server.hostname", "is localhost; set it to this node's "
                             "public name (it goes into the SMTP banner and the DNS records)"))
    else:
        found.append(Finding("OK", "server.hostname", config.server.hostname))
    if await s.keys.list():
        found.append(Finding("OK", "api keys", "at least one"))
    else:
        found.append(Finding("WARN", "api keys", "none yet; create one with `mta key create`"))
    if config.outbound.enabled:
        found.append(Finding("OK", "outbound", "enabled"))
    else:
        found.append(Finding("WARN", "outbound", "disabled: mail is queued, never delivered; "
                             "set outbound.enabled = true"))
    return found


async def _dns(s: Services) -> list[Finding]:
    """Every record `mta domain records` asks to publish, looked up (and the domain's state
    updated, as `mta domain verify` does). SPF and DKIM missing is a FAIL: mail is unsigned
    or spoofable to receivers; tracking CNAME and MX are WARNs (opens/clicks, inbound)."""
    domains = [d for d in await s.domains.all() if not d.is_sandbox and not d.is_disabled]
    if not domains:
        return [Finding("WARN", "domains", "none to send from; add one with `mta domain add`")]
    found = []
    for listed in domains:
        domain = await s.domains.verify(listed.name)
        sending = s.domains.sending_records(domain)
        for record in sending + s.domains.receiving_records(domain):
            result = domain.dns_results.get(record.key, {}).get("valid", "unknown")
            what = f"{record.record_type} {record.name}"
            subject = f"dns {domain.name}"
            if result == "valid":
                found.append(Finding("OK", subject, f"{what} published"))
                continue
            value = f"{record.priority} {record.value}" if record.priority else record.value
            if record.record_type == "TXT":
                value = f'"{value}"'
            severe = record in sending[:2]
            problem = "lookup failed" if result == "unknown" else "missing or different"
            found.append(Finding("FAIL" if severe else "WARN", subject,
                                 f"{what} {problem}; publish: {record.name} "
                                 f"{record.record_type} {value}"))
    return found


def _listen_settings(config: Config) -> list[tuple[str, str]]:
    return [
        ("api.listen", config.api.listen),
        ("smtp.submission", config.smtp.submission),
        ("smtp.submission_tls", config.smtp.submission_tls),
        ("smtp.submission_alt", config.smtp.submission_alt),
        ("smtp.mx", config.smtp.mx),
    ]


async def _reachable(host: str, port: int) -> str | None:
    """None when a connection opens, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        return str(exc) or exc.__class__.__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def _listeners(s: Services) -> list[Finding]:
    """A connect to each listener address: a FAIL says the server is down or not listening
    where the config says (a wildcard address is tried on loopback)."""
    found = []
    for key, value in _listen_settings(s.config):
        host, port = parse_listen(key, value)
        if port == 0:
            found.append(Finding("WARN", key, f"{value}: an ephemeral port, not checked"))
            continue
        target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        why = await _reachable(target, port)
        if why is None:
            found.append(Finding("OK", key, f"{value} reachable"))
        else:
            found.append(Finding("FAIL", key, f"{value} not reachable ({why}); "
                                 "start `mta serve` or fix the address"))
    return found


async def _certificate(s: Services) -> list[Finding]:
    """The SMTP certificate: unreadable or expired FAILs, expiring within
    doctor.certificate_days WARNs, the generated self-signed one WARNs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    config = s.config
    subject = "smtp tls"
    if config.smtp.tls_cert:
        cert_path, key_path = Path(config.smtp.tls_cert), Path(config.smtp.tls_key)
    else:
        data = Path(config.server.data_dir)
        cert_path, key_path = data / "smtp-selfsigned.crt", data / "smtp-selfsigned.key"
        if not cert_path.exists():
            return [Finding("WARN", subject, "no smtp.tls_cert: a self-signed certificate is "
                            "made at start; set smtp.tls_cert/tls_key to a real one")]
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return [Finding("FAIL", subject, f"cannot read {cert_path} / {key_path}: {exc}; "
                        "fix smtp.tls_cert/tls_key")]
    found = []
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        found.append(Finding("FAIL", subject, f"{key_path} is not the key of {cert_path}"))
    expires = cert.not_valid_after_utc
    left = expires - datetime.datetime.now(datetime.UTC)
    when = expires.strftime("%Y-%m-%d %H:%M UTC")
    if left.total_seconds() <= 0:
        found.append(Finding("FAIL", subject, f"{cert_path} expired {when}; renew it"))
    elif left.days < config.doctor.certificate_days:
        found.append(Finding("WARN", subject, f"{cert_path} expires {when} (in {left.days} "
                             "days); renew it"))
    elif not config.smtp.tls_cert:
        found.append(Finding("WARN", subject, f"self-signed {cert_path} (until {when}); set "
                             "smtp.tls_cert/tls_key to a certificate clients can verify"))
    else:
        found.append(Finding("OK", subject, f"{cert_path} valid until {when}"))
    return found


async def _disk(s: Services) -> list[Finding]:
    data = Path(s.config.server.data_dir).absolute()
    while not data.exists() and data != data.parent:  # not made yet (a PostgreSQL store)
        data = data.parent
    try:
        usage = shutil.disk_usage(data)
    except OSError as exc:
        return [Finding("FAIL", "disk", f"cannot read {data}: {exc}")]
    free_mb = usage.free // (1024 * 1024)
    text = f"{free_mb} MB free on {data}'s disk"
    if free_mb < s.config.doctor.min_free_disk_mb:
        return [Finding("WARN", "disk", f"{text} (below doctor.min_free_disk_mb "
                        f"{s.config.doctor.min_free_disk_mb}); free some space")]
    return [Finding("OK", "disk", text)]


def _mode_finding(path: Path, wanted: int) -> Finding | None:
    """A FAIL when `path` is open to more than its owner (None when it is not there)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    if mode & ~wanted:
        return Finding("FAIL", "store", f"{path} has mode {mode:04o}; "
                       f"run chmod {wanted:04o} {path}")
    return Finding("OK", "store", f"{path} mode {mode:04o}")


async def _store(s: Services) -> list[Finding]:
    """SQLite: quick_check and owner-only files; PostgreSQL: a query and the schema level."""
    store = s.store
    found = []
    if store.dialect == "sqlite":
        rows = await store.fetchall("PRAGMA quick_check")
        results = [str(row[0]) for row in rows]
        if results == ["ok"]:
            found.append(Finding("OK", "store", "sqlite quick_check ok"))
        else:
            found.append(Finding("FAIL", "store", f"sqlite quick_check: {'; '.join(results)[:300]}"
                                 "; restore from a backup (`mta store` copies)"))
        path = s.config.db_path
        for candidate, wanted in ((path.parent, 0o700), (path, 0o600),
                                  (Path(f"{path}-wal"), 0o600), (Path(f"{path}-shm"), 0o600)):
            if (finding := _mode_finding(candidate, wanted)) is not None:
                found.append(finding)
        return found
    await store.fetchone("SELECT 1")
    row = await store.fetchone("SELECT max(version) FROM schema_version")
    level = int(row[0] or 0) if row is not None else 0
    if level == len(MIGRATIONS):
        found.append(Finding("OK", "store", f"postgresql reachable, schema at {level}"))
    else:
        found.append(Finding("FAIL", "store", f"postgresql schema at {level}, this version "
                             f"expects {len(MIGRATIONS)}; upgrade every node to one version"))
    return found
