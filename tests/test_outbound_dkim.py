"""DKIM signing: our relaxed body canonicalisation gives dkimpy's bytes, and signatures verify
with dkimpy whatever the message looks like."""

from __future__ import annotations

import random

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy

from mta.domains import generate_dkim_key
from mta.outbound.dkim import SigningError, relaxed_body, signature_header

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
PIECES = [b"a", b"word", b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b".", b"\xc3\xa9"]


@pytest.fixture(scope="module")
def key() -> tuple[str, bytes]:
    private, public = generate_dkim_key(1024)
    return private, f"v=DKIM1; k=rsa; p={public}".encode()


def on_the_wire(body: bytes) -> bytes:
    """SMTP ends the message with CRLF: what the receiving verifier canonicalises."""
    return body + b"\r\n" if body and not body.endswith(b"\r\n") else body


def random_body(rng: random.Random) -> bytes:
    return b"".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 40)))


@pytest.mark.parametrize("seed", range(300))
def test_relaxed_body_canonicalisation_matches_dkimpy(seed: int):
    body = random_body(random.Random(seed))
    assert relaxed_body(body) == RELAXED.canonicalize_body(on_the_wire(body))


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"\r\n\r\n", b"x", b"x  \t ", b"x\r\n \r\n\t\r\n", b" lead\r\n", b"a \r\n b"],
)
def test_relaxed_body_canonicalisation_matches_dkimpy_at_the_edges(body: bytes):
    assert relaxed_body(body) == RELAXED.canonicalize_body(on_the_wire(body))


@pytest.mark.parametrize("seed", range(40))
def test_signatures_verify_with_dkimpy(seed: int, key: tuple[str, bytes]):
    rng = random.Random(seed)
    private, record = key
    headers = [
        b"From: Sender <s@mg.example.test>",
        b"To: r@example.net",
        b"Subject: " + rng.choice([b"hi", b"  spaced   out  ", b"folded\r\n  line"]),
        b"Date: Sun, 22 Nov 2026 05:00:00 +0000",
        b"Message-Id: <" + str(seed).encode() + b"@mg.example.test>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
    ]
    rng.shuffle(headers)
    message = b"\r\n".join(headers) + b"\r\n\r\n" + random_body(rng)
    signed = signature_header(message, "mg.example.test", "mta", private) + on_the_wire(message)
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)


def test_a_message_without_from_is_not_signed(key: tuple[str, bytes]):
    with pytest.raises(SigningError):
        signature_header(b"To: r@example.net\r\n\r\nbody\r\n", "mg.example.test", "mta", key[0])
