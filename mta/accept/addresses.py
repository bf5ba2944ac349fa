"""Addresses from API fields and message headers: `Name <a@b>, c@d, group: e@f;`.

The list parser is ours, not `email.utils.getaddresses`: that one recurses once per nested
comment (10,000 `(` raise RecursionError) and walks the text a character at a time in Python.
Here one tokenising regex with possessive quantifiers (no backtracking) does the scanning, and
comments are skipped by counting parentheses, so the work is linear in the input, whatever it is.
It is lenient like mail clients: an unterminated quote, comment or `<` ends at the end of the
text, and what is not an address comes out as a pair that `valid_addr_spec` then refuses.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LOCAL_OK = re.compile(r"[^\s<>()\[\],;:\"\\@]+|\"[^\"\r\n]+\"")
_LABEL = r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?"  # letters/digits (IDN too), inner hyphens
_DOMAIN_OK = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")

# one token each: a quoted string, a comment's start, an angle address, a special, or a run of
# anything else (spaces included: a phrase is one token, so plain text costs one step)
_TOKEN = re.compile(
    r"""
      (?P<quoted>"(?:[^"\\]++|\\.?)*+"?)
    | (?P<comment>\()
    | (?P<angle><[^>]*+>?)
    | (?P<special>[,:;])
    | (?P<atom>[^"(,:;<]++)
    """,
    re.VERBOSE | re.DOTALL,
)
_PARENS = re.compile(r"\\.|[()]", re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True)
class Address:
    name: str
    addr: str

    @property
    def key(self) -> str:
        return self.addr.lower()

    @property
    def domain(self) -> str:
        return self.addr.rpartition("@")[2].lower()


def valid_addr_spec(addr: str) -> bool:
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or len(addr) > 254 or len(local) > 64:
        return False
    if (
        not _LOCAL_OK.fullmatch(local)
        or local.startswith(".")
        or local.endswith(".")
        or (".." in local)
    ):
        return False
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return False
        return True
    if _DOMAIN_OK.fullmatch(domain) is None:
        return False
    if domain.isascii():
        return len(domain) <= 253 and all(len(label) <= 63 for label in domain.split("."))
    try:  # an internationalised name must still fit DNS once encoded
        encoded = domain.encode("idna")
    except UnicodeError:
        return False
    return len(encoded) <= 253


def _comment_end(text: str, start: int) -> int:
    """Where the comment opening at `start` closes (nesting and quoted pairs counted), or the
    end of the text."""
    depth = 0
    for match in _PARENS.finditer(text, start):
        token = match.group()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
            if depth == 0:
                return match.end()
    return len(text)


class _Mailbox:
    """The words, angle address and comments seen since the last separator."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.plain: list[str] = []  # the same text, spaces kept out (for an addr-spec)
        self.angle: str | None = None
        self.comment = ""

    def pair(self) -> tuple[str, str] | None:
        if self.angle is not None:
            return " ".join(" ".join(self.words).split()), self.angle.strip()
        plain = "".join(self.plain).strip()
        if plain:
            return self.comment, plain
        return None


_NEEDS_TOKENS = frozenset('"()\\:;')


def split_addresses(value: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address list, in order; group names dropped."""
    if _NEEDS_TOKENS.isdisjoint(value):
        return _split_plain(value)
    return _split_tokens(value)


def _split_plain(value: str) -> list[tuple[str, str]]:
    """The common forms (`a@b`, `Name <a@b>`, comma-separated) with string methods only: the
    tokeniser's answer for text without quotes, comments or groups, at C speed."""
    pairs = []
    for piece in value.split(","):
        start = piece.find("<")
        if start < 0:
            plain = piece.strip()
            if plain:
                pairs.append(("", plain))
        else:
            close = piece.find(">", start)
            if close < 0 or piece.find("<", start + 1) >= 0:
                # `<a@b, c@d>` (brackets across a comma) or more than one `<`: tokens tell
                return _split_tokens(value)
            name = piece[:start] + " " + piece[close + 1 :]
            pairs.append((" ".join(name.split()), piece[start + 1 : close].strip()))
    return pairs


def _split_tokens(value: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    box = _Mailbox()
    pos, end = 0, len(value)
    while pos < end:
        match = _TOKEN.match(value, pos)
        assert match is not None  # every character starts one kind of token
        kind = match.lastgroup
        if kind == "comment":
            close = _comment_end(value, pos)
            if not box.comment:
                box.comment = " ".join(value[pos + 1 : close - 1].split())
            pos = close
            continue
        text = match.group()
        pos = match.end()
        if kind == "quoted":
            inner = text[1:-1] if len(text) > 1 and text.endswith('"') else text[1:]
            box.words.append(_QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner)
            box.plain.append(text)
        elif kind == "angle":
            box.angle = text[1:-1] if text.endswith(">") else text[1:]
        elif kind == "atom":
            box.words.append(text)
            box.plain.append(text)
        elif kind == "special":
            if text == ":" and box.angle is None:  # a group's name: not an address
                box = _Mailbox()
                continue
            found = box.pair()
            if found is not None:
                pairs.append(found)
            box = _Mailbox()
    found = box.pair()
    if found is not None:
        pairs.append(found)
    return pairs
