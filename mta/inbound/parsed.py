"""Mailgun's "fully parsed" form of a received message: the fields that route forward() POSTs,
store() notifications and the stored-messages API carry (body-plain, stripped-text, ...).

Parsing uses the stdlib `email` package with the compat32 policy: it records defects instead of
raising on broken MIME, and hands us header values undecoded, so RFC 2047 words, raw 8-bit
headers and unknown charsets are decoded here with fallbacks instead of failing. Nothing in this
module raises on malformed mail; at worst a message is read as one text/plain body.

All of it is linear in the size of the message (no rescans, no nested line loops), so a 25 MB
message is fine; the functions are pure and the caller runs `parse_message` in a thread.

Heuristics (simple and documented rather than clever, English-first):
- stripped-text: lines starting with ">" go, with the attribution line(s) introducing them
  ("On <date>, <name> wrote:", a few other languages). A "splitter" followed by unquoted text
  (Outlook's "-----Original Message-----", an underscore rule or a From:/Sent:/Subject: block,
  "---------- Forwarded message ---------", "Begin forwarded message:", or an attribution)
  starts a top-posted quote: everything from it on goes.
- stripped-signature: from the last "-- " (or "--") line, if at most 15 non-blank lines follow;
  else from a mobile trailer ("Sent from my iPhone", "Get Outlook for iOS", ...) among the last
  three non-blank lines. Either way a closing ("Thanks,", "Best regards,", ...) followed by at
  most three short lines just before that point (or before the end) starts the signature
  instead, as in Mailgun's own sample ("Thanks,\\r\\nBob"). The delimiter line is part of the
  signature.
- stripped-html: <blockquote> elements and the containers mail clients put quotes in (Gmail's
  gmail_quote, Yahoo's yahoo_quoted, Thunderbird's moz-cite-prefix, Proton's protonmail_quote)
  are cut out; Outlook's reply header (id divRplyFwdMsg / appendonsend) starts a cut to </body>.
- body-plain from HTML (when there is no text/plain part): tags stripped, text of links kept (not
  their URLs), block elements end lines, whitespace collapsed outside <pre>, script, style and
  title dropped, entities decoded. stripped-text of such a message is made from stripped-html.

Headers: names are spelled as Mailgun does ("Message-Id"); values are unfolded and decoded.
Every top-level header is also a field of its own; of a repeated header (Received) the field
holds the last value, while message-headers and `Parsed.headers` keep them all, in order.
"""

from __future__ import annotations

import binascii
import codecs
import email.message
import email.parser
import email.policy
import email.utils
import html as html_lib
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

_MAX_DEPTH = 50  # MIME nesting followed; deeper parts are ignored
MAX_PARTS = 10_000  # message objects one parse may build (the MX allows far fewer parts)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_CONTROL = re.compile(r"[\r\n\x00]+")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*")
_HEAD_BODY = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(r"([!-9;-~]+)[ \t]*:[ \t]*(.*)")
_META_CHARSET = re.compile(
    rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.I
)
_INVISIBLE = re.compile("[\u00ad\u034f\u200b-\u200d\u2060\ufeff]")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes
    content_id: str | None  # "<cid>", the form of content-id-map keys


@dataclass(frozen=True)
class Parsed:
    """`fields` are the form/JSON fields (all text); `headers` the top-level headers, decoded,
    in order and with repeats (`fields` keeps the last of each name)."""

    fields: dict[str, str]
    attachments: list[Attachment]
    headers: list[tuple[str, str]]


# -- charsets -----------------------------------------------------------------------------------

# labels mail clients use for a wider encoding than they name (read as browsers read them)
_SUPERSETS = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "tis-620": "cp874",
    "iso-8859-9": "cp1254",
}
# codecs Python has that are no charset of text in mail
_NOT_CHARSETS = frozenset(("unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"))


@lru_cache(maxsize=256)
def _codec(charset: str | None) -> str | None:
    """The Python codec for a MIME charset label, None when missing, unknown or no text codec."""
    if not charset or len(charset) > 64:
        return None
    name = charset.strip().strip("\"'").lower().split("*", 1)[0]  # RFC 2231 *language
    name = _SUPERSETS.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return info.name


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Text in the declared charset if it decodes; else UTF-8 if it decodes; else the declared
    charset with replacement characters; else windows-1252, and latin-1 for what that lacks."""
    codec = _codec(charset)
    if codec is not None:
        try:
            return data.decode(codec)
        except Exception:  # UnicodeDecodeError, or odd codecs failing otherwise
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if codec is not None and codec != "ascii":
        try:
            return data.decode(codec, "replace")
        except Exception:
            pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _scrub(text: str) -> str:
    """No lone surrogates (left by surrogateescape), so the text encodes as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return decode_bytes(text.encode("utf-8", "surrogateescape"), None)
    return text


# -- headers ------------------------------------------------------------------------------------


def _b64(text: str) -> bytes | None:
    """An encoded word's base64 text decoded (padding may be missing), None if it is none."""
    data = text.strip().rstrip("=")
    if not _BASE64.fullmatch(data) or len(data) % 4 == 1:
        return None
    return binascii.a2b_base64(data + "=" * (-len(data) % 4))


def decode_header_value(value: str) -> str:
    """A header value as text: folding undone, RFC 2047 words decoded (adjacent words in one
    charset joined before decoding, so split multi-byte characters survive), raw 8-bit text read
    as UTF-8 (else latin-1), line breaks and NULs turned into spaces."""
    value = _FOLD.sub("", _scrub(value))
    if "=?" in value:
        out: list[str] = []
        pending: tuple[str, bytearray] | None = None  # the encoded words read but not decoded
        pos = 0
        for m in _ENCODED_WORD.finditer(value):
            between = value[pos : m.start()]
            if between and not (pending is not None and between.isspace()):
                if pending is not None:
                    out.append(decode_bytes(bytes(pending[1]), pending[0]))
                    pending = None
                out.append(between)
            charset, kind, text = m.groups()
            if kind in "qQ":
                data = binascii.a2b_qp(text.encode("utf-8"), header=True)
            elif (data := _b64(text)) is None:  # not an encoded word after all: kept as it is
                if pending is not None:
                    out.append(decode_bytes(bytes(pending[1]), pending[0]))
                    pending = None
                out.append(m.group())
                pos = m.end()
                continue
            if pending is not None and pending[0].lower() == charset.lower():
                pending[1].extend(data)
            else:
                if pending is not None:
                    out.append(decode_bytes(bytes(pending[1]), pending[0]))
                pending = (charset, bytearray(data))
            pos = m.end()
        if pending is not None:
            out.append(decode_bytes(bytes(pending[1]), pending[0]))
        out.append(value[pos:])
        value = "".join(out)
    return _CONTROL.sub(" ", value).strip()


def normalize_header_name(name: str) -> str:
    """Mailgun's spelling of header names: "Message-Id", "Mime-Version", "X-Mailgun-Sflag"."""
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.strip().split("-"))


def _raw_header(part: email.message.Message, name: str) -> str | None:
    for key, value in part.raw_items():
        if key.lower() == name:
            return str(value)
    return None


# -- HTML ---------------------------------------------------------------------------------------
#
# A small tokenizer rather than html.parser: html.parser rescans to the end of the document for
# every construct left open ("<a <a <a ..."), which is quadratic (3 MB of it did not finish in
# minutes on Python 3.11); here every search runs forward from where the last one for the same
# needle ended, so the whole pass is linear whatever the markup.

_MARKUP = re.compile(r"<[A-Za-z/!?]")  # "<" before anything else is text
_TAG_NAME = re.compile(r"[A-Za-z][^\t\n\f\r />]*")
_TAG_SYNTAX = re.compile(r""">|=[\t\n\f\r ]*["']""")  # the end of a tag, or a quoted value
_ATTRIBUTE = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""")
_RAW_TEXT = frozenset(
    ("script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes")
)
_BLOCKS = frozenset(
    [
        "address",
        "article",
        "aside",
        "center",
        "dd",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figure",
        "footer",
        "form",
        "header",
        "li",
        "main",
        "nav",
        "section",
        "tr",
    ]
)
_PARAGRAPHS = frozenset(
    ["blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol", "p", "pre", "table", "ul"]
)
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")
_ANY_TAG = re.compile(r"<[^<>]*>")


@lru_cache(maxsize=16)
def _raw_text_end(name: str) -> re.Pattern[str]:
    return re.compile(rf"</{re.escape(name)}(?=[\t\n\f\r />]|$)", re.I)


class _Scanner:
    """Forward-only searches that remember their last hit per needle: as long as the start
    positions never go back, each stretch of text is scanned at most once per needle."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._found: dict[str, int] = {}
        self._matched: dict[re.Pattern[str], re.Match[str] | None] = {}

    def find(self, needle: str, start: int) -> int:
        hit = self._found.get(needle)
        if hit is None or -1 < hit < start:
            hit = self._found[needle] = self.text.find(needle, start)
        return hit

    def search(self, pattern: re.Pattern[str], start: int) -> re.Match[str] | None:
        if pattern in self._matched:
            hit = self._matched[pattern]
            if hit is None or hit.start() >= start:
                return hit
        hit = self._matched[pattern] = pattern.search(self.text, start)
        return hit


def _tag_end(scan: _Scanner, pos: int) -> int:
    """The '>' that closes a start tag whose attributes begin at pos (quoted values may hold
    '>'), or -1."""
    while True:
        hit = scan.search(_TAG_SYNTAX, pos)
        if hit is None:
            return -1
        if hit.group() == ">":
            return hit.start()
        close = scan.find(hit.group()[-1], hit.end())
        if close < 0:
            return -1
        pos = close + 1


def _tokens(html: str) -> Iterator[tuple[str, str, int, int]]:
    """(kind, tag name, start, end) for "text", "start" and "end" in document order. Comments,
    doctypes and the content of script, style, title... are left out; a construct still open at
    the end of the document swallows the rest, as in browsers."""
    scan = _Scanner(html)
    pos, size = 0, len(html)
    while pos < size:
        markup = scan.search(_MARKUP, pos)
        if markup is None:
            yield "text", "", pos, size
            return
        lt = markup.start()
        if lt > pos:
            yield "text", "", pos, lt
        after = html[lt + 1 : lt + 3]
        if html.startswith("<!--", lt):
            end = scan.find("-->", lt + 4)
            if end < 0:
                return
            pos = end + 3
        elif after[:1].isascii() and after[:1].isalpha():
            name_end = _TAG_NAME.match(html, lt + 1).end()  # type: ignore[union-attr]
            end = _tag_end(scan, name_end)
            if end < 0:
                return
            name = html[lt + 1 : name_end].lower()
            yield "start", name, lt, end + 1
            pos = end + 1
            if name in _RAW_TEXT:
                close = scan.search(_raw_text_end(name), pos)
                if close is None:
                    return
                pos = close.start()
        elif after[:1] == "/" and after[1:].isascii() and after[1:].isalpha():
            end = scan.find(">", lt + 2)
            if end < 0:
                return
            name = _TAG_NAME.match(html, lt + 2).group().lower()  # type: ignore[union-attr]
            yield "end", name, lt, end + 1
            pos = end + 1
        else:  # a doctype, a processing instruction, "</>" or "</ junk>"
            end = scan.find(">", lt + 2)
            if end < 0:
                return
            pos = end + 1


def _attributes(tag: str) -> dict[str, str]:
    """The attributes of one start tag's text ("<div class=x>")."""
    name = _TAG_NAME.match(tag, 1)
    found: dict[str, str] = {}
    for m in _ATTRIBUTE.finditer(tag, name.end() if name else 1, len(tag) - 1):
        value = m.group(2) or ""
        if value[:1] in ("'", '"'):
            value = value[1:-1]
        found.setdefault(m.group(1).lower(), html_lib.unescape(value))
    return found


class _TextWriter:
    """Running text with whitespace collapsed as a browser would, and line ends for blocks."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.pre = 0
        self.breaks = 0  # line ends wanted before the next text
        self.cells = 0
        self._line_start = True
        self._pre_start = False

    def block(self, count: int, add: bool = False) -> None:
        self.breaks = min(2, self.breaks + count if add else max(self.breaks, count))

    def text(self, text: str) -> None:
        if self.pre:
            if self._pre_start and text.startswith("\n"):  # as browsers do after <pre>
                text = text[1:]
        else:
            text = _WHITESPACE.sub(" ", text)
            if self.breaks or self._line_start or (self.out and self.out[-1].endswith(" ")):
                text = text.lstrip(" ")
        self._pre_start = False
        if not text:
            return
        if self.breaks:
            if self.out:  # no line ends before the first text
                self.out.append("\n" * self.breaks)
            self.breaks = 0
        self.out.append(text)
        self._line_start = text.endswith("\n")

    def start(self, name: str) -> None:
        if name == "br":
            self.block(1, add=True)
        elif name in _PARAGRAPHS:
            self.block(2)
            if name == "pre":
                self.pre += 1
                self._pre_start = True
        elif name in _BLOCKS:
            self.block(1)
            if name == "tr":
                self.cells = 0
            elif name == "li":
                self.text("- ")
        elif name in ("td", "th"):
            if self.cells:
                self.text(" ")
            self.cells += 1

    def end(self, name: str) -> None:
        if name in _PARAGRAPHS:
            self.block(2)
            if name == "pre":
                self.pre = max(0, self.pre - 1)
        elif name in _BLOCKS:
            self.block(1)


def html_to_text(html: str) -> str:
    """A plain-text rendition of an HTML body (body-plain when a message has no text part):
    tags dropped, text of links kept, blocks on lines of their own, entities decoded."""
    writer = _TextWriter()
    try:
        for kind, name, start, end in _tokens(html):
            if kind == "text":
                text = html[start:end]
                writer.text(html_lib.unescape(text) if "&" in text else text)
            elif kind == "start":
                writer.start(name)
            else:
                writer.end(name)
        text = "".join(writer.out)
    except Exception:  # a safety net: the tokenizer is not meant to fail
        text = html_lib.unescape(_ANY_TAG.sub(" ", html))
    text = _INVISIBLE.sub("", text).replace("\xa0", " ")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


_QUOTE_CLASSES = frozenset(
    ("gmail_quote", "gmail_quote_container", "yahoo_quoted", "moz-cite-prefix", "protonmail_quote")
)
_REPLY_HEADER_IDS = frozenset(("divrplyfwdmsg", "appendonsend"))


def _quote_ranges(html: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each quoted part, in order and not overlapping."""
    cutting, depth, start = "", 0, 0  # the element being cut out, how deep in it, from where
    for kind, name, begin, end in _tokens(html):
        if cutting == "to the end":
            if kind == "end" and name in ("body", "html"):
                yield start, begin
                cutting = "done"
        elif cutting == "done" or kind == "text":
            continue
        elif cutting:
            if name == cutting:
                depth += 1 if kind == "start" else -1
                if not depth:
                    yield start, end
                    cutting = ""
        elif kind != "start":
            continue
        elif name == "blockquote":
            cutting, depth, start = name, 1, begin
        elif name == "div":
            attributes = _attributes(html[begin:end])
            if set(attributes.get("class", "").split()) & _QUOTE_CLASSES:
                cutting, depth, start = name, 1, begin
            elif attributes.get("id", "").lower() in _REPLY_HEADER_IDS:
                cutting, start = "to the end", begin
    if cutting and cutting != "done":
        yield start, len(html)


def strip_html_quotes(html: str) -> str:
    """The HTML without quoted parts (see the module docstring), the rest kept as it was."""
    pieces, pos = [], 0
    try:
        for start, end in _quote_ranges(html):
            pieces.append(html[pos:start])
            pos = end
    except Exception:  # a safety net: the tokenizer is not meant to fail
        return html
    if not pieces:
        return html
    pieces.append(html[pos:])
    return "".join(pieces)


# -- quotes and signatures in text ---------------------------------------------------------------

_ATTRIBUTION_STARTS = ("on ", "le ", "am ", "el ", "il ", "em ", "op ", "den ")
_ATTRIBUTION_VERBS = (
    " wrote",
    " écrit",
    " schrieb",
    " escribió",
    " scrisse",
    " escreveu",
    " schreef",
    " skrev",
)
_DASHED_SPLITTER = re.compile(r"-{2,}\s*(?:original message|forwarded message)\s*-*", re.I)
_UNDERSCORES = re.compile(r"_{10,}")
_CLOSINGS = frozenset(
    (
        "thanks",
        "thank you",
        "thanks again",
        "many thanks",
        "thanks in advance",
        "thanks so much",
        "thank you so much",
        "thx",
        "cheers",
        "regards",
        "best",
        "best regards",
        "kind regards",
        "warm regards",
        "warmest regards",
        "with regards",
        "with best regards",
        "best wishes",
        "all the best",
        "sincerely",
        "yours sincerely",
        "sincerely yours",
        "yours truly",
        "cordially",
        "respectfully",
        "take care",
        "thanks and regards",
        "thanks & regards",
        "br",
    )
)
_MOBILE = re.compile(
    r"(?:sent from my|sent from (?:outlook|mail for|yahoo|aol|gmail|samsung|proton|blackberry)"
    r"|sent with (?:proton|blackberry)|sent via \S+|get outlook for)\b.{0,60}",
    re.I,
)


def _header_line(line: str, names: tuple[str, ...]) -> bool:
    return line.strip().lstrip("*").lower().startswith(names)


def _splitter_length(lines: list[str], i: int) -> int:
    """How many lines a quote splitter starting at line i takes (0: none starts there)."""
    line = lines[i].strip()
    low = line.lower()
    if _DASHED_SPLITTER.fullmatch(line) or low == "begin forwarded message:":
        return 1
    if _UNDERSCORES.fullmatch(line):
        following = next((x for x in lines[i + 1 : i + 3] if x.strip()), "")
        return 1 if _header_line(following, ("from:",)) else 0
    if _header_line(line, ("from:",)):
        block = lines[i + 1 : i + 6]
        if any(_header_line(x, ("sent:", "date:")) for x in block) and any(
            _header_line(x, ("to:", "subject:")) for x in block
        ):
            return 1 + next(
                (n for n, x in enumerate(block) if not x.strip() or ":" not in x), len(block)
            )
        return 0
    if low.startswith(_ATTRIBUTION_STARTS) and len(line) < 300:
        joined = low
        for n in range(3):
            if (
                joined.endswith(":")
                and any(verb in joined for verb in _ATTRIBUTION_VERBS)
                and any(c.isdigit() or c == "@" for c in joined)  # a date or an address
            ):
                return n + 1
            if i + n + 1 >= len(lines) or len(joined) > 400:
                break
            joined += " " + lines[i + n + 1].strip().lower()
    return 0


def _unquoted(lines: list[str]) -> list[str]:
    kinds: list[str] = []  # per line: e(mpty), m(arked quote), s(plitter), t(ext)
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if not text:
            kinds.append("e")
        elif text.startswith(">"):
            kinds.append("m")
        else:
            length = _splitter_length(lines, i)
            kinds.extend("s" * length or "t")
            i += max(length, 1)
            continue
        i += 1
    # a splitter followed by unquoted text: a top-posted reply above the whole old message
    following, after = [""] * len(kinds), ""  # the next kind that is no splitter or blank
    for i in range(len(kinds) - 1, -1, -1):
        following[i] = after
        if kinds[i] in "mt":
            after = kinds[i]
    for i, kind in enumerate(kinds):
        if kind == "s" and following[i] == "t":
            lines, kinds = lines[:i], kinds[:i]
            break
    out: list[str] = []
    blanks: list[str] = []
    removed = False
    for line, kind in zip(lines, kinds, strict=True):
        if kind in "ms":
            removed = True
        elif kind == "e":
            blanks.append(line)
        else:
            out.extend(blanks[:1] if removed else blanks)
            out.append(line)
            blanks, removed = [], False
    return out


def _last_nonblank(lines: list[str], end: int, count: int) -> list[int]:
    """The indexes of the last `count` non-blank lines before `end`, in order."""
    found: list[int] = []
    for i in range(end - 1, -1, -1):
        if len(found) == count:
            break
        if lines[i].strip():
            found.append(i)
    return found[::-1]


def _name_like(line: str) -> bool:
    """A line that may follow a closing: a name, a title, a company; not a sentence."""
    line = line.strip()
    return len(line) <= 40 and len(line.split()) <= 6 and not line.endswith(("?", ":"))


def _closing_start(lines: list[str], end: int) -> int | None:
    """A closing line ("Thanks,") with at most three name-like lines after it, before `end`,
    and some text before it (a closing alone is the message, not a signature)."""
    tail = _last_nonblank(lines, end, 4)
    for n, i in enumerate(tail):
        if lines[i].strip().lower().rstrip(" ,.!-") not in _CLOSINGS:
            continue
        if all(_name_like(lines[k]) for k in tail[n + 1 :]) and any(x.strip() for x in lines[:i]):
            return i
    return None


def _signature_start(lines: list[str]) -> int | None:
    end, nonblank = None, 0
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].rstrip() == "--":
            end = i
            break
        nonblank += bool(lines[i].strip())
        if nonblank > 15:
            break
    if end is None:
        tail = _last_nonblank(lines, len(lines), 3)
        end = next((i for i in tail if _MOBILE.fullmatch(lines[i].strip())), None)
    closing = _closing_start(lines, len(lines) if end is None else end)
    return end if closing is None else closing


def extract_reply(text: str) -> tuple[str, str]:
    """(stripped-text, stripped-signature) of a plain-text body: the new text without quoted
    parts and without the signature, and the signature ("" if none); line ends as in `text`."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = _unquoted([line.rstrip("\r") for line in text.split("\n")])
    start = _signature_start(lines)
    if start is None:
        return newline.join(lines).strip(), ""
    return newline.join(lines[:start]).strip(), newline.join(lines[start:]).strip()


# -- the message --------------------------------------------------------------------------------


class _Reader:
    """Walks the MIME tree once, sorting leaves into bodies (by text subtype) and attachments."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[str]] = {}
        self.attachments: list[Attachment] = []

    def walk(self, part: email.message.Message, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            return
        try:
            content_type = part.get_content_type()
            payload = part.get_payload()
            if isinstance(payload, list) and not content_type.startswith("message/"):
                for sub in payload:
                    if isinstance(sub, email.message.Message):
                        self.walk(sub, depth + 1)
                return
            if content_type.startswith("multipart/"):
                content_type = "text/plain"  # no usable boundary: its text is all we have
            self._leaf(part, content_type)
        except Exception:  # a part we cannot read is left out, the rest still counts
            return

    def _leaf(self, part: email.message.Message, content_type: str) -> None:
        data = _payload_bytes(part)
        disposition = _disposition(part)
        filename = _filename(part)
        if content_type.startswith("text/") and disposition != "attachment" and not filename:
            charset = _charset(part)
            if charset is None and content_type == "text/html":
                meta = _META_CHARSET.search(data, 0, 4096)
                charset = meta.group(1).decode("ascii") if meta else None
            self.bodies.setdefault(content_type[5:], []).append(decode_bytes(data, charset))
            return
        content_id = _raw_header(part, "content-id")
        if content_id is not None:
            content_id = decode_header_value(content_id).strip("<> \t") or None
        if not filename:
            extension = mimetypes.guess_extension(content_type) or ".bin"
            filename = f"attachment-{len(self.attachments) + 1}{extension}"
        self.attachments.append(
            Attachment(
                filename=filename,
                content_type=content_type,
                data=data,
                content_id=f"<{content_id}>" if content_id else None,
            )
        )


def _payload_bytes(part: email.message.Message) -> bytes:
    if part.is_multipart():  # message/*: the enclosed message(s) as they stand
        raw = part.as_bytes()
        split = _HEAD_BODY.search(raw)
        return raw[split.end() :] if split else raw
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    return str(payload).encode("utf-8", "surrogateescape") if payload else b""


def _charset(part: email.message.Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:  # a broken parameter: the text is still worth reading
        return None


def _disposition(part: email.message.Message) -> str | None:
    raw = _raw_header(part, "content-disposition")
    if raw is None:
        return None
    return _scrub(raw).split(";", 1)[0].strip().lower() or None


def _param(part: email.message.Message, header: str, name: str) -> str:
    """A Content-* parameter, RFC 2231 decoded; raw 8-bit header text is read as UTF-8 first
    (compat32 would turn it into replacement characters)."""
    raw = _raw_header(part, header)
    if raw is None:
        return ""
    holder = email.message.Message()
    holder[header] = _FOLD.sub("", _scrub(raw))
    value = holder.get_param(name, None, header=header)
    if isinstance(value, tuple):
        value = email.utils.collapse_rfc2231_value(value)
    return str(value or "")


def _filename(part: email.message.Message) -> str:
    """The file name (RFC 2231 or RFC 2047 encoded, or raw UTF-8), without any directories."""
    try:
        name = _param(part, "content-disposition", "filename") or _param(
            part, "content-type", "name"
        )
    except Exception:
        return ""
    name = decode_header_value(name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[\x00-\x1f\x7f]", "", name).strip()


class TooManyParts(Exception):
    pass


def parse_bounded(mime: bytes) -> email.message.Message:
    """The stdlib parse (compat32), stopped with TooManyParts after MAX_PARTS message objects:
    the MX refuses messages with more parts before they are stored (mta.inbound.structure), and
    this keeps the work bounded here too, wherever the two readings of a broken message might
    still differ."""
    made = 0

    class Counted(email.message.Message):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nonlocal made
            made += 1
            if made > MAX_PARTS:
                raise TooManyParts
            super().__init__(*args, **kwargs)

    parser = email.parser.BytesParser(_class=Counted, policy=email.policy.compat32)
    return parser.parsebytes(mime)


def _parse_tree(mime: bytes) -> tuple[list[tuple[str, str]], _Reader]:
    message = parse_bounded(mime)
    headers = [
        (normalize_header_name(k), decode_header_value(str(v))) for k, v in message.raw_items()
    ]
    reader = _Reader()
    reader.walk(message)
    return headers, reader


def _parse_fallback(mime: bytes) -> tuple[list[tuple[str, str]], _Reader]:
    """When the email package gives up (e.g. nesting deeper than its recursion allows): the
    header lines read by hand and the rest of the message as one text body."""
    split = _HEAD_BODY.search(mime)
    head, body = (mime[: split.start()], mime[split.end() :]) if split else (b"", mime)
    raw: list[list[str]] = []
    for line in decode_bytes(head, None).split("\n"):
        if line[:1] in (" ", "\t") and raw:
            raw[-1][1] += line
        elif match := _HEADER_LINE.fullmatch(line.rstrip("\r")):
            raw.append([match.group(1), match.group(2)])
    headers = [(normalize_header_name(k), decode_header_value(v)) for k, v in raw]
    reader = _Reader()
    reader.bodies["plain"] = [decode_bytes(body, None)]
    return headers, reader


def _joined(texts: list[str]) -> str:
    out: list[str] = []
    for text in texts:
        if out and not out[-1].endswith("\n"):
            out.append("\n")
        out.append(text)
    return "".join(out)


def _texts(plain: str | None, html: str | None) -> dict[str, str]:
    """body-plain, stripped-text, stripped-signature, and body-html and stripped-html if any."""
    fields: dict[str, str] = {}
    stripped_html = strip_html_quotes(html) if html is not None else None
    if plain is not None and (plain.strip() or html is None):
        fields["body-plain"] = source = plain
    elif html is not None and stripped_html is not None:
        fields["body-plain"] = html_to_text(html)
        source = fields["body-plain"] if stripped_html is html else html_to_text(stripped_html)
    else:
        fields["body-plain"] = source = ""
    try:
        fields["stripped-text"], fields["stripped-signature"] = extract_reply(source)
    except Exception:  # a safety net: the heuristics are not meant to fail
        fields["stripped-text"], fields["stripped-signature"] = source.strip(), ""
    if html is not None and stripped_html is not None:
        fields["body-html"] = html
        fields["stripped-html"] = stripped_html
    return fields


def parse_message(mime: bytes) -> Parsed:
    """Mailgun's parsed fields of a message (CRLF or LF line ends). Never raises on bad mail."""
    try:
        headers, reader = _parse_tree(mime)
    except Exception:  # e.g. RecursionError on absurdly deep nesting
        headers, reader = _parse_fallback(mime)
    last = dict(headers)
    bodies = {subtype: _scrub(_joined(texts)) for subtype, texts in reader.bodies.items()}
    plain, html = bodies.pop("plain", None), bodies.pop("html", None)
    fields = {"from": last.get("From", ""), "subject": last.get("Subject", "")}
    fields.update(_texts(plain, html))
    for subtype, text in bodies.items():
        fields[f"body-{subtype}"] = text
    content_ids: dict[str, str] = {}
    for number, attachment in enumerate(reader.attachments, start=1):
        if attachment.content_id is not None:
            content_ids.setdefault(attachment.content_id, f"attachment-{number}")
    fields["attachment-count"] = str(len(reader.attachments))
    fields["message-headers"] = orjson.dumps([list(h) for h in headers]).decode()
    fields["content-id-map"] = orjson.dumps(content_ids).decode()
    fields.update(last)
    return Parsed(fields=fields, attachments=reader.attachments, headers=headers)
