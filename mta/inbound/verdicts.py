"""Verdicts on inbound mail: SPF (pyspf), DKIM (dkimpy) and a SpamAssassin score (spamd).

They become Mailgun's headers X-Mailgun-Spf, X-Mailgun-Dkim-Check-Result, X-Mailgun-Sscore and
X-Mailgun-Sflag. pyspf and dkimpy are synchronous and would do their own DNS: they run in worker
threads, and every look-up they make is handed back to our async `Resolver` on the event loop
(so configured answers and timeouts apply, and tests never reach public DNS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dkim
import spf

from mta.config import Config, parse_listen
from mta.dns import DnsError, Resolver

log = logging.getLogger("mta.inbound")

# RFC 7208 §4.6.4: SPF evaluation should be allowed at least 20 seconds in all
TIME_LIMIT_S = 20.0
MAX_DKIM_SIGNATURES = 5  # more are not checked (each costs a DNS look-up)
MAX_SPAMD_REPLY = 65536
WORKERS = 32  # SPF and DKIM checks running at once; more wait

SPF_RESULTS = {
    "pass": "Pass",
    "neutral": "Neutral",
    "fail": "Fail",
    "softfail": "SoftFail",
    "none": "None",
    "temperror": "TempError",
    "permerror": "PermError",
}
_SPF_TYPES = frozenset(("A", "AAAA", "MX", "PTR", "TXT"))
_DKIM_HEADER = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_SPAMD_STATUS = re.compile(rb"^SPAMD/\d+\.\d+\s+(\d+)\s*(.*)$")
_SPAMD_SPAM = re.compile(rb"^Spam:\s*\w+\s*;\s*(-?\d+(?:\.\d+)?)\s*/", re.IGNORECASE)


class _DebugOnly(logging.LoggerAdapter):  # type: ignore[type-arg]
    """dkimpy logs a sender's bad signature as an error: for us it is a verdict, not a fault."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_DKIM_LOG = _DebugOnly(logging.getLogger("mta.inbound.dkim"), {})


@dataclass(frozen=True)
class Verdict:
    """What was found; an empty spf/dkim or a None score means "not checked": no header."""

    spf: str
    dkim: str
    score: float | None
    spam: bool | None
    passed: frozenset[str] = frozenset()  # domains that passed: SPF's sender, DKIM's d=

    def headers(self) -> list[tuple[str, str]]:
        headers = []
        if self.spf:
            headers.append(("X-Mailgun-Spf", self.spf))
        if self.dkim:
            headers.append(("X-Mailgun-Dkim-Check-Result", self.dkim))
        if self.score is not None:
            headers.append(("X-Mailgun-Sscore", f"{round(self.score, 1) + 0.0:.1f}"))
            headers.append(("X-Mailgun-Sflag", "Yes" if self.spam else "No"))
        return headers


class Unanswered(Exception):
    """A look-up got neither yes nor no in time (DNS failure or the time limit)."""


class SyncDns:
    """Our async resolver for library code in a worker thread: each look-up runs on the event
    loop and is waited for, all of them within one deadline."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop, seconds: float):
        self._resolver = resolver
        self._loop = loop
        self._deadline = time.monotonic() + seconds

    def query(self, name: str, rdtype: str) -> list[str]:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise Unanswered(f"{name} {rdtype}: time limit reached")
        future = asyncio.run_coroutine_threadsafe(self._resolver.query(name, rdtype), self._loop)
        try:
            return future.result(timeout=remaining)
        except TimeoutError:
            future.cancel()
            raise Unanswered(f"{name} {rdtype}: time limit reached") from None
        except DnsError as exc:
            raise Unanswered(str(exc)) from None


class SpfQuery(spf.query):
    """pyspf's query with `dns` (its one path to DNS, holding its per-query cache and the void
    look-up limit) answered by our resolver instead of pyspf's module-level DNSLookup."""

    def __init__(self, lookup: Callable[[str, str], list[str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lookup = lookup

    def dns(
        self, name: str, qtype: str, cnames: Any = None, ignore_void: bool = False
    ) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # not a valid DNS name: no data, as pyspf does
        key = (name, qtype)
        if key not in self.cache:
            records = []
            if qtype in _SPF_TYPES:  # type SPF (99) is obsolete (RFC 7208 §3.1)
                try:
                    records = self._lookup(name, qtype)
                except Unanswered as exc:
                    raise spf.TempError(f"DNS {exc}") from None
            self.cache[key] = [v for v in (_spf_value(qtype, r) for r in records) if v]
        result = self.cache[key]
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


def _spf_value(qtype: str, record: str) -> Any:
    """Our resolver's text in the shape pyspf's own DNS drivers give."""
    if qtype == "TXT":
        return [record.encode("utf-8")]  # a TXT record's strings (already joined)
    if qtype == "MX":
        preference, _, host = record.partition(" ")
        return (int(preference), host) if preference.isdigit() and host else None
    return record


def check_spf(dns: SyncDns, client_ip: str, sender: str, helo: str) -> str:
    """pyspf's result, capitalised; "" when the client address is not one (nothing to check)."""
    try:
        ipaddress.ip_address(client_ip)
    except ValueError:
        return ""
    try:
        query = SpfQuery(dns.query, i=client_ip, s=sender, h=helo)
        result, _code, _explanation = query.check()
    except Exception:  # a pyspf failure must not stop the mail
        log.warning("SPF check of %s from %s failed", sender, client_ip, exc_info=True)
        return "TempError"
    return SPF_RESULTS.get(result, "PermError")


def check_dkim(dns: SyncDns, mime: bytes) -> tuple[str, str]:
    """Pass if a DKIM signature verifies (the first MAX_DKIM_SIGNATURES are tried), Fail if
    none does or the key cannot be fetched, "" when the message is not signed; and the d=
    domain of the signature that passed."""

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = dns.query(name.decode("ascii"), "TXT")
        except UnicodeDecodeError:
            return None
        except Unanswered as exc:
            raise dkim.DnsTimeoutError(str(exc)) from None
        keys = [r for r in records if "p=" in r] or records
        return keys[0].encode("utf-8") if keys else None

    try:
        message = dkim.DKIM(mime, logger=_DKIM_LOG)
    except dkim.DKIMException:
        # unparsable header block: a signature in it cannot verify
        split = _HEAD_END.search(mime)
        signed = _DKIM_HEADER.search(mime[: split.start()] if split else mime)
        return ("Fail" if signed else ""), ""
    signatures = sum(1 for name, _ in message.headers if name.lower() == b"dkim-signature")
    if not signatures:
        return "", ""
    for idx in range(min(signatures, MAX_DKIM_SIGNATURES)):
        try:
            if message.verify(idx, dnsfunc=txt):
                domain = message.domain or b""
                return "Pass", domain.decode("ascii", "replace").lower()
        except dkim.DKIMException:
            continue  # a malformed signature
        except Exception:  # a dkimpy failure must not stop the mail
            log.warning("DKIM check failed", exc_info=True)
    return "Fail", ""


class Verdicts:
    """Checks one inbound message; SPF, DKIM and spamd run side by side."""

    def __init__(
        self, config: Config, resolver: Resolver, time_limit_s: float = TIME_LIMIT_S
    ) -> None:
        self._config = config.spam
        self._resolver = resolver
        self._time_limit_s = time_limit_s
        self._spamd = parse_listen("spam.spamd", config.spam.spamd) if config.spam.spamd else None
        # threads of their own: they mostly wait for DNS (up to time_limit_s), and would
        # otherwise hold the default executor's threads that other work needs
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="verdicts")

    async def check(self, mime: bytes, sender: str, client_ip: str, helo: str) -> Verdict:
        (spf_result, dkim_result, passed), score = await asyncio.gather(
            self._authenticate(mime, sender, client_ip, helo), self.spam_score(mime)
        )
        spam = None if score is None else score >= self._config.threshold
        return Verdict(spf_result, dkim_result, score, spam, passed)

    async def authenticate(
        self, mime: bytes, sender: str, client_ip: str, helo: str
    ) -> frozenset[str]:
        """The domains that SPF (the envelope sender's, else HELO's) or DKIM (d=) vouch for."""
        return (await self._authenticate(mime, sender, client_ip, helo))[2]

    async def _authenticate(
        self, mime: bytes, sender: str, client_ip: str, helo: str
    ) -> tuple[str, str, frozenset[str]]:
        loop = asyncio.get_running_loop()
        spf_dns = SyncDns(self._resolver, loop, self._time_limit_s)
        dkim_dns = SyncDns(self._resolver, loop, self._time_limit_s)
        spf_result, (dkim_result, signer) = await asyncio.gather(
            loop.run_in_executor(self._pool, check_spf, spf_dns, client_ip, sender, helo),
            loop.run_in_executor(self._pool, check_dkim, dkim_dns, mime),
        )
        passed = {signer} if dkim_result == "Pass" else set()
        if spf_result == "Pass":
            passed.add((sender.rpartition("@")[2] if sender else helo).lower())
        return spf_result, dkim_result, frozenset(passed)

    async def spam_score(self, mime: bytes) -> float | None:
        """spamd's score (its own threshold is ignored); None when there is no spamd, the
        message is larger than spam.max_bytes, or spamd does not answer: mail still flows."""
        if self._spamd is None or len(mime) > self._config.max_bytes:
            return None
        try:
            return await asyncio.wait_for(self._ask_spamd(mime), self._config.timeout_s)
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning(
                "spamd at %s: %s; no spam score",
                self._config.spamd,
                str(exc) or exc.__class__.__name__,
            )
            return None

    async def _ask_spamd(self, mime: bytes) -> float:
        """One SPAMC/1.5 CHECK exchange (the reply is a status line and a Spam: header)."""
        assert self._spamd is not None
        reader, writer = await asyncio.open_connection(*self._spamd)
        try:
            writer.write(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(mime))
            writer.write(mime)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            reply = b""
            while len(reply) < MAX_SPAMD_REPLY and (chunk := await reader.read(4096)):
                reply += chunk
        finally:
            writer.close()
        lines = reply.splitlines()
        status = _SPAMD_STATUS.match(lines[0]) if lines else None
        if status is None:
            raise ValueError(f"unexpected reply {reply[:80]!r}")
        if status.group(1) != b"0":
            raise ValueError(f"error {status.group(1).decode()} {status.group(2).decode()}")
        for line in lines[1:]:
            if spam := _SPAMD_SPAM.match(line):
                return float(spam.group(1))
        raise ValueError(f"no Spam header in {reply[:80]!r}")
