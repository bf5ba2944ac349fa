"""A capture SMTP server standing in for a remote MX host, on loopback in the test's own loop.

It keeps what it receives and misbehaves on magic local parts, so that every failure path of
delivery is exercised over a real socket:

  unknown@...     550 5.1.1 at RCPT (a hard bounce)
  full@...        452 4.2.2 at RCPT (a soft bounce)
  defer-once@...  451 4.3.0 at DATA the first time, then accepted
  throttle@...    421 4.7.0 at RCPT, then the connection is closed (also throttle-N@)
  reject@...      554 5.7.1 at DATA (a permanent refusal that is no hard bounce)
  drop@...        the connection is cut after the message, before the reply

`mode` changes the whole server: "silent" accepts connections and never says a word.
Other options change one step for every session:

  refuse_every=N  every Nth connection (the 2nd, 4th, ... for N=2) is closed at once, before
                  any banner (counted in `refused`, not in `connections`)
  ehlo_reply=...  EHLO is answered with this one line (e.g. "421 4.7.0 Too busy"); a 421 also
                  closes the connection after the reply
  mail_reply=...  MAIL FROM is answered with this line (a refused envelope sender); the
                  placeholder {sender} is replaced by the address given
  break_tls=True  STARTTLS is offered and answered 220, but the client's hello is answered with
                  bytes that are no TLS record, and the connection is closed: the handshake
                  fails on the client's side (an SSL error there, not a lost connection)

Besides what arrives (each with its arrival time on the monotonic clock), it counts connections,
RCPT attempts per address, and the sessions open at once (`open_sessions`, high-water mark
`most_open_sessions`), so that shaping limits can be checked from the receiving side.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax


@dataclass
class Captured:
    mail_from: str
    rcpt_to: str
    data: bytes
    tls: bool
    peer: str
    at: float = field(default_factory=time.monotonic)  # arrival, time.monotonic()


@dataclass
class Capture:
    """One running capture server; `messages` fills as mail arrives."""

    host: str
    port: int
    messages: list[Captured] = field(default_factory=list)
    connections: int = 0
    refused: int = 0  # connections closed at once by refuse_every
    open_sessions: int = 0
    most_open_sessions: int = 0
    attempts: Counter[str] = field(default_factory=Counter)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.AbstractServer | None = None
    _sessions: list[SMTP] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def to(self, rcpt: str) -> list[Captured]:
        return [m for m in self.messages if m.rcpt_to.lower() == rcpt.lower()]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Captured]:
        """Until at least `count` messages have arrived."""
        async def enough() -> None:
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.messages

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in self._sessions:
                if session.transport is not None:
                    session.transport.abort()
            await self._server.wait_closed()


class _Handler:
    def __init__(self, capture: Capture, delay_s: float) -> None:
        self.capture = capture
        self.delay_s = delay_s

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        local = address.partition("@")[0].lower()
        self.capture.attempts[address.lower()] += 1
        if local == "unknown":
            return "550 5.1.1 The email account that you tried to reach does not exist"
        if local == "full":
            return "452 4.2.2 The email account that you tried to reach is over quota"
        if local.startswith("throttle"):
            assert server.transport is not None
            server.loop.call_soon(server.transport.close)  # after the reply is written
            return "421 4.7.0 Try again later, closing connection"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpt = envelope.rcpt_tos[0]
        local = rcpt.partition("@")[0].lower()
        if local == "reject":
            return "554 5.7.1 Message rejected as spam"
        if local == "defer-once" and self.capture.attempts[rcpt.lower()] == 1:
            return "451 4.3.0 Temporary local problem, try again"
        if local == "drop":
            assert server.transport is not None
            server.transport.abort()
            return "250 2.0.0 never sent"
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        data = envelope.original_content or envelope.content or b""
        assert isinstance(data, bytes)
        tls = server.transport is not None and server.transport.get_extra_info("sslcontext")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        self.capture.messages.append(
            Captured(envelope.mail_from or "", rcpt, data, bool(tls), peer)
        )
        self.capture.arrived.set()
        return "250 2.0.0 OK captured"


class _Refusing(_Handler):
    """_Handler with EHLO and/or MAIL FROM answered by fixed lines (only built when asked
    for: a handle_EHLO hook changes how aiosmtpd answers EHLO)."""

    def __init__(self, capture: Capture, delay_s: float, mail_reply: str | None) -> None:
        super().__init__(capture, delay_s)
        self.mail_reply = mail_reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply.replace("{sender}", address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"


class _BusyEhlo(_Refusing):
    def __init__(
        self, capture: Capture, delay_s: float, mail_reply: str | None, ehlo_reply: str
    ) -> None:
        super().__init__(capture, delay_s, mail_reply)
        self.ehlo_reply = ehlo_reply

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        if self.ehlo_reply.startswith("421"):
            assert server.transport is not None
            server.loop.call_soon(server.transport.close)  # after the reply is written
        return [self.ehlo_reply]


class _Counting(SMTP):
    def __init__(
        self,
        capture: Capture,
        delay_s: float,
        *,
        mail_reply: str | None = None,
        ehlo_reply: str | None = None,
        **kwargs: Any,
    ) -> None:
        handler: _Handler
        if ehlo_reply is not None:
            handler = _BusyEhlo(capture, delay_s, mail_reply, ehlo_reply)
        elif mail_reply is not None:
            handler = _Refusing(capture, delay_s, mail_reply)
        else:
            handler = _Handler(capture, delay_s)
        super().__init__(handler, **kwargs)
        capture.connections += 1
        capture.open_sessions += 1
        capture.most_open_sessions = max(capture.most_open_sessions, capture.open_sessions)
        capture._sessions.append(self)
        self._capture = capture

    def connection_lost(self, error: Exception | None) -> None:
        self._capture.open_sessions -= 1
        super().connection_lost(error)


class _BrokenTls(_Counting):
    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("220 Ready to start TLS")
        with contextlib.suppress(TimeoutError, OSError):  # the client's hello
            await asyncio.wait_for(self._reader.read(1), 2.0)
        if self.transport is not None:
            self.transport.write(b"this is no TLS record\r\n" * 4)
            self.transport.close()


class _Slammed(asyncio.Protocol):
    """A connection closed as soon as it is made, without a word."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


async def start_capture(
    host: str = "127.0.0.1",
    *,
    tls: ssl.SSLContext | None = None,
    mode: str = "normal",
    hostname: str = "mx.capture.test",
    delay_s: float = 0.0,
    refuse_every: int = 0,
    ehlo_reply: str | None = None,
    mail_reply: str | None = None,
    break_tls: bool = False,
) -> Capture:
    """Start a capture server on an ephemeral port (STARTTLS offered when `tls` is given;
    `delay_s` is how long it takes over each message before answering; the other options are
    described at the top)."""
    capture = Capture(host, 0)
    loop = asyncio.get_running_loop()
    knocks = 0

    def session() -> asyncio.Protocol:
        nonlocal knocks
        knocks += 1
        if refuse_every and knocks % refuse_every == 0:
            capture.refused += 1
            return _Slammed()
        if break_tls:
            kind, context = _BrokenTls, tls or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        else:
            kind, context = _Counting, tls
        return kind(
            capture,
            delay_s,
            ehlo_reply=ehlo_reply,
            mail_reply=mail_reply,
            hostname=hostname,
            tls_context=context,
            require_starttls=False,
            decode_data=False,
            enable_SMTPUTF8=True,
            ident="capture",
        )

    if mode == "silent":
        capture._server = await loop.create_server(asyncio.Protocol, host, 0)
    else:
        capture._server = await loop.create_server(session, host, 0)
    capture.port = capture._server.sockets[0].getsockname()[1]
    return capture
