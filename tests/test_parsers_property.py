"""Property tests (hypothesis) of the three readers that see a message before anything else
does: the address-list parser (From, To, Sender: the sender policy reads them), the header-block
splitter (control headers, a stranger's X-Mailgun-* strip) and the MIME structure scanner (the
MX's part and depth caps). Whatever they are given, they answer or refuse with their own error,
and what they answer agrees with the readers downstream (the tokeniser, the bytes stored, the
stdlib parser that forwards and reports use)."""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import re
import string
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mta.accept import AcceptError, parse_addresses
from mta.accept.addresses import _split_plain, _split_tokens, split_addresses
from mta.accept.mime import HeadError, MessageHead, format_address_list, header_name
from mta.inbound.structure import TooComplex, check_structure

# bounded: a few seconds in all; no example database left in the working tree; the same
# examples on every run (a red CI names a change, not a lucky draw; explore with more examples
# and derandomize=False by hand)
BOUNDED = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FEWER = settings(BOUNDED, max_examples=60)  # generating a MIME tree costs a few ms

# -- address lists ------------------------------------------------------------------------------

# text heavy in what address lists are made of, lone surrogates (undecodable header bytes come
# through as surrogateescape) and line breaks included
ADDRESS_PIECES = [
    *'<>()[]:;@,."\\ \t', "\r\n", "\r", "\n", "\0", "a", "b", "Z", "0", "-", "_", "é", "\ud800",
    "ü", "\u3000", "a@b.example", "<a@b.example>", "Name ", "=?utf-8?q?x?=", "(c)", "((", "))",
    '"q"', "g:", ";", "..", "@[127.0.0.1]", "@[IPv6:::1]", "x" * 70 + ".example",
]
address_text = st.one_of(
    st.text(),
    st.text(st.characters(exclude_categories=())),  # surrogates too
    st.lists(st.sampled_from(ADDRESS_PIECES), max_size=20).map("".join),
)
# the same, without the characters that send split_addresses to the tokeniser
PLAIN_PIECES = [p for p in ADDRESS_PIECES if not set('"()\\:;') & set(p)]
plain_text = st.one_of(
    st.text(st.characters(exclude_characters='"()\\:;')),
    st.lists(st.sampled_from(PLAIN_PIECES), max_size=20).map("".join),
)


@given(address_text)
@BOUNDED
def test_any_text_splits_into_pairs_of_strings_without_raising(text: str):
    pairs = split_addresses(text)
    assert isinstance(pairs, list)
    for pair in pairs:
        assert isinstance(pair, tuple) and len(pair) == 2
        assert all(isinstance(part, str) for part in pair)


@given(address_text)
@BOUNDED
def test_any_text_as_an_address_field_is_parsed_or_refused_with_accept_error(text: str):
    try:
        addresses = parse_addresses([text], "to")
    except AcceptError as exc:
        assert exc.status == 400 and exc.message.startswith("to parameter")
        return
    for address in addresses:  # what is taken is an address with a lower-cased domain
        local, at, domain = address.addr.rpartition("@")
        assert local and at and domain == domain.lower()


@given(plain_text)
@BOUNDED
def test_fast_path_and_tokeniser_read_text_without_quotes_comments_or_groups_alike(text: str):
    assert _split_plain(text) == _split_tokens(text)


def test_fast_path_reads_a_comma_inside_angle_brackets_as_the_tokeniser_does():
    text = "A <a@own.example,ceo@other.example>"
    assert _split_plain(text) == _split_tokens(text)


def test_fast_path_joins_name_words_around_an_angle_address_as_the_tokeniser_does():
    assert _split_plain("a<x@y.example>c") == _split_tokens("a<x@y.example>c")


# a reasonable alphabet: display names of printable ASCII (specials get quoted and escaped by
# the writer), dot-atom local parts and LDH domains
name_text = st.text(string.ascii_letters + string.digits + " .,:;<>@()[]\"'\\-!?&", max_size=20)
atom = st.text(string.ascii_lowercase + string.digits + "!#$%&'*+/=?^_`{|}~-", min_size=1,
               max_size=8)
local_part = st.lists(atom, min_size=1, max_size=3).map(".".join)
label = st.builds(lambda a, mid, z: a + mid + z, st.sampled_from(string.ascii_lowercase),
                  st.text(string.ascii_lowercase + string.digits + "-", max_size=5),
                  st.sampled_from(string.ascii_lowercase + string.digits))
domain_name = st.lists(label, min_size=2, max_size=3).map(".".join)
mailbox = st.tuples(name_text, st.builds(lambda lp, d: f"{lp}@{d}", local_part, domain_name))


@given(st.lists(mailbox, min_size=1, max_size=5))
@BOUNDED
@example([("A, B", "a@b.example"), ('Quote "me" \\ here', "c@d.example"), ("  ", "e@f.example")])
def test_address_lists_written_by_mta_or_the_stdlib_read_back_the_same(
    mailboxes: list[tuple[str, str]],
):
    expected = [(" ".join(name.split()), addr) for name, addr in mailboxes]
    written_by_mta = format_address_list(mailboxes)
    written_by_stdlib = ", ".join(email.utils.formataddr(m) for m in mailboxes)
    assert split_addresses(written_by_mta) == expected
    assert split_addresses(written_by_stdlib) == expected
    parsed = parse_addresses([written_by_mta], "to")
    assert [(a.name, a.addr) for a in parsed] == expected


# -- header blocks ------------------------------------------------------------------------------

HEADER_NAMES = [b"From", b"to", b"Subject", b"X-Mailgun-Sflag", b"x-mailgun-spf",
                b"X-Envelope-From", b"Received", b"Content-Type", b"Bad Name", b""]
line_bytes = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
header_line = st.one_of(
    st.builds(lambda n, sep, v: n + sep + v, st.sampled_from(HEADER_NAMES),
              st.sampled_from([b": ", b":", b" : ", b""]), line_bytes),
    st.builds(lambda ws, v: ws + v, st.sampled_from([b" ", b"\t", b"  "]), line_bytes),
    st.just(b""),
    line_bytes,
)
crlf_only = st.builds(
    lambda lines, tail: b"\r\n".join(lines) + tail,
    st.lists(header_line, max_size=15),
    st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]),
)
cap_bytes = st.one_of(st.integers(0, 120), st.just(262_144))
cap_fields = st.one_of(st.integers(0, 12), st.just(1000))


def _parsed(data: bytes, max_bytes: int, max_fields: int) -> MessageHead | None:
    try:
        return MessageHead.parse(data, max_bytes, max_fields)
    except HeadError:
        return None


@given(crlf_only, cap_bytes, cap_fields)
@BOUNDED
def test_a_header_block_is_split_or_refused_with_head_error_and_loses_no_byte(
    data: bytes, max_bytes: int, max_fields: int
):
    head = _parsed(data, max_bytes, max_fields)
    if head is None:  # refused: only past one of the caps
        assert len(data) > max_bytes or data.count(b"\r\n") + 1 > max_fields
        return
    body = bytes(head.body)
    # fields and body partition the input: rejoined they are the input, byte for byte
    assert head.to_bytes() == data
    assert b"\r\n".join(head.fields) + body == data
    assert body == b"" or body.startswith(b"\r\n")
    # one field each: continuation lines stay inside, the blank line ends the block
    for field in head.fields:
        assert field and re.search(rb"\r\n(?![ \t])", field) is None
    block = b"\r\n".join(head.fields)
    assert b"\r\n\r\n" not in block and len(block) <= max_bytes


def test_a_header_block_never_splits_into_more_fields_than_the_cap():
    with pytest.raises(HeadError):
        MessageHead.parse(b" folded\r\nX-Mailgun-Sflag: No\r\n\r\nbody", 1000, 1)


@given(crlf_only, cap_fields)
@BOUNDED
def test_a_header_block_splits_into_no_more_fields_than_the_cap(data: bytes, max_fields: int):
    data = data.lstrip(b" \t")  # no continuation line first: the off-by-one above
    head = _parsed(data, 262_144, max_fields)
    if head is not None:
        assert len(head.fields) <= max_fields


@given(crlf_only, st.sets(st.sampled_from([n.decode().lower() for n in HEADER_NAMES])))
@BOUNDED
def test_without_drops_exactly_the_named_fields_and_they_never_come_back(
    data: bytes, names: set[str]
):
    head = _parsed(data, 262_144, 1000)
    assume(head is not None)
    assert head is not None
    kept = head.without(lambda name: name in names)
    assert kept.fields == [f for f in head.fields if header_name(f) not in names]
    assert not names & set(kept.names)
    assert bytes(kept.body) == bytes(head.body)
    # read again from the bytes it gives (what is stored), it is the same block: a dropped
    # field cannot reappear, nor a body line become a field
    assert MessageHead.parse(kept.to_bytes(), 262_144, 1000).fields == kept.fields


# -- MIME structure -----------------------------------------------------------------------------

BOUNDARY_CHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
boundary_text = st.text(BOUNDARY_CHARS, min_size=1, max_size=12)
DELIMITER_PADDING = ["", " ", "\t"]  # blanks after a delimiter: still a delimiter


@dataclass
class Generated:
    """A generated message and every boundary it declares."""

    mime: bytes
    boundaries: list[str]


@st.composite
def body_lines(draw: st.DrawFn, boundaries: list[str]) -> bytes:
    """Text lines, some of them delimiter look-alikes of the boundaries in use, and some
    real delimiters in odd places (both readers must count those alike)."""
    lines = []
    for _ in range(draw(st.integers(0, 3))):
        near = draw(st.sampled_from([*boundaries, "x"]))
        line = draw(st.sampled_from([
            "plain text", "", "--", f"--{near}x", f"-{near}", f"--{near} --", f" --{near}",
            f"--{near}--x", f"--{near}\t", f"--{near[:-1]}", f"--{near.upper()}",
            f"--{near}--", f"--{near}", "Content-Type: multipart/mixed; boundary=x",
        ]))
        lines.append(line)
    return "".join(f"{line}\r\n" for line in lines).encode()


@st.composite
def entity(draw: st.DrawFn, boundaries: list[str], depth: int, declared: list[str]) -> bytes:
    """A part (or the message): headers, a blank line, and a body that may be a multipart or a
    message/rfc822 of its own, down to `depth` more levels. Boundaries go into `declared`."""
    kinds = ["text"] + (["multipart", "multipart", "message"] if depth > 0 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "text":
        content_type = draw(st.sampled_from(
            ["text/plain", "application/octet-stream", "multipart/mixed", "message/partial"]
        ))  # a multipart without a boundary is a leaf to both readers
        head = f"Content-Type: {content_type}\r\n" if draw(st.booleans()) else ""
        return head.encode() + b"\r\n" + draw(body_lines(boundaries))
    if kind == "message":
        enclosed = draw(entity(boundaries, depth - 1, declared))
        return b"Content-Type: message/rfc822\r\n\r\n" + enclosed
    boundary = draw(st.one_of(boundary_text, st.sampled_from(boundaries or ["b"])))
    declared.append(boundary)
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report", "digest"]))
    quoted = draw(st.booleans())
    param = f'"{boundary}"' if quoted or not boundary.isalnum() else boundary
    fold = draw(st.sampled_from(["; ", ";\r\n\t"]))
    head = f"Content-Type: multipart/{subtype}{fold}boundary={param}\r\n\r\n".encode()
    inner = [*boundaries, boundary]
    out = [head, draw(body_lines(inner))]  # the preamble
    for _ in range(draw(st.integers(0, 3))):
        padding = draw(st.sampled_from(DELIMITER_PADDING))
        out.append(f"--{boundary}{padding}\r\n".encode())
        out.append(draw(entity(inner, depth - 1, declared)))
    if draw(st.booleans()):  # closed, or cut short
        out.append(f"--{boundary}--\r\n".encode())
        out.append(draw(body_lines(boundaries)))  # the epilogue
    return b"".join(out)


@st.composite
def mime_message(draw: st.DrawFn) -> Generated:
    declared: list[str] = []
    head = draw(st.sampled_from([b"From: a@example.org\r\n", b""]))
    return Generated(head + draw(entity([], 3, declared)), declared)


def stdlib_shape(mime: bytes) -> tuple[int, int, int]:
    """(objects walk() yields, parts of multiparts, deepest multipart nesting) of the stdlib's
    reading of `mime`, the reading forwards and reports use."""
    root = email.message_from_bytes(mime, policy=email.policy.compat32)
    objects = sum(1 for _ in root.walk())
    parts = 0
    deepest = 0

    def visit(msg: email.message.Message, depth: int) -> None:
        nonlocal parts, deepest
        payload = msg.get_payload()
        if not isinstance(payload, list):
            return
        if msg.get_content_maintype() == "multipart":
            deepest = max(deepest, depth + 1)
            parts += len(payload)
            for part in payload:
                visit(part, depth + 1)
        else:  # message/*: the enclosed message is read one level down
            for enclosed in payload:
                visit(enclosed, depth + 1)

    visit(root, 0)
    return objects, parts, deepest


MAX_DEPTH = 6  # deeper than anything generated


@given(mime_message(), st.integers(0, 6))
@FEWER
def test_a_message_within_the_part_cap_builds_no_more_stdlib_parts_and_more_are_refused(
    generated: Generated, max_parts: int
):
    objects, parts, _ = stdlib_shape(generated.mime)
    try:
        check_structure(generated.mime, max_parts, MAX_DEPTH)
    except TooComplex as exc:
        assert str(exc) == f"Message has more than {max_parts} MIME parts"
        return
    assert parts <= max_parts
    # walk() yields the message, its parts, and what each message/* part encloses
    assert objects <= (max_parts + 1) * (MAX_DEPTH + 1)


@given(mime_message(), st.integers(1, 3))
@FEWER
def test_multiparts_nested_deeper_than_the_cap_are_refused(generated: Generated, max_depth: int):
    _, _, deepest = stdlib_shape(generated.mime)
    try:
        check_structure(generated.mime, 10_000, max_depth)
    except TooComplex as exc:
        assert str(exc) == f"MIME parts nest deeper than {max_depth}"
        return
    assert deepest <= max_depth


@given(mime_message())
@FEWER
def test_any_generated_message_is_scanned_or_refused_with_too_complex(generated: Generated):
    for max_parts, max_depth in ((0, 0), (1, 1), (3, 2), (1000, 20)):
        try:
            check_structure(generated.mime, max_parts, max_depth)
        except TooComplex as exc:
            assert str(exc) in (
                f"Message has more than {max_parts} MIME parts",
                f"MIME parts nest deeper than {max_depth}",
            )


HIDDEN_PARTS = {
    # text after a delimiter: a header block to the scanner up to the blank line, the body of
    # a part to the stdlib, which ends it at the next delimiter
    "text after each delimiter": b"--b\r\nx\r\n" * 50 + b"\r\n",
    # a message/* part with an empty body: the scanner reads the next delimiter and part
    # header as the enclosed message's header block
    "empty message/rfc822 parts": b"--b\r\nContent-Type: message/rfc822\r\n\r\n" * 50,
}


@pytest.mark.parametrize("body", list(HIDDEN_PARTS.values()), ids=list(HIDDEN_PARTS))
def test_parts_hidden_behind_a_header_block_read_across_delimiters_are_counted(body: bytes):
    mime = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + body + b"--b--\r\n"
    _, parts, _ = stdlib_shape(mime)
    assert parts == 50
    with pytest.raises(TooComplex):
        check_structure(mime, 30, 20)


def test_a_delivery_status_body_of_many_blocks_is_counted_against_the_part_cap():
    mime = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        + b"X: y\r\n\r\n" * 50
        + b"--b--\r\n"
    )
    objects, _, _ = stdlib_shape(mime)
    assert objects > 50
    with pytest.raises(TooComplex):
        check_structure(mime, 10, 20)


def test_parts_inside_a_message_rfc822_past_the_depth_cap_are_not_let_through():
    inner = b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n' + b"--x\r\n\r\n" * 50
    mime = b"Content-Type: message/rfc822\r\n\r\n" * 3 + inner + b"--x--\r\n"
    _, parts, _ = stdlib_shape(mime)
    assert parts == 50
    with pytest.raises(TooComplex):
        check_structure(mime, 10, 2)
