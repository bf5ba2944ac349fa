"""Inbound verdicts: SPF and DKIM checked against fixed DNS answers through our resolver, and a
spam score from a real SpamAssassin spamd started for this module."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mta.dns import Resolver
from mta.domains import generate_dkim_key
from mta.inbound.verdicts import TIME_LIMIT_S, Verdict, Verdicts
from mta.outbound.dkim import signature_header
from tests.conftest import free_port, make_config

SENDER = "alice@example.org"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@mg.example.test\r\n"
    b"Subject: Lunch on Thursday\r\n"
    b"Date: Sun, 22 Nov 2026 05:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hi Bob,\r\n\r\nshall we meet at noon by the fountain? I will bring the notes from\r\n"
    b"Tuesday's meeting so we can go through them.\r\n\r\nAlice\r\n"
)

MakeVerdicts = Callable[..., Verdicts]


@pytest.fixture
def make_verdicts(tmp_path: Path) -> MakeVerdicts:
    """Verdicts over a resolver answering only from `answers` (config overrides as
    section__key=value; time_limit_s passed on)."""

    def make(
        answers: dict[str, list[str]] | None = None,
        time_limit_s: float = TIME_LIMIT_S,
        **overrides: Any,
    ) -> Verdicts:
        config = make_config(tmp_path, dns__answers=answers or {}, **overrides)
        return Verdicts(config, Resolver(config.dns), time_limit_s)

    return make


# --- SPF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "client_ip", "expected"),
    [
        ("v=spf1 ip4:127.0.0.1 -all", "127.0.0.1", "Pass"),
        ("v=spf1 ip4:127.0.0.1 -all", "192.0.2.9", "Fail"),
        ("v=spf1 ip4:127.0.0.1 ~all", "192.0.2.9", "SoftFail"),
        ("v=spf1 ip4:127.0.0.1 ?all", "192.0.2.9", "Neutral"),
        ("v=spf1 ip4:127.0.0.1 bogus -all", "127.0.0.1", "PermError"),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::25", "Pass"),
        ("v=spf1 ip4:127.0.0.1 -all", "::ffff:127.0.0.1", "Pass"),
    ],
)
async def test_spf_results_from_the_senders_record(
    make_verdicts: MakeVerdicts, record: str, client_ip: str, expected: str
):
    verdicts = make_verdicts({"example.org TXT": [record, "google-site-verification=x"]})
    verdict = await verdicts.check(MESSAGE, SENDER, client_ip, "mail.example.org")
    assert verdict.spf == expected
    assert ("X-Mailgun-Spf", expected) in verdict.headers()


async def test_spf_none_without_a_record(make_verdicts: MakeVerdicts):
    verdict = await make_verdicts().check(MESSAGE, SENDER, "127.0.0.1", "mail.example.org")
    assert verdict.spf == "None"
    assert ("X-Mailgun-Spf", "None") in verdict.headers()


async def test_spf_follows_include_mx_and_a_through_our_resolver(make_verdicts: MakeVerdicts):
    verdicts = make_verdicts(
        {
            "example.org TXT": ["v=spf1 include:_spf.example.net a:web.example.org -all"],
            "_spf.example.net TXT": ["v=spf1 mx:example.net -all"],
            "example.net MX": ["20 mx2.example.net", "10 mx1.example.net"],
            "mx1.example.net A": ["192.0.2.1"],
            "mx2.example.net A": ["192.0.2.2"],
            "web.example.org A": ["198.51.100.7"],
        }
    )
    for ip in ("192.0.2.1", "192.0.2.2", "198.51.100.7"):
        assert (await verdicts.check(MESSAGE, SENDER, ip, "h.example.org")).spf == "Pass"
    assert (await verdicts.check(MESSAGE, SENDER, "192.0.2.3", "h.example.org")).spf == "Fail"


async def test_spf_of_a_null_sender_is_the_helo_names(make_verdicts: MakeVerdicts):
    verdicts = make_verdicts({"mail.example.org TXT": ["v=spf1 ip4:127.0.0.1 -all"]})
    assert (await verdicts.check(MESSAGE, "", "127.0.0.1", "mail.example.org")).spf == "Pass"
    assert (await verdicts.check(MESSAGE, "", "192.0.2.9", "mail.example.org")).spf == "Fail"


async def test_spf_is_not_checked_without_a_client_address(make_verdicts: MakeVerdicts):
    verdict = await make_verdicts().check(MESSAGE, SENDER, "", "mail.example.org")
    assert verdict.spf == ""
    assert [h for h, _ in verdict.headers() if h == "X-Mailgun-Spf"] == []


@contextlib.contextmanager
def silent_nameserver() -> Iterator[str]:
    """A UDP port that takes queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_spf_temperror_when_dns_does_not_answer(make_verdicts: MakeVerdicts):
    with silent_nameserver() as nameserver:
        verdicts = make_verdicts(
            dns__only_answers=False, dns__nameservers=[nameserver], dns__timeout_s=0.3
        )
        verdict = await verdicts.check(MESSAGE, SENDER, "127.0.0.1", "mail.example.org")
    assert verdict.spf == "TempError"


async def test_spf_and_dkim_are_bounded_in_time(make_verdicts: MakeVerdicts, dkim_key):
    private = dkim_key[0]
    signed = signature_header(MESSAGE, "example.org", "mta", private) + MESSAGE
    with silent_nameserver() as nameserver:
        verdicts = make_verdicts(
            dns__only_answers=False,
            dns__nameservers=[nameserver],
            dns__timeout_s=30.0,
            time_limit_s=0.5,
        )
        started = time.monotonic()
        verdict = await verdicts.check(signed, SENDER, "127.0.0.1", "mail.example.org")
    assert time.monotonic() - started < 3
    assert (verdict.spf, verdict.dkim) == ("TempError", "Fail")


# --- DKIM --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dkim_key() -> tuple[str, str]:
    return generate_dkim_key(1024)


def key_answers(public: str) -> dict[str, list[str]]:
    return {"mta._domainkey.example.org TXT": [f"k=rsa; p={public}"]}


async def test_dkim_pass_for_a_signed_message(make_verdicts: MakeVerdicts, dkim_key):
    private, public = dkim_key
    signed = signature_header(MESSAGE, "example.org", "mta", private) + MESSAGE
    verdict = await make_verdicts(key_answers(public)).check(
        signed, SENDER, "127.0.0.1", "mail.example.org"
    )
    assert verdict.dkim == "Pass"
    assert ("X-Mailgun-Dkim-Check-Result", "Pass") in verdict.headers()


async def test_dkim_fail_when_the_body_was_altered(make_verdicts: MakeVerdicts, dkim_key):
    private, public = dkim_key
    signed = signature_header(MESSAGE, "example.org", "mta", private) + MESSAGE
    altered = signed.replace(b"at noon", b"at nine")
    verdict = await make_verdicts(key_answers(public)).check(
        altered, SENDER, "127.0.0.1", "mail.example.org"
    )
    assert verdict.dkim == "Fail"
    assert ("X-Mailgun-Dkim-Check-Result", "Fail") in verdict.headers()


async def test_dkim_fail_when_the_key_is_not_published(make_verdicts: MakeVerdicts, dkim_key):
    signed = signature_header(MESSAGE, "example.org", "mta", dkim_key[0]) + MESSAGE
    verdict = await make_verdicts().check(signed, SENDER, "127.0.0.1", "mail.example.org")
    assert verdict.dkim == "Fail"


async def test_dkim_pass_when_a_later_signature_verifies(make_verdicts: MakeVerdicts, dkim_key):
    private, public = dkim_key
    other, _ = generate_dkim_key(1024)
    signed = signature_header(MESSAGE, "example.org", "mta", private) + MESSAGE
    resigned = signature_header(signed, "example.org", "mta", other) + signed
    verdict = await make_verdicts(key_answers(public)).check(
        resigned, SENDER, "127.0.0.1", "mail.example.org"
    )
    assert verdict.dkim == "Pass"


async def test_no_dkim_header_for_an_unsigned_message(make_verdicts: MakeVerdicts):
    verdict = await make_verdicts().check(MESSAGE, SENDER, "127.0.0.1", "mail.example.org")
    assert verdict.dkim == ""
    assert [h for h, _ in verdict.headers() if h == "X-Mailgun-Dkim-Check-Result"] == []


async def test_dkim_fail_for_a_malformed_signature(make_verdicts: MakeVerdicts):
    mime = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org\r\n" + MESSAGE
    verdict = await make_verdicts().check(mime, SENDER, "127.0.0.1", "mail.example.org")
    assert verdict.dkim == "Fail"


# --- headers -----------------------------------------------------------------------------------


def test_headers_of_a_full_verdict():
    verdict = Verdict(spf="SoftFail", dkim="Pass", score=2.34, spam=False)
    assert verdict.headers() == [
        ("X-Mailgun-Spf", "SoftFail"),
        ("X-Mailgun-Dkim-Check-Result", "Pass"),
        ("X-Mailgun-Sscore", "2.3"),
        ("X-Mailgun-Sflag", "No"),
    ]
    assert Verdict("Pass", "", -0.01, False).headers()[1] == ("X-Mailgun-Sscore", "0.0")
    assert Verdict("Pass", "", 1005.2, True).headers()[2] == ("X-Mailgun-Sflag", "Yes")
    assert Verdict("Pass", "", None, None).headers() == [("X-Mailgun-Spf", "Pass")]


async def test_no_spam_headers_without_spamd(make_verdicts: MakeVerdicts):
    verdict = await make_verdicts().check(MESSAGE, SENDER, "127.0.0.1", "mail.example.org")
    assert (verdict.score, verdict.spam) == (None, None)
    assert {h for h, _ in verdict.headers()} == {"X-Mailgun-Spf"}


# --- spamd -------------------------------------------------------------------------------------


def gtube_message() -> bytes:
    return MESSAGE.replace(b"Hi Bob,", b"Hi Bob, " + GTUBE.encode())


async def test_gtube_is_flagged_as_spam(make_verdicts: MakeVerdicts, spamd: str):
    verdict = await make_verdicts(spam__spamd=spamd).check(
        gtube_message(), SENDER, "127.0.0.1", "mail.example.org"
    )
    assert verdict.score is not None and verdict.score >= 100
    assert verdict.spam is True
    headers = dict(verdict.headers())
    assert headers["X-Mailgun-Sflag"] == "Yes"
    assert float(headers["X-Mailgun-Sscore"]) == pytest.approx(verdict.score, abs=0.05)


async def test_a_normal_message_is_not_spam(make_verdicts: MakeVerdicts, spamd: str):
    verdict = await make_verdicts(spam__spamd=spamd).check(
        MESSAGE, SENDER, "127.0.0.1", "mail.example.org"
    )
    assert verdict.score is not None and verdict.score < 5.0
    assert verdict.spam is False
    assert dict(verdict.headers())["X-Mailgun-Sflag"] == "No"


async def test_our_threshold_decides_not_spamds(make_verdicts: MakeVerdicts, spamd: str):
    lenient = make_verdicts(spam__spamd=spamd, spam__threshold=5000.0)
    verdict = await lenient.check(gtube_message(), SENDER, "127.0.0.1", "mail.example.org")
    assert verdict.score is not None and verdict.score >= 100
    assert verdict.spam is False
    strict = make_verdicts(spam__spamd=spamd, spam__threshold=-100.0)
    assert (await strict.check(MESSAGE, SENDER, "127.0.0.1", "mail.example.org")).spam is True


async def test_messages_over_max_bytes_get_no_score(make_verdicts: MakeVerdicts, spamd: str):
    verdicts = make_verdicts(spam__spamd=spamd, spam__max_bytes=100)
    verdict = await verdicts.check(gtube_message(), SENDER, "127.0.0.1", "mail.example.org")
    assert (verdict.score, verdict.spam) == (None, None)


async def test_spamd_down_means_no_score(make_verdicts: MakeVerdicts, caplog):
    verdicts = make_verdicts(spam__spamd=f"127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, "mta.inbound"):
        verdict = await verdicts.check(MESSAGE, SENDER, "127.0.0.1", "mail.example.org")
    assert (verdict.score, verdict.spam) == (None, None)
    assert any("spamd" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.fixture
async def silent_spamd() -> AsyncIterator[str]:
    """Accepts connections and reads, never replies."""
    done = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        await done.wait()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    done.set()
    server.close()
    await server.wait_closed()


async def test_a_silent_spamd_times_out(make_verdicts: MakeVerdicts, silent_spamd: str):
    verdicts = make_verdicts(spam__spamd=silent_spamd, spam__timeout_s=0.3)
    started = time.monotonic()
    verdict = await verdicts.check(MESSAGE, SENDER, "127.0.0.1", "mail.example.org")
    assert time.monotonic() - started < 2
    assert (verdict.score, verdict.spam) == (None, None)
