"""SMTP sessions to remote MX hosts (aiosmtplib), with the manual's TLS policy.

| require-tls | skip-verification | what happens                                                 |
|-------------|-------------------|--------------------------------------------------------------|
| false       | false             | STARTTLS with a verified certificate if offered; plain text  |
|             |                   | when the certificate cannot be verified or the upgrade fails |
|             |                   | (the manual: "a TLS connection will not be established",     |
|             |                   | "delivered over a plaintext SMTP connection")                 |
| false       | true              | STARTTLS with any certificate if offered, else plain text    |
| true        | false             | STARTTLS with a verified certificate, or no delivery (retry) |
| true        | true              | STARTTLS with any certificate, or no delivery (retry)        |
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import (
    SMTPDataError,
    SMTPException,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from mta.outbound.mx import MxResolver, Route

log = logging.getLogger("mta.outbound")

NO_TLS_MEMORY_S = 3600.0  # a host whose TLS failed gets plain text at once for this long
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b\s*")
# Mailgun's pseudo-code for "could not connect or the connection was lost"
NO_CONNECTION = 499


@dataclass(frozen=True)
class TlsPolicy:
    require: bool
    skip_verification: bool


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # without the enhanced status code
    enhanced: str
    stage: str = ""  # the command answered: connect, ehlo, starttls, mail, rcpt, data

    @classmethod
    def parse(cls, code: int, message: str, stage: str = "") -> Reply:
        text = " ".join(message.split())
        match = _ENHANCED.match(text)
        if match:
            return cls(code, text[match.end():], match.group(1), stage)
        return cls(code, text, "", stage)

    @property
    def message(self) -> str:
        """As Mailgun's delivery-status `message` shows it: enhanced code, then the text."""
        return f"{self.enhanced} {self.text}".strip()


class SessionFailed(Exception):
    """No usable session (connect, greeting, EHLO, TLS policy) or it was lost mid-transaction.
    `reply` is what the server said, or a pseudo-reply (499) when it said nothing."""

    def __init__(self, reply: Reply, mx_host: str = "") -> None:
        super().__init__(reply.message)
        self.reply = reply
        self.mx_host = mx_host


@dataclass(frozen=True)
class Timeouts:
    connect: float
    command: float
    data: float


class Session:
    """One open connection; sends one message per transaction, RSET between failures."""

    def __init__(self, smtp: aiosmtplib.SMTP, mx_host: str, tls: bool, verified: bool,
                 timeouts: Timeouts) -> None:
        self._smtp = smtp
        self.mx_host = mx_host
        self.tls = tls
        self.certificate_verified = verified
        self._timeouts = timeouts
        self.opened_at = time.monotonic()
        self.usable = True
        sockname = smtp.transport.get_extra_info("sockname") if smtp.transport else None
        self.local_ip = sockname[0] if sockname else ""

    @property
    def utf8(self) -> bool:
        return self._smtp.supports_extension("smtputf8")

    async def send(self, sender: str, recipient: str, data: bytes) -> Reply:
        """The server's verdict on one message; raises SessionFailed if the connection died."""
        smtp = self._smtp
        options = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        needs_utf8 = not (sender.isascii() and recipient.isascii())
        if needs_utf8:
            if not smtp.supports_extension("smtputf8"):
                return Reply(553, "the receiving server does not accept non-ASCII addresses"
                             " (no SMTPUTF8)", "5.6.7", "mail")
            options.append("SMTPUTF8")
        if smtp.supports_extension("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        encoding = "utf-8" if needs_utf8 else "ascii"
        stage = "mail"
        try:
            await smtp.mail(sender, options=options, encoding=encoding,
                            timeout=self._timeouts.command)
            stage = "rcpt"
            await smtp.rcpt(recipient, encoding=encoding, timeout=self._timeouts.command)
            stage = "data"
            response = await self._data(data)
        except SMTPResponseException as exc:
            if exc.code == 421 or not smtp.is_connected:
                self.usable = False
                await self.close()
            else:
                await self._reset()
            return Reply.parse(exc.code, exc.message, stage)
        except (SMTPServerDisconnected, SMTPTimeoutError, OSError) as exc:
            self.usable = False
            await self.close()
            raise SessionFailed(_lost(exc, stage), self.mx_host) from None
        return Reply.parse(response.code, response.message, "data")

    async def _data(self, data: bytes) -> SMTPResponse:
        """DATA and the message. A message whose line ends are all CRLF (what the accept path
        stores) needs only its dots stuffed, one bytes.replace; aiosmtplib's data() runs two
        regular expressions over every message for that, 18 % of the loop's time when
        delivering 10 KB messages. No stored message has a bare CR or LF today (the accept
        path and the tracking rewrite normalise, variables holding them are refused), but one
        that had would go through aiosmtplib's data(), which normalises: never raw to the wire."""
        smtp = self._smtp
        crlf = data.count(b"\r\n")
        if crlf != data.count(b"\n") or crlf != data.count(b"\r") or smtp.protocol is None:
            return await smtp.data(data, timeout=self._timeouts.data)
        start = await smtp.execute_command(b"DATA", timeout=self._timeouts.data)
        if start.code != 354:
            raise SMTPDataError(start.code, start.message)
        stuffed = data.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        ending = b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n"
        protocol = smtp.protocol
        try:
            protocol.write(stuffed + ending)  # one send: a copy costs less than a system call
            # no await between the write and this: the reply cannot come before it is awaited
            response = await protocol.read_response(timeout=self._timeouts.data)
        except (SMTPServerDisconnected, SMTPTimeoutError):
            smtp.close()  # as aiosmtplib's data() does: a late reply must not meet a command
            raise
        if response.code != 250:
            raise SMTPDataError(response.code, response.message)
        return response

    async def _reset(self) -> None:
        try:
            await self._smtp.rset(timeout=self._timeouts.command)
        except (SMTPException, OSError):
            self.usable = False
            await self.close()

    async def close(self) -> None:
        """QUIT politely when the connection is still up; never raises."""
        smtp = self._smtp
        if smtp.is_connected:
            try:
                await smtp.quit(timeout=min(self._timeouts.command, 10.0))
            except (SMTPException, OSError):
                smtp.close()
        self.usable = False


def _lost(exc: BaseException, stage: str) -> Reply:
    what = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
    detail = str(exc) or exc.__class__.__name__
    return Reply(NO_CONNECTION, f"{what}: {detail}", "4.4.2", stage)


class _NoTls(Exception):
    """STARTTLS did not give a usable TLS session (certificate, handshake, refusal)."""


class Connector:
    """Opens sessions for a route: MX hosts in order, each of their addresses, TLS by policy."""

    def __init__(self, resolver: MxResolver, helo_name: str, timeouts: Timeouts,
                 ca_file: str = "") -> None:
        self._resolver = resolver
        self._helo = helo_name
        self._timeouts = timeouts
        self._verifying = ssl.create_default_context()
        if ca_file:
            self._verifying.load_verify_locations(cafile=ca_file)
        self._any_cert = ssl.create_default_context()
        self._any_cert.check_hostname = False
        self._any_cert.verify_mode = ssl.CERT_NONE
        self._no_tls: dict[str, float] = {}  # host -> until when it gets plain text at once

    def prune(self) -> None:
        now = time.monotonic()
        for host in [h for h, until in self._no_tls.items() if until < now]:
            del self._no_tls[host]

    async def open(self, route: Route, policy: TlsPolicy) -> Session:
        """The first host that takes a session; raises SessionFailed with the last problem."""
        last = SessionFailed(Reply(NO_CONNECTION, "no host to connect to", "4.4.1", "connect"))
        for hop in route.hops:
            try:
                addresses = await self._resolver.addresses(hop.name)
            except Exception as exc:  # a DNS failure for one host: try the next
                last = SessionFailed(
                    Reply(NO_CONNECTION, f"{hop.name}: {exc}", "4.4.3", "connect"), hop.name
                )
                continue
            if not addresses:
                last = SessionFailed(
                    Reply(NO_CONNECTION, f"{hop.name} has no address", "4.4.3", "connect"),
                    hop.name,
                )
                continue
            for address in addresses:
                try:
                    return await self._open_host(hop.name, address, hop.port, policy)
                except SessionFailed as exc:
                    last = exc
                    if exc.reply.code >= 500 and exc.reply.code != NO_CONNECTION:
                        break  # the host refused us outright; its other addresses will too
        raise last

    async def _open_host(self, name: str, address: str, port: int, policy: TlsPolicy) -> Session:
        if not policy.require and self._no_tls.get(name, 0) > time.monotonic():
            return await self._connect(name, address, port, policy, use_tls=False)
        try:
            return await self._connect(name, address, port, policy, use_tls=True)
        except _NoTls as exc:
            if policy.require:
                raise SessionFailed(
                    Reply(NO_CONNECTION, f"TLS is required, and with {name} it failed: {exc}",
                          "4.7.5", "starttls"),
                    name,
                ) from None
            log.info("no TLS with %s (%s): delivering in plain text", name, exc)
            self._no_tls[name] = time.monotonic() + NO_TLS_MEMORY_S
            return await self._connect(name, address, port, policy, use_tls=False)

    async def _connect(self, name: str, address: str, port: int, policy: TlsPolicy, *,
                       use_tls: bool) -> Session:
        timeouts = self._timeouts
        smtp = aiosmtplib.SMTP(hostname=address, port=port, local_hostname=self._helo,
                               timeout=timeouts.command, start_tls=False, use_tls=False)
        stage = "connect"
        try:
            await smtp.connect(timeout=timeouts.connect)
            stage = "ehlo"
            await self._greet(smtp)
        except SMTPResponseException as exc:  # a 4xx/5xx greeting or EHLO reply
            smtp.close()
            raise SessionFailed(Reply.parse(exc.code, exc.message, stage), name) from None
        except (SMTPException, OSError) as exc:
            smtp.close()
            raise SessionFailed(_lost(exc, stage), name) from None
        verify = not policy.skip_verification
        if not (use_tls and smtp.supports_extension("starttls")):
            if policy.require:
                await Session(smtp, name, False, False, timeouts).close()
                raise SessionFailed(
                    Reply(NO_CONNECTION, f"TLS is required but {name} does not offer STARTTLS",
                          "4.7.4", "starttls"),
                    name,
                )
            return Session(smtp, name, False, False, timeouts)
        try:
            await smtp.starttls(server_hostname=name,
                                tls_context=self._verifying if verify else self._any_cert,
                                timeout=timeouts.command)
            await smtp.ehlo(timeout=timeouts.command)
        except SMTPResponseException as exc:  # e.g. 454 TLS not available
            smtp.close()
            raise _NoTls(f"{exc.code} {exc.message}") from None
        except ssl.SSLCertVerificationError as exc:
            smtp.close()
            raise _NoTls(f"the certificate could not be verified ({exc.verify_message})"
                         ) from None
        except (SMTPException, ssl.SSLError, OSError) as exc:
            # after the 220 to STARTTLS, any failure (a handshake error, a hang-up) is a
            # failed upgrade; a host that is really gone fails the plain-text retry as well
            smtp.close()
            raise _NoTls(str(exc) or exc.__class__.__name__) from None
        return Session(smtp, name, True, verify, timeouts)

    async def _greet(self, smtp: aiosmtplib.SMTP) -> None:
        """EHLO; HELO for a server that does not know EHLO (500, 502, 504). Any other refusal
        (a 421 "too busy") is the server's answer and is raised."""
        try:
            await smtp.ehlo(timeout=self._timeouts.command)
        except aiosmtplib.SMTPHeloError as exc:
            if exc.code not in (500, 502, 504) or not smtp.is_connected:
                raise
            await smtp.helo(timeout=self._timeouts.command)
