"""A batch send stored once and personalised for each recipient when it is delivered.

A batch (`recipient-variables`, `X-Mailgun-Recipient-Variables`) used to be stored as one full
copy per recipient: 1,000 recipients of an 18 MB message were 18 GB from one request. Now the
message is stored once as a template -- its bytes as they stand, with slots where a recipient's
values go (the To header, Subject and custom headers, text parts, X-Mailgun-Variables, or the
whole pre-built message for SMTP and messages.mime) -- and each recipient row keeps only its
`Personal` values. The outbound queue renders a recipient's copy right before sending it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from mta.accept.mime import (
    HeaderSlot,
    Piece,
    TextSlot,
    address_header,
    encode_header,
    format_address_list,
    header_line,
    personalise_mime,
    recipient_substituter,
    render,
)

_MAGIC = b"mta-template/1\n"


@dataclass(frozen=True)
class Personal:
    """One copy's recipient: the To address and the variables of `recipient-variables` (or of
    a list member's `vars`). `keeps_to`: the copy shows the message's own To (a list member,
    a plain recipient of a message sent to a list beside them), not this recipient alone."""

    name: str
    address: str
    variables: dict[str, Any] = field(default_factory=dict)
    keeps_to: bool = False

    @property
    def to_header(self) -> str:
        return format_address_list([(self.name, self.address)])

    def substituter(self) -> Callable[[str], str]:
        return recipient_substituter(self.name, self.address, self.variables)

    def dump(self) -> bytes:
        values: list[Any] = [self.name, self.address, self.variables]
        if self.keeps_to:
            values.append(1)
        return orjson.dumps(values)

    @classmethod
    def load(cls, blob: bytes) -> Personal:
        name, address, variables, *rest = orjson.loads(blob)
        return cls(name, address, variables, bool(rest and rest[0]))


@dataclass(frozen=True)
class ToSlot:
    """The To header: the copy's own recipient only, or `original` (the message's To; for a
    batch, the lists it names) for a recipient that keeps it."""

    original: str | None = None

    def render(self, personal: Personal, substitute: Callable[[str], str]) -> bytes:
        if personal.keeps_to and self.original is not None:
            return header_line(self.original)
        return header_line(address_header("To", [(personal.name, personal.address)]))


@dataclass(frozen=True)
class VariablesSlot:
    """X-Mailgun-Variables, each string value personalised (absent when there are none)."""

    variables: dict[str, Any]

    def render(self, personal: Personal, substitute: Callable[[str], str]) -> bytes:
        if not self.variables:
            return b""
        values = personalised_variables(self.variables, substitute)
        return header_line(encode_header("X-Mailgun-Variables", orjson.dumps(values).decode()))


@dataclass(frozen=True)
class MimeSlot:
    """A pre-built message (SMTP, messages.mime): To replaced, variables replaced in clear."""

    mime: bytes | memoryview

    def render(self, personal: Personal, substitute: Callable[[str], str]) -> bytes:
        to_header = None if personal.keeps_to else personal.to_header
        return personalise_mime(bytes(self.mime), to_header, substitute)


Slot = TextSlot | HeaderSlot | ToSlot | VariablesSlot | MimeSlot
_PERSONAL = (ToSlot, VariablesSlot, MimeSlot)  # slots that need more than the substitution


def personalised_variables(
    variables: dict[str, Any], substitute: Callable[[str], str]
) -> dict[str, Any]:
    return {k: substitute(v) if isinstance(v, str) else v for k, v in variables.items()}


class Template:
    def __init__(self, pieces: list[Piece | Slot]) -> None:
        self.pieces = pieces

    def render(self, personal: Personal) -> bytes:
        substitute = personal.substituter()
        return render(
            [p.render(personal, substitute) if isinstance(p, _PERSONAL) else p
             for p in self.pieces],
            substitute,
        )

    def dump(self) -> bytes:
        """The stored form: a JSON index of the pieces, then their bytes (runs of bytes joined)."""
        index: list[list[Any]] = []
        blobs: list[bytes] = []
        run: list[bytes] = []

        def flush() -> None:
            if run:
                blobs.append(b"".join(run))
                index.append(["b", len(blobs[-1])])
                run.clear()

        for piece in self.pieces:
            if isinstance(piece, (bytes, memoryview)):
                run.append(bytes(piece))
                continue
            flush()
            if isinstance(piece, TextSlot):
                index.append(["t", piece.content_type, piece.text])
            elif isinstance(piece, HeaderSlot):
                index.append(["h", piece.name, piece.value])
            elif isinstance(piece, ToSlot):
                index.append(["to"] if piece.original is None else ["to", piece.original])
            elif isinstance(piece, VariablesSlot):
                index.append(["v", piece.variables])
            else:
                blobs.append(bytes(piece.mime))
                index.append(["m", len(blobs[-1])])
        flush()
        head = orjson.dumps(index)
        return b"".join([_MAGIC, len(head).to_bytes(4, "big"), head, *blobs])

    @classmethod
    def load(cls, blob: bytes) -> Template:
        if not blob.startswith(_MAGIC):
            raise ValueError("not a message template")
        start = len(_MAGIC) + 4
        size = int.from_bytes(blob[len(_MAGIC) : start], "big")
        view = memoryview(blob)
        offset = start + size
        pieces: list[Piece | Slot] = []
        for entry in orjson.loads(view[start:offset]):
            kind = entry[0]
            if kind in ("b", "m"):
                chunk = view[offset : offset + entry[1]]
                offset += entry[1]
                pieces.append(chunk if kind == "b" else MimeSlot(chunk))  # type: ignore[arg-type]
            elif kind == "t":
                pieces.append(TextSlot(entry[1], entry[2]))
            elif kind == "h":
                pieces.append(HeaderSlot(entry[1], entry[2]))
            elif kind == "to":
                pieces.append(ToSlot(entry[1] if len(entry) > 1 else None))
            else:
                pieces.append(VariablesSlot(entry[1]))
        return cls(pieces)

    @property
    def size(self) -> int:
        """About the size of one copy (slots counted as their unpersonalised text)."""
        total = 0
        for piece in self.pieces:
            if isinstance(piece, (bytes, memoryview)):
                total += len(piece)
            elif isinstance(piece, TextSlot):
                total += len(piece.text) + 80
            elif isinstance(piece, HeaderSlot):
                total += len(piece.name) + len(piece.value) + 4
            elif isinstance(piece, MimeSlot):
                total += len(piece.mime)
            else:
                total += 80
        return total
