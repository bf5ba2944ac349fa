"""A recipient's tracked copy: links through the click redirect, the open pixel, the
unsubscribe variables filled in, the domain's unsubscribe footer, and List-Unsubscribe headers.

Done on the copy about to be sent (before DKIM signs it), because every link names its
recipient: a tracked message is never one copy for everyone. Only the text parts of the message
are decoded and re-encoded; every other byte stays as it was. The MIME walk is bounded
(`max_parts`, `max_depth`) and a part it cannot read (unknown charset, broken encoding) is sent
as it came.

What is left alone, as Mailgun does: `mailto:`, `tel:` and other non-web links, in-page anchors,
and links to our own tracking host (the unsubscribe links themselves).
"""

from __future__ import annotations

import base64
import binascii
import email.quoprimime
import html
import quopri
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mta.accept.mime import CRLF, MessageHead, encode_header, header_line, header_name

UNSUBSCRIBE_VARIABLES = (
    b"%unsubscribe_url%",
    b"%tag_unsubscribe_url%",
    b"%mailing_list_unsubscribe_url%",
    b"%unsubscribe_email%",
)
_VARIABLE = re.compile(
    r"%(unsubscribe_url|tag_unsubscribe_url|mailing_list_unsubscribe_url|unsubscribe_email)%"
)
# <a ... href="..."> and <area ... href='...'> (quoted values; an unquoted one has no spaces)
_HTML_LINK = re.compile(
    r"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""",
    re.IGNORECASE,
)
_TEXT_LINK = re.compile(r"https?://[^\s<>\"]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'"  # punctuation that ends a sentence, not a URL written in text
_NEWLINES = re.compile(r"\r\n|\r|\n")
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)
_PARAM = re.compile(r';\s*([\w.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
_CHARSET = re.compile(r';\s*charset\s*=\s*("[^"]*"|[^;\s]*)', re.IGNORECASE)


@dataclass(frozen=True)
class Choice:
    """What a message gets: the message's o:tracking* options over the domain's settings."""

    opens: bool = False
    pixel_at_top: bool = False
    clicks: bool | Literal["htmlonly"] = False
    footer: bool = False  # the domain's unsubscribe tracking: footers and List-Unsubscribe
    html_footer: str = ""
    text_footer: str = ""

    @property
    def anything(self) -> bool:
        return self.opens or bool(self.clicks) or self.footer


class RecipientLinks:
    """One recipient's tracking URLs (made by mta.tracking.links, per recipient). A list
    member's copy has its list's unsubscribe scope (`list_scope`): List-Unsubscribe and
    %mailing_list_unsubscribe_url% unsubscribe them from that list only."""

    def __init__(
        self,
        base: str,
        open_url: Callable[[], str],
        click_url: Callable[[str], str],
        unsubscribe_url: Callable[[str | list[str]], str],
        unsubscribe_mailto: Callable[[], str],
        recipient: str,
        tags: list[str],
        list_scope: str | None = None,
    ) -> None:
        self.base = base
        self.list_scope = list_scope
        self.open_url = open_url
        self.click_url = click_url
        self.unsubscribe_url = unsubscribe_url
        self.unsubscribe_mailto = unsubscribe_mailto
        self.recipient = recipient
        self.tags = tags

    def variable(self, name: str) -> str:
        if name == "unsubscribe_email":
            return self.recipient
        if name == "tag_unsubscribe_url":
            return self.unsubscribe_url(self.tags or "*")
        if name == "mailing_list_unsubscribe_url":  # outside a list send: the domain's link
            return self.unsubscribe_url(self.list_scope or "*")
        return self.unsubscribe_url("*")


def needs_copy(message: bytes, choice: Choice) -> bool:
    """Whether a recipient's copy differs from the message (else it is sent, and signed, once
    for everyone)."""
    return choice.anything or any(v in message for v in UNSUBSCRIBE_VARIABLES)


def track(
    message: bytes,
    choice: Choice,
    links: RecipientLinks,
    *,
    max_parts: int,
    max_depth: int,
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The recipient's copy of `message` (CRLF line ends, as stored); `headers` are added
    where the message has none of that name (a list's List-Id, Reply-To)."""
    head = MessageHead.parse(message, len(message), len(message))
    uses_variable = any(v in message for v in UNSUBSCRIBE_VARIABLES)
    walk = _Walk(choice, links, footer=choice.footer and not uses_variable,
                 max_parts=max_parts, max_depth=max_depth)
    fields = [_fill_header(f, links) for f in head.fields]
    names = [header_name(f) for f in head.fields]
    body = bytes(head.body)  # the blank line's CRLFs, then the body
    separator = b"\r\n\r\n" if body.startswith(b"\r\n\r\n") else body[:2]
    tracked = walk.entity(_content_headers(fields, names), body[len(separator):], 0)
    fields = _with_encoding(fields, names, tracked)
    added = [header_line(encode_header(name, value))
             for name, value in headers if name.lower() not in names]
    listed = links.list_scope is not None
    if (choice.footer or uses_variable or listed) and "list-unsubscribe" not in names:
        url = links.unsubscribe_url(links.list_scope or "*")
        mailto = links.unsubscribe_mailto()
        added.append(header_line(f"List-Unsubscribe: <{url}>,\r\n <{mailto}>"))
        if "list-unsubscribe-post" not in names:
            added.append(header_line("List-Unsubscribe-Post: List-Unsubscribe=One-Click"))
    return b"".join([*added, b"\r\n".join(fields), separator, _bytes(tracked)])


@dataclass(frozen=True)
class _Recoded:
    """A text body encoded anew, with the Content-Type and transfer encoding it now needs."""

    body: bytes
    content_type: str
    encoding: str


def _bytes(body: bytes | _Recoded) -> bytes:
    return body.body if isinstance(body, _Recoded) else body


def _with_encoding(fields: list[bytes], names: list[str], body: bytes | _Recoded) -> list[bytes]:
    if not isinstance(body, _Recoded):
        return fields
    kept = [f for f, n in zip(fields, names, strict=True)
            if n not in ("content-transfer-encoding", "content-type")]
    return [*kept, f"Content-Type: {body.content_type}".encode("ascii", "replace"),
            f"Content-Transfer-Encoding: {body.encoding}".encode("ascii")]


def _fill_header(field: bytes, links: RecipientLinks) -> bytes:
    """Unsubscribe variables in a header (h:List-Unsubscribe: <%unsubscribe_url%> is common)."""
    if b"%" not in field or not any(v in field for v in UNSUBSCRIBE_VARIABLES):
        return field
    text = field.decode("utf-8", "surrogateescape")
    return _VARIABLE.sub(lambda m: links.variable(m.group(1)), text).encode(
        "utf-8", "surrogateescape")


def _content_headers(fields: list[bytes], names: list[str]) -> dict[str, str]:
    """content-type, content-transfer-encoding and content-disposition of an entity."""
    found = {}
    for field, name in zip(fields, names, strict=True):
        if name in ("content-type", "content-transfer-encoding", "content-disposition"):
            value = field.split(b":", 1)[1].decode("ascii", "replace")
            found.setdefault(name, " ".join(value.split()))
    return found


class _Walk:
    def __init__(self, choice: Choice, links: RecipientLinks, *, footer: bool, max_parts: int,
                 max_depth: int) -> None:
        self.choice = choice
        self.links = links
        self.footer = footer
        self.parts_left = max_parts
        self.max_depth = max_depth
        self.html_footer_done = False
        self.text_footer_done = False

    def entity(self, headers: dict[str, str], body: bytes, depth: int) -> bytes | _Recoded:
        """The body of one entity, tracked (`body` itself when nothing changed)."""
        self.parts_left -= 1
        if self.parts_left < 0 or depth > self.max_depth:
            return body
        content_type = headers.get("content-type", "text/plain")
        media = content_type.split(";", 1)[0].strip().lower()
        disposition = headers.get("content-disposition", "").split(";", 1)[0].strip().lower()
        if media.startswith("multipart/"):
            boundary = _param(content_type, "boundary")
            if not boundary or len(boundary) > 200:
                return body
            return self.multipart(body, boundary.encode("ascii", "replace"), depth)
        if media in ("text/html", "text/plain") and disposition != "attachment":
            return self.text(media, content_type, headers, body)
        return body

    def multipart(self, body: bytes, boundary: bytes, depth: int) -> bytes:
        """Each part between delimiter lines (RFC 2046: the CRLF before a delimiter is part
        of it); preamble, delimiters and epilogue as they were."""
        delimiter = re.compile(
            rb"(?:\A|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?=\r\n|\Z)"
        )
        out: list[bytes] = []
        last, inside = 0, False
        for match in delimiter.finditer(body):
            segment = body[last:match.start()]
            out += [self.part(segment, depth + 1) if inside else segment, match.group(0)]
            last = match.end()
            inside = match.group(1) is None
            if not inside:
                break
        rest = body[last:]
        out.append(self.part(rest, depth + 1) if inside else rest)
        return b"".join(out)

    def part(self, raw: bytes, depth: int) -> bytes:
        """`raw` is CRLF, the part's headers, a blank line, its body."""
        if not raw.startswith(b"\r\n"):
            return raw
        inner = raw[2:]
        if inner.startswith(b"\r\n"):  # no headers at all: text/plain, us-ascii
            tracked = self.entity({}, inner[2:], depth)
            if isinstance(tracked, _Recoded):
                return raw  # no header to say its new encoding in: leave it
            return b"\r\n\r\n" + tracked
        end = inner.find(b"\r\n\r\n")
        if end < 0:
            return raw
        fields = re.split(rb"\r\n(?![ \t])", inner[:end])
        names = [header_name(f) for f in fields]
        body = inner[end + 4:]
        tracked = self.entity(_content_headers(fields, names), body, depth)
        if tracked is body:
            return raw
        fields = _with_encoding(fields, names, tracked)
        return b"\r\n" + b"\r\n".join(fields) + b"\r\n\r\n" + _bytes(tracked)

    def text(self, media: str, content_type: str, headers: dict[str, str], body: bytes
             ) -> bytes | _Recoded:
        encoding = headers.get("content-transfer-encoding", "7bit").strip().lower()
        charset = (_param(content_type, "charset") or "us-ascii").lower()
        try:
            if encoding == "base64":
                raw = base64.b64decode(body, validate=False)
            elif encoding == "quoted-printable":
                raw = quopri.decodestring(body)
            else:
                raw = body
            text = raw.decode(charset)
        except (LookupError, UnicodeDecodeError, binascii.Error, ValueError):
            return body  # sent as it came
        changed = self.html(text) if media == "text/html" else self.plain(text)
        if changed == text:
            return body
        return _encode(changed, charset, encoding, content_type)

    def html(self, text: str) -> str:
        choice = self.choice
        if choice.clicks:
            text = _HTML_LINK.sub(self._html_link, text)
        if self.footer and not self.html_footer_done:
            self.html_footer_done = True
            text = _before_body_end(text, choice.html_footer)
        text = _VARIABLE.sub(lambda m: html.escape(self.links.variable(m.group(1))), text)
        if choice.opens:
            pixel = (f'<img width="1" height="1" alt="" style="border:0;width:1px;height:1px"'
                     f' src="{html.escape(self.links.open_url())}">')
            text = (_after_body_start(text, pixel) if choice.pixel_at_top
                    else _before_body_end(text, pixel))
        return text

    def plain(self, text: str) -> str:
        if self.choice.clicks is True:
            text = _TEXT_LINK.sub(self._text_link, text)
        if self.footer and not self.text_footer_done:
            self.text_footer_done = True
            text = text + self.choice.text_footer
        return _VARIABLE.sub(lambda m: self.links.variable(m.group(1)), text)

    def _trackable(self, url: str) -> bool:
        lowered = url.lower()
        return (lowered.startswith(("http://", "https://"))
                and not lowered.startswith(self.links.base.lower() + "/")
                and _VARIABLE.search(url) is None)

    def _html_link(self, match: re.Match[str]) -> str:
        value = next(v for v in match.group(2, 3, 4) if v is not None)
        url = html.unescape(value).strip()
        if not self._trackable(url):
            return match.group(0)
        return f'{match.group(1)}"{html.escape(self.links.click_url(url))}"'

    def _text_link(self, match: re.Match[str]) -> str:
        url = match.group(0)
        kept = url.rstrip(_TRAILING)
        if not self._trackable(kept):
            return url
        return self.links.click_url(kept) + url[len(kept):]


def _encode(text: str, charset: str, was: str, content_type: str) -> _Recoded:
    """The text in its charset (UTF-8 when that cannot hold it) and a transfer encoding that
    can carry it: the one it had when that still works, else quoted-printable (base64 stays).
    Line ends become CRLF (a footer's bare LFs would reach the wire as they are)."""
    text = _NEWLINES.sub(CRLF, text)
    try:
        raw = text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        raw = text.encode("utf-8")
        content_type = _CHARSET.sub("", content_type) + '; charset="utf-8"'
    fits = all(len(line) <= 998 for line in raw.split(b"\r\n"))
    if was == "base64":
        encoded = b"".join(base64.encodebytes(raw[i:i + 57 * 1024]).replace(b"\n", b"\r\n")
                           for i in range(0, len(raw), 57 * 1024))
        return _Recoded(encoded, content_type, "base64")
    if fits and raw.isascii() and was in ("7bit", "8bit", "binary"):
        return _Recoded(raw, content_type, was)
    if fits and was in ("8bit", "binary"):
        return _Recoded(raw, content_type, was)
    encoded = email.quoprimime.body_encode(raw.decode("latin-1"), maxlinelen=76, eol=CRLF)
    return _Recoded(encoded.encode("latin-1"), content_type, "quoted-printable")


def _param(content_type: str, name: str) -> str | None:
    for key, value in _PARAM.findall(content_type):
        if key.lower() == name:
            if value.startswith('"'):
                return re.sub(r"\\(.)", r"\1", value[1:-1])
            return value
    return None


def _before_body_end(text: str, addition: str) -> str:
    closes = list(_BODY_CLOSE.finditer(text))
    if not closes:
        return text + addition
    at = closes[-1].start()
    return text[:at] + addition + text[at:]


def _after_body_start(text: str, addition: str) -> str:
    opening = _BODY_OPEN.search(text)
    if opening is None:
        return addition + text
    return text[: opening.end()] + addition + text[opening.end():]
