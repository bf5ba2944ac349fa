"""DATA as it will be stored: read in chunks, checked and normalised in one pass.

aiosmtpd reads DATA a line at a time (~1.6 s of Python for 25 MB), keeps every line as its own
object until the end, and passes bare CR and bare LF inside lines through, so a check reading
those bytes and a later step normalising them can see two different messages. Here each chunk
of complete lines is checked and normalised at C speed before anything reads it:
- a bare CR or a NUL refuses the message (RFC 5321 2.3.8; a NUL-dot can end DATA for a server
  downstream that drops NULs);
- a bare LF is read as CRLF, or refuses the message (`smtp.bare_lf`, like Postfix's
  `smtpd_forbid_bare_newline`); only `<CRLF>.<CRLF>` ends DATA either way;
- dot-stuffing is undone per line, lines over `smtp.max_line_bytes` and messages over the size
  limit are refused (after reading to the end, as RFC 5321 4.2.5 implies).
Bytes wait in memory while all sessions together stay within `smtp.data_memory_bytes`, then in
an unlinked file under the data directory (a crash leaves nothing), within
`smtp.spool_max_bytes`; past that the message gets 451 and the client keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger("mta.smtp")

CHUNK_BYTES = 65536
_BARE_LF = re.compile(rb"(?<!\r)\n")
_END = b"\r\n.\r\n"

BARE_CR = "550 5.6.0 Bare CR in the message: lines must end in CRLF (RFC 5321 2.3.8)"
BARE_LF = "550 5.6.0 Bare LF in the message: lines must end in CRLF (RFC 5321 2.3.8)"
NUL = "550 5.6.0 NUL character in the message"
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
NO_ROOM = "451 4.3.1 Insufficient system storage, please try again later"


@dataclass(frozen=True)
class DataPolicy:
    bare_lf: str  # "normalise" or "reject"
    max_bytes: int
    max_line_bytes: int


class DataSpool:
    """What all sessions hold of the messages they are receiving: memory, then disk."""

    def __init__(self, memory_bytes: int, disk_bytes: int, directory: Path) -> None:
        self.memory_limit = memory_bytes
        self.disk_limit = disk_bytes
        self.directory = directory
        self.memory_used = 0
        self.disk_used = 0

    def buffer(self) -> MessageBuffer:
        return MessageBuffer(self)


class MessageBuffer:
    """One message's bytes as they arrive: the chunks as read (no buffer grown and copied as it
    fills), or a file once the shared memory budget is spent."""

    def __init__(self, spool: DataSpool) -> None:
        self._spool = spool
        self._chunks: list[bytes] = []
        self._in_memory = 0
        self._file: IO[bytes] | None = None
        self.size = 0

    def write(self, data: bytes) -> bool:
        """Keep `data`; False when neither memory nor disk budget has room for it."""
        spool = self._spool
        if self._file is None and spool.memory_used + len(data) <= spool.memory_limit:
            self._chunks.append(data)
            self._in_memory += len(data)
            spool.memory_used += len(data)
            self.size += len(data)
            return True
        if spool.disk_used + len(data) + self._in_memory > spool.disk_limit:
            return False
        if self._file is None:
            spool.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=spool.directory)  # noqa: SIM115 (kept open)
            self._file.writelines(self._chunks)
            spool.memory_used -= self._in_memory
            spool.disk_used += self._in_memory
            self._chunks, self._in_memory = [], 0
        self._file.write(data)
        spool.disk_used += len(data)
        self.size += len(data)
        return True

    async def take(self) -> bytes:
        """The whole message (read back from disk, off the loop, if it was spooled); the budget
        it held is given back (the caller holds the accepting budget for it from here on)."""
        if self._file is None:
            data = b"".join(self._chunks)
        else:
            data = await asyncio.to_thread(_read_all, self._file)
        self.release()
        return data

    def release(self) -> None:
        spool = self._spool
        spool.memory_used -= self._in_memory
        self._chunks, self._in_memory = [], 0
        if self._file is not None:
            spool.disk_used -= self.size
            self._file.close()
            self._file = None
        self.size = 0


def _has_long_line(lines: bytes, limit: int) -> bool:
    """Whether a line (CRLF included) is longer than `limit`: from each line start, the last
    LF within reach, so a chunk costs about len/limit searches, not one step per line."""
    start, end = 0, len(lines)
    while end - start > limit:
        lf = lines.rfind(b"\n", start, start + limit)
        if lf < 0:
            return True
        start = lf + 1
    return False


def _read_all(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()


class DataReader:
    """Reads one DATA transfer from `reader` into `buffer`. `received` counts raw bytes (for the
    session's minimum data rate)."""

    def __init__(self, reader: asyncio.StreamReader, policy: DataPolicy,
                 buffer: MessageBuffer) -> None:
        self._reader = reader
        self._policy = policy
        self._buffer = buffer
        self.received = 0
        self.refusal: str | None = None
        self._cut = False  # the pending line lost its start (too long): it is no line start

    async def read(self) -> str | None:
        """Read through `<CRLF>.<CRLF>`; None when the message is whole and clean, else the reply
        that refuses it. Bytes the client sent after the end (pipelined commands) are left for
        the session to read. Raises ConnectionError when the client goes away."""
        pending = b""  # an incomplete line, waiting for its CRLF
        while True:
            chunk = await self._reader.read(CHUNK_BYTES)
            if not chunk:
                raise ConnectionResetError("connection lost during DATA")
            self.received += len(chunk)
            window = pending + chunk if pending else chunk
            last = window.rfind(b"\r\n")
            if last < 0:
                pending = self._incomplete(window)
                continue
            lines, pending = window[: last + 2], window[last + 2 :]
            at_start = not self._cut and lines.startswith(b".\r\n")
            self._cut = False
            end = 0 if at_start else lines.find(_END)
            if end < 0:
                self._take(lines)
                pending = self._incomplete(pending)
                continue
            if end > 0:
                end += 2  # the CRLF before the dot ends the last line of the message
                self._take(lines[:end])
            self._unread(lines[end + 3 :] + pending)
            return self.refusal

    def _incomplete(self, line: bytes) -> bytes:
        """A line still without its CRLF: once past the limit it is refused and only its last
        byte (maybe the CR of the CRLF) is kept."""
        if len(line) <= self._policy.max_line_bytes:
            return line
        self._refuse(LINE_TOO_LONG)
        self._cut = True
        return line[-1:]

    def _take(self, lines: bytes) -> None:
        """Check, normalise and keep complete lines (from a line start, ending in CRLF)."""
        if self.refusal is not None:
            return
        if b"\0" in lines:
            self._refuse(NUL)
            return
        crlf = lines.count(b"\r\n")
        if lines.count(b"\r") != crlf:
            self._refuse(BARE_CR)
            return
        if lines.count(b"\n") != crlf:
            if self._policy.bare_lf == "reject":
                self._refuse(BARE_LF)
                return
            lines = _BARE_LF.sub(b"\r\n", lines)
        if _has_long_line(lines, self._policy.max_line_bytes):
            self._refuse(LINE_TOO_LONG)
            return
        if lines.startswith(b"."):
            lines = lines[1:]
        lines = lines.replace(b"\r\n.", b"\r\n")  # dot-stuffing undone (RFC 5321 4.5.2)
        if self._buffer.size + len(lines) > self._policy.max_bytes:
            self._refuse(f"552 5.3.4 Message size exceeds {self._policy.max_bytes} bytes")
        elif not self._buffer.write(lines):
            log.warning("DATA spool full: a message gets 451")
            self._refuse(NO_ROOM)

    def _refuse(self, reply: str) -> None:
        if self.refusal is None:
            self.refusal = reply
        self._buffer.release()

    def _unread(self, data: bytes) -> None:
        """Hand back what followed the end of DATA (a pipelined QUIT, RSET or MAIL). asyncio's
        StreamReader has no public way to; aiosmtpd itself works on its `_buffer`."""
        if data:
            self._reader._buffer[:0] = data  # type: ignore[attr-defined]
