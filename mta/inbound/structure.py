"""How many MIME parts a received message has and how deep they nest, counted before anything
builds them.

The stdlib parser builds an object per part: a 25 MB message of 500,000 empty parts costs it
about 50 s, and the message would be parsed again for every forward attempt and every GET of a
stored copy. So the MX refuses such a message at the door (`inbound.max_mime_parts`,
`max_mime_depth`). The count follows the parser's reading: a part begins at each delimiter line
`--boundary` of any multipart still open, its Content-Type decides whether it opens a multipart
of its own, and a message/* part's enclosed header block is read the same way. Delimiters are
found by one regex over the open boundaries (rebuilt only when they change), so text that is no
delimiter costs no Python steps; the count stops at the first limit passed.
"""

from __future__ import annotations

import email.message
import re
from dataclasses import dataclass, field

PART_HEAD_BYTES = 65536  # a part's header block is read this far at most
# what the stdlib takes for a header line: a name and a colon, an mbox "From " line, or a
# continuation
_HEADER_START = re.compile(rb"[!-9;-~]*:|From |[ \t]")
_NOT_A_HEADER = re.compile(rb"\r\n(?![ \t]|[!-9;-~]*:|From )")


class TooComplex(ValueError):
    """The message has more parts, or deeper nesting, than allowed; the text says which."""


@dataclass
class _Open:
    boundary: bytes
    depth: int  # the depth of the parts it contains
    delimiter: re.Pattern[bytes] = field(init=False)
    found: re.Match[bytes] | None = None  # its next delimiter line (from the last search)
    searched_from: int = -1

    def __post_init__(self) -> None:
        self.delimiter = re.compile(
            rb"\r\n--" + re.escape(self.boundary) + rb"(--)?[ \t]*(?:\r\n|\Z)"
        )

    def next_from(self, mime: bytes, position: int) -> re.Match[bytes] | None:
        """Its next delimiter line at or after `position`; each boundary's search only ever
        moves forward (an outer one is not searched again for every inner part)."""
        if self.searched_from < 0 or (self.found is not None and self.found.start() < position):
            self.found = self.delimiter.search(mime, position)
            self.searched_from = position
        return self.found


def _content_type(head: bytes) -> tuple[str, bytes | None]:
    """(lower-cased type, its boundary when multipart) of a header block, read as the stdlib
    reads it."""
    holder = email.message.Message()
    for line in re.split(rb"\r\n(?![ \t])", head):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-type":
            holder["Content-Type"] = value.decode("utf-8", "surrogateescape").strip()
            break
    kind = holder.get_content_type()
    if not kind.startswith("multipart/"):
        return kind, None
    boundary = holder.get_boundary()
    return kind, boundary.encode("utf-8", "surrogateescape") if boundary else None


def check_structure(mime: bytes, max_parts: int, max_depth: int) -> None:
    """Raise TooComplex when the message passes either limit."""
    _Scan(mime, max_parts, max_depth).run()


class _Scan:
    """One reading of one message. (A class, not nested functions: a closure that calls itself
    is a reference cycle, and would keep a 25 MB message alive until the cycle collector ran.)"""

    def __init__(self, mime: bytes, max_parts: int, max_depth: int) -> None:
        self.mime = mime
        self.max_parts = max_parts
        self.max_depth = max_depth
        self.stack: list[_Open] = []
        self.parts = 0

    def run(self) -> None:
        mime, stack = self.mime, self.stack
        position = self.entity(0, 0)
        after_delimiter = -1  # where the last delimiter line of the innermost multipart ended
        while stack:
            found = _next_delimiter(mime, stack, max(0, position - 2))  # from the CRLF before
            if found is None:
                return
            index, delimiter = found
            if index == len(stack) - 1 and delimiter.start() + 2 == after_delimiter:
                # delimiter lines in a row are read as one, a closing one too (the stdlib's
                # reading, which then goes on finding parts): count on as it does
                after_delimiter = delimiter.end()
                position = self.entity(after_delimiter, stack[-1].depth)  # the part begins here
                continue
            del stack[index + 1 :]  # an outer delimiter closes the inner multiparts still open
            position = delimiter.end()
            if delimiter.group(1):
                stack.pop()
                after_delimiter = -1
                continue
            self.count(1)
            after_delimiter = position
            position = self.entity(position, stack[-1].depth)

    def entity(self, start: int, depth: int) -> int:
        """Read the header block of an entity at `start` (a part, or the message itself), and
        of the messages a message/* part encloses; open what they open. Returns where the body
        starts. As in the stdlib parser, a header block ends at a blank line or at the next
        delimiter of a multipart around it."""
        mime = self.mime
        while True:
            if mime.startswith(b"\r\n", start):  # no header: text/plain
                return start + 2
            around = _next_delimiter(mime, self.stack, max(0, start - 2))
            limit = around[1].start() if around is not None else len(mime)
            end = mime.find(b"\r\n\r\n", start, min(limit, start + PART_HEAD_BYTES))
            end = min(limit, start + PART_HEAD_BYTES) if end < 0 else end + 4
            if not _HEADER_START.match(mime, start):  # no header line: all of it is body
                end = start
            elif stray := _NOT_A_HEADER.search(mime, start, max(start, end - 4)):
                end = stray.start() + 2  # a line that is no header ends the block (and is body)
            kind, boundary = _content_type(mime[start:end])
            if boundary is not None:
                self.deeper(depth)
                self.stack.append(_Open(boundary, depth + 1))
            elif kind == "message/delivery-status":  # a part for each block of fields
                self.count(mime.count(b"\r\n\r\n", end, limit) + 1)
            elif kind.startswith("message/"):  # a whole message inside: read its header too
                self.deeper(depth)
                start, depth = end, depth + 1
                continue
            return end

    def count(self, parts: int) -> None:
        self.parts += parts
        if self.parts > self.max_parts:
            raise TooComplex(f"Message has more than {self.max_parts} MIME parts")

    def deeper(self, depth: int) -> None:
        if depth + 1 > self.max_depth:
            raise TooComplex(f"MIME parts nest deeper than {self.max_depth}")


def _next_delimiter(
    mime: bytes, stack: list[_Open], position: int
) -> tuple[int, re.Match[bytes]] | None:
    """The nearest delimiter line of any open boundary at or after `position` (a CRLF), with
    its index in the stack."""
    best: tuple[int, re.Match[bytes]] | None = None
    for index, opened in enumerate(stack):
        found = opened.next_from(mime, position)
        # the innermost wins a tie (the same boundary nested): the stdlib reads it so
        if found is not None and (best is None or found.start() <= best[1].start()):
            best = (index, found)
    return best
