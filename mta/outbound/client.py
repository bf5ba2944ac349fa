"""SMTP sessions to remote MX hosts (aiosmtplib), with the manual's TLS policy.

| require-tls | skip-verification | what happens                                                 |
|-------------|-------------------|--------------------------------------------------------------|
| false       | false             | STARTTLS with a verified certificate if offered; a host whose |
|             |                   | certificate cannot be verified gets plain text, as the manual |
|             |                   | says ("a TLS connection will not be established")            |
| false       | true              | STARTTLS if offered, any certificate                          |
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
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from mta.outbound.mx import MxResolver, Route

log = logging.getLogger("mta.outbound")

UNVERIFIABLE_MEMORY_S = 3600.0  # skip the doomed verified handshake with such a host this long
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

    @classmethod
    def parse(cls, code: int, message: str) -> Reply:
        text = " ".join(message.split())
        match = _ENHANCED.match(text)
        if match:
            return cls(code, text[match.end():], match.group(1))
        return cls(code, text, "")

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
                             " (no SMTPUTF8)", "5.6.7")
            options.append("SMTPUTF8")
        if smtp.supports_extension("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        encoding = "utf-8" if needs_utf8 else "ascii"
        try:
            await smtp.mail(sender, options=options, encoding=encoding,
                            timeout=self._timeouts.command)
            await smtp.rcpt(recipient, encoding=encoding, timeout=self._timeouts.command)
            response = await smtp.data(data, timeout=self._timeouts.data)
        except SMTPResponseException as exc:
            if exc.code == 421 or not smtp.is_connected:
                self.usable = False
                await self.close()
            else:
                await self._reset()
            return Reply.parse(exc.code, exc.message)
        except (SMTPServerDisconnected, SMTPTimeoutError, OSError) as exc:
            self.usable = False
            await self.close()
            raise SessionFailed(_lost(exc), self.mx_host) from None
        return Reply.parse(response.code, response.message)

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


def _lost(exc: BaseException) -> Reply:
    what = "timed out" if isinstance(exc, TimeoutError) else "connection lost"
    detail = str(exc) or exc.__class__.__name__
    return Reply(NO_CONNECTION, f"{what}: {detail}", "4.4.2")


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
        self._unverifiable: dict[str, float] = {}

    async def open(self, route: Route, policy: TlsPolicy) -> Session:
        """The first host that takes a session; raises SessionFailed with the last problem."""
        last = SessionFailed(Reply(NO_CONNECTION, "no host to connect to", "4.4.1"))
        for hop in route.hops:
            try:
                addresses = await self._resolver.addresses(hop.name)
            except Exception as exc:  # a DNS failure for one host: try the next
                last = SessionFailed(Reply(NO_CONNECTION, f"{hop.name}: {exc}", "4.4.3"), hop.name)
                continue
            if not addresses:
                last = SessionFailed(
                    Reply(NO_CONNECTION, f"{hop.name} has no address", "4.4.3"), hop.name
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
        verify = not policy.skip_verification
        plain_fallback = not policy.require and verify
        if plain_fallback and self._unverifiable.get(name, 0) > time.monotonic():
            return await self._connect(name, address, port, use_tls=False, verify=False)
        try:
            return await self._connect(name, address, port, use_tls=True, verify=verify,
                                       required=policy.require)
        except _Unverified as exc:
            if not plain_fallback:
                raise SessionFailed(
                    Reply(NO_CONNECTION, f"TLS is required but the certificate of {name} could"
                          f" not be verified: {exc}", "4.7.5"),
                    name,
                ) from None
            log.info("certificate of %s not verified (%s): delivering without TLS", name, exc)
            self._unverifiable[name] = time.monotonic() + UNVERIFIABLE_MEMORY_S
            return await self._connect(name, address, port, use_tls=False, verify=False)

    async def _connect(self, name: str, address: str, port: int, *, use_tls: bool, verify: bool,
                       required: bool = False) -> Session:
        timeouts = self._timeouts
        smtp = aiosmtplib.SMTP(hostname=address, port=port, local_hostname=self._helo,
                               timeout=timeouts.command, start_tls=False, use_tls=False)
        try:
            await smtp.connect(timeout=timeouts.connect)
            await smtp.ehlo(timeout=timeouts.command)
        except aiosmtplib.SMTPHeloError:
            try:  # a server without ESMTP
                await smtp.helo(timeout=timeouts.command)
            except SMTPResponseException as exc:
                smtp.close()
                raise SessionFailed(Reply.parse(exc.code, exc.message), name) from None
            except (SMTPException, OSError) as exc:
                smtp.close()
                raise SessionFailed(_lost(exc), name) from None
        except SMTPResponseException as exc:  # a 4xx/5xx greeting
            smtp.close()
            raise SessionFailed(Reply.parse(exc.code, exc.message), name) from None
        except (SMTPException, OSError) as exc:
            smtp.close()
            raise SessionFailed(_lost(exc), name) from None
        tls = False
        if use_tls and smtp.supports_extension("starttls"):
            context = self._verifying if verify else self._any_cert
            try:
                await smtp.starttls(server_hostname=name, tls_context=context,
                                    timeout=timeouts.command)
                await smtp.ehlo(timeout=timeouts.command)
            except ssl.SSLCertVerificationError as exc:
                smtp.close()
                raise _Unverified(exc.verify_message or str(exc)) from None
            except SMTPResponseException as exc:
                smtp.close()
                raise SessionFailed(Reply.parse(exc.code, exc.message), name) from None
            except (SMTPException, OSError) as exc:
                smtp.close()
                if isinstance(exc.__cause__ or exc.__context__, ssl.SSLCertVerificationError):
                    raise _Unverified(str(exc)) from None
                raise SessionFailed(_lost(exc), name) from None
            tls = True
        elif required:
            await Session(smtp, name, False, False, timeouts).close()
            raise SessionFailed(
                Reply(NO_CONNECTION, f"TLS is required but {name} does not offer STARTTLS",
                      "4.7.4"),
                name,
            )
        return Session(smtp, name, tls, tls and verify, timeouts)


class _Unverified(Exception):
    """The host's certificate (or its name) could not be verified."""
