"""SMTP listeners on aiosmtpd, in the server's own event loop: submission (587 STARTTLS, 465
implicit TLS, 2525), where every message goes through the same accept path as the HTTP API, and
the inbound MX (25, see mta/smtp/mx.py).

aiosmtpd does the protocol; this module adds what a submission server needs around it:
AUTH PLAIN/LOGIN against SMTP credentials (checked off the loop), enhanced status codes on
every reply, PIPELINING, per-network connection limits and site-wide AUTH-failure limits
(mta.smtp.guard), a session age limit, DATA read by our own reader (mta.smtp.data: normalised
before anything parses it, spooled to disk past a shared memory budget, a minimum data rate),
and the sender policy of a credential (see `Acceptor`), whose deletion or new password ends
the sessions logged in with it.

The handlers are given only the parts they use (mta.services builds them): the settings, a
connection guard, the accepting budget, and for submission the AUTH throttle, the credentials
and the accept function; for the MX a domain lookup and the inbound side's receive function.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import ssl
from base64 import b64decode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

from mta.accept import AcceptError, Submission, valid_addr_spec
from mta.budget import ByteBudget
from mta.config import Config, parse_listen
from mta.credentials import CheckRefused, Credential, Credentials
from mta.smtp.data import DataPolicy, DataReader, DataSpool
from mta.smtp.guard import BLOCKED, AuthThrottle, AuthView, Guard, login_key, network_of
from mta.smtp.tls import server_context

log = logging.getLogger("mta.smtp")
logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO

NULL_SENDER = "<>"
AUTH_TEMPORARY = "454 4.7.0 Temporary authentication failure, try again later"
REAUTHENTICATE = "530 5.7.0 Authentication required: the credentials changed since AUTH"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # CR or LF in an address would split a header
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
# enhanced codes for aiosmtpd's own replies, by reply code (RFC 3463)
_DEFAULT_ENHANCED = {
    "220": "2.0.0", "221": "2.0.0", "235": "2.7.0", "250": "2.0.0", "251": "2.1.5",
    "334": "", "354": "", "421": "4.3.0", "451": "4.3.0", "452": "4.5.3", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.7.1", "552": "5.3.4",
    "553": "5.1.3", "554": "5.3.0", "555": "5.5.4",
}


def with_enhanced_code(line: str) -> str:
    """Give a reply line an RFC 3463 code when it has none (the 220 banner, challenges and
    continuation lines are not status replies and are left alone)."""
    code, sep, text = line[:3], line[3:4], line[4:]
    if code in ("220", "334", "354") or sep == "-" or not code.isdigit():
        return line
    if _HAS_ENHANCED.match(line):
        return line
    enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    text = text.replace("Error: ", "")
    return f"{code}{sep}{enhanced} {text}" if enhanced else line


def is_utf8(text: str) -> bool:
    """aiosmtpd decodes command arguments with surrogateescape: bytes that were not UTF-8 come
    through as lone surrogates, which nothing downstream (JSON, the store) can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# a MAIL/RCPT path in its plain form: <dot-atom@host> and what follows (the parameters)
_PLAIN_PATH = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>(.*)",
    re.S,
)


def _printable(text: str) -> str:
    """What goes back to the client of its own input: no CR/LF, no control characters."""
    return "".join(c if c.isprintable() else "?" for c in text)[:64]


def take_content(envelope: Envelope) -> bytes:
    """The message, taken out of the envelope: whoever accepts it is then its only holder and
    can let go of it before the store copies what it made of it."""
    content = envelope.original_content or b""
    envelope.content = envelope.original_content = None
    return content  # type: ignore[return-value]


@dataclass
class ListenerSpec:
    name: str
    listen: str
    implicit_tls: bool


DATA_CHECK_S = 5.0  # how often a DATA transfer's progress is looked at (at most)


class SubmissionSession(SMTP):
    """One SMTP connection on a submission port or the MX port."""

    def __init__(
        self,
        handler: BaseHandler,
        spec: ListenerSpec,
        line_limit: int,
        spool: DataSpool,
        **kwargs: Any,
    ) -> None:
        self.line_length_limit = line_limit  # read by SMTP.__init__ for its stream reader
        super().__init__(handler, **kwargs)
        self.close_after_reply = False
        self.spec = spec
        self.guard = handler.guard
        self.spool = spool
        self.peer_ip = ""
        self._refused = False
        self._age_limit: asyncio.TimerHandle | None = None
        self._opened_at = self._last_heard = self.loop.time()
        self._data: DataReader | None = None  # the DATA transfer under way
        self._data_started = 0.0
        # the next replies are EHLO/HELO lines, which carry no enhanced code (RFC 2034 §3)
        self.verbatim_replies = 0
        if spec.implicit_tls:
            self._auth_require_tls = False  # the whole session is already encrypted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # a new connection, not the STARTTLS upgrade of one
            peer = transport.get_extra_info("peername") or ("", 0)
            self.peer_ip = str(peer[0])
            refusal = self.guard.connect(self.peer_ip)
            if refusal is not None:
                self._refused = True
                log.info("refused %s on %s: %s", self.peer_ip, self.spec.name, refusal)
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            limit = self.event_handler.config.smtp.session_timeout_s
            self._age_limit = asyncio.get_running_loop().call_later(limit, self._too_old)
            self.event_handler.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._age_limit is not None:
            self._age_limit.cancel()
            self._age_limit = None
            self.guard.disconnect(self.peer_ip)
            if self.guard.session_ended is not None:
                self.guard.session_ended(self.loop.time() - self._opened_at)
            self.event_handler.sessions.discard(self)
        super().connection_lost(error)
        task = self._handler_coroutine
        if task is not None:
            task.add_done_callback(self._forget)

    def _forget(self, _task: asyncio.Task[None]) -> None:
        """Once the session's work is over, break its reference cycles so that its buffers
        (a TLS session holds ~400 KiB) are freed now, not at the next full garbage collection."""
        for name in ("_tls_protocol", "_original_transport", "_reader", "_writer",
                     "_handler_coroutine", "session", "envelope", "_client_connected_cb"):
            setattr(self, name, None)
        # aiosmtpd keeps tables of its own bound methods: a cycle through the session itself
        self._smtp_methods = self._auth_methods = self._handle_hooks = {}

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd reads every MAIL/RCPT path with the email header parser (~35 µs, a quarter
        of the loop's time at full load); the plain form is read with a regex (~0.4 µs) and
        anything else (quoted, IP literal, source route, `<>`) is left to aiosmtpd."""
        match = _PLAIN_PATH.fullmatch(arg) if arg else None
        if match is None or (
            self.local_part_limit and len(match.group(1).rpartition("@")[0]) > self.local_part_limit
        ):
            return super()._getaddr(arg)
        return match.group(1), match.group(2).lstrip()

    def eof_received(self) -> bool | None:
        if self._refused:  # never started: aiosmtpd's own handler would fail on it
            return False
        return super().eof_received()

    def data_received(self, data: bytes) -> None:
        self._last_heard = self.loop.time()
        super().data_received(data)

    def _timeout_cb(self) -> None:
        """Between commands, aiosmtpd re-arms this timer for each command: a client must send
        a whole command within the idle time (a byte now and then does not keep a session).
        During DATA it fires every DATA_CHECK_S: the transfer must keep coming (bytes within
        the idle time) and, past smtp.data_rate_grace_s, average at least smtp.min_data_rate.
        Either way the client is told why (RFC 5321 4.5.3.2)."""
        now = self.loop.time()
        quiet = now - self._last_heard
        if self._data is None or quiet >= self._timeout_duration:
            log.info("closing %s: idle for %.1f s", self.peer_ip, quiet)
            self.goodbye("421 4.4.2 Idle too long, closing")
            return
        smtp = self.event_handler.config.smtp
        elapsed = now - self._data_started
        if elapsed > smtp.data_rate_grace_s and self._data.received < smtp.min_data_rate * elapsed:
            log.info("closing %s: DATA at %.0f bytes/s, below smtp.min_data_rate", self.peer_ip,
                     self._data.received / elapsed)
            self.goodbye("421 4.4.2 Data too slow, closing")
            return
        self._reset_timeout(self._data_check_s)

    @property
    def _data_check_s(self) -> float:
        return max(0.05, min(DATA_CHECK_S, self.event_handler.config.smtp.data_rate_grace_s))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """As aiosmtpd's, but read by mta.smtp.data (see there), and held whole in memory only
        within the accepting budget shared with the HTTP API."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        config = self.event_handler.config
        policy = DataPolicy(config.smtp.bare_lf, config.sending.max_message_bytes,
                            config.smtp.max_line_bytes)
        buffer = self.spool.buffer()
        self._data = DataReader(self._reader, policy, buffer)
        self._data_started = self.loop.time()
        self._reset_timeout(self._data_check_s)
        try:
            refusal = await self._data.read()
        except BaseException:
            buffer.release()
            raise
        finally:
            self._data = None
            self._reset_timeout()
        if refusal is not None:
            log.info("refused a message from %s: %s", self.peer_ip, refusal)
            self._set_post_data_state()
            await self.push(refusal)
            return
        async with self.event_handler.accepting.hold(buffer.size):
            # the handler takes the message out of the envelope: nothing here keeps it
            self.envelope.content = self.envelope.original_content = await buffer.take()
            status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def _too_old(self) -> None:
        log.info("closing %s: session older than the limit", self.peer_ip)
        self.goodbye("421 4.4.2 Session too long, closing")

    def goodbye(self, reply: str) -> None:
        """A last reply, then close. Not on a connection already closing: a TLS transport
        closed twice loses its protocol and raises on the next write."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
        transport.close()

    async def push(self, status: Any) -> None:
        if isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        if status.startswith('500 Error: command "'):  # aiosmtpd echoes the client's input
            command = status.split('"', 2)[1]
            status = f'500 5.5.2 Error: command "{_printable(command)}" not recognized'
        if self.verbatim_replies and status.startswith("250"):
            self.verbatim_replies -= 1
        else:
            self.verbatim_replies = 0
            status = with_enhanced_code(status)
        await super().push(status)
        if self.close_after_reply and self.transport is not None:
            self.transport.close()


class BaseHandler:
    """aiosmtpd hooks every listener shares: errors, EHLO/HELO, MAIL, shutdown. Each gets the
    settings, its connection guard and the accepting budget it shares with the HTTP API."""

    def __init__(self, config: Config, guard: Guard, accepting: ByteBudget) -> None:
        self.config = config
        self.guard = guard
        self.accepting = accepting
        self.sessions: set[SubmissionSession] = set()
        self.busy = 0  # sessions inside DATA, waiting for their commit
        self.closing = False

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected failure is temporary for the client: it keeps the message and retries
        (aiosmtpd's default would be a permanent 500 quoting the exception)."""
        log.error("SMTP session error: %r", error, exc_info=error)
        return "451 4.3.0 Temporary server error, please try again"

    async def handle_EHLO(
        self, server: SubmissionSession, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        lines = [responses[0], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", *responses[1:]]
        server.verbatim_replies = len(lines)
        return lines

    async def handle_HELO(
        self, server: SubmissionSession, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        session.host_name = hostname
        server.verbatim_replies = 1
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: SubmissionSession, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:
        if self.closing:
            server.close_after_reply = True
            return "421 4.3.2 Server shutting down, try again later"
        if not is_utf8(address) or _CONTROL.search(address):
            return "553 5.1.7 Sender address is not valid"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    def recipient_refusal(self, envelope: Envelope, address: str) -> str | None:
        """Too many recipients, or an address that is no address: refused at RCPT, rather than
        the whole message after DATA."""
        if len(envelope.rcpt_tos) >= self.config.sending.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self.config.sending.max_recipients})"
        if not is_utf8(address) or not valid_addr_spec(address):
            return "553 5.1.3 Recipient address syntax is not valid"
        return None


class SubmissionHandler(BaseHandler):
    """AUTH, RCPT and DATA for authenticated submission: logins are checked against
    `credentials` behind the site-wide `throttle`, messages handed to `accept` (the accept
    path, which answers with the Message-Id once committed)."""

    def __init__(
        self, config: Config, guard: Guard, accepting: ByteBudget, *,
        throttle: AuthThrottle, credentials: Credentials,
        accept: Callable[[Submission], Awaitable[str]],
    ) -> None:
        super().__init__(config, guard, accepting)
        self.throttle = throttle
        self.credentials = credentials
        self.accept = accept

    async def handle_AUTH(
        self, server: SubmissionSession, session: Session, envelope: Envelope, args: list[str]
    ) -> str | None:
        """PLAIN and LOGIN, answered only after the password check, behind the guard: a blocked
        network is sent away (421); a login backing off after attacks is not checked for
        networks it has not logged in from, and a check that would need scrypt past the
        server-wide budget or the check threads' wait list is not run. Those get 454 (RFC 4954's
        temporary authentication failure): mail clients do not ask for another password and
        relayhosts defer rather than bounce, and the session may try again later. Blocks and
        backoffs are the whole site's (the store's), read once the login is known."""
        network = network_of(server.peer_ip)
        if self.guard.blocked(network):
            server.close_after_reply = True
            return BLOCKED
        mechanism = args[0].upper()
        initial = args[1] if len(args) > 1 else None
        login = password = None
        if mechanism == "PLAIN":
            blob = await self._initial_or_challenge(server, initial, "")
            if blob is None:
                return None
            parts = blob.split(b"\0")
            if len(parts) != 3:
                return "501 5.5.2 Can't split auth value"
            authzid, login_b, password_b = parts
            if authzid and authzid != login_b:  # Sendmail sends login\0login\0password
                return "535 5.7.8 Authentication credentials invalid"
            login, password = login_b, password_b
        elif mechanism == "LOGIN":
            login = await self._initial_or_challenge(server, initial, "Username:")
            if login is None:
                return None
            password = await self._initial_or_challenge(server, None, "Password:")
            if password is None:
                return None
        else:
            return "504 5.5.4 Unrecognized authentication type"
        view = await self.throttle.look(network, login_key(login))
        if view.blocked:  # by failures on other nodes
            server.close_after_reply = True
            return BLOCKED
        if view.held:
            return AUTH_TEMPORARY
        try:
            credential = await self._verify(login, password, view)
        except CheckRefused:
            await self.throttle.failed(view, checked=False)
            return AUTH_TEMPORARY
        if credential is None:
            await self.throttle.failed(view)
            log.info("authentication failed for %r from %s", _printable(view.login),
                     server.peer_ip)
            return "535 5.7.8 Authentication credentials invalid"
        await self.throttle.succeeded(view)
        session.authenticated = True
        session.auth_data = credential
        return "235 2.7.0 Authentication successful"

    async def _initial_or_challenge(
        self, server: SubmissionSession, initial: str | None, prompt: str
    ) -> bytes | None:
        if initial is not None and initial != "=":
            try:
                return b64decode(initial, validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return None
        if initial == "=":
            return b""
        answer = await server.challenge_auth(prompt)
        return None if answer is MISSING else answer  # type: ignore[return-value]

    async def _verify(self, login: bytes, password: bytes, view: AuthView) -> Credential | None:
        """The credential, or None for wrong credentials. A remembered right password costs
        an HMAC and needs no leave; a scrypt check needs the throttle's (else CheckRefused), and
        gives its share of the failure budget back when it passes or does not run."""
        try:
            login_text, password_text = login.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            return None
        credential = await self.credentials.remembered(login_text, password_text)
        if credential is not None:
            return credential
        units = self.throttle.take_check(view)
        if units is None:
            raise CheckRefused("over the server-wide rate of failed logins")
        try:
            credential = await self.credentials.check(login_text, password_text)
        except CheckRefused:
            self.throttle.give_back(units)
            raise
        if credential is not None:
            self.throttle.give_back(units)
        return credential

    async def handle_MAIL(
        self, server: SubmissionSession, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:
        """As for every listener, once the session's login is known to be still valid: one
        deleted or given a new password since its AUTH (on any node) must log in again."""
        credential: Credential = session.auth_data
        if not await self.credentials.still_valid(credential):
            session.authenticated = False
            session.auth_data = None
            log.info("%s: credentials of %s changed since AUTH", server.peer_ip, credential.login)
            return REAUTHENTICATE
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def handle_RCPT(
        self, server: SubmissionSession, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.recipient_refusal(envelope, address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(
        self, server: SubmissionSession, session: Session, envelope: Envelope
    ) -> str:
        credential: Credential = session.auth_data
        submission = Submission(
            domain=credential.domain,
            method="smtp",
            to=list(envelope.rcpt_tos),
            mime=take_content(envelope),
            # aiosmtpd spells the null sender (a relayhost passing on a bounce) "<>"
            envelope_sender="" if envelope.mail_from == NULL_SENDER else envelope.mail_from,
            authenticated=True,
            originating_ip=server.peer_ip,
            principal=credential.login,
        )
        self.busy += 1
        try:
            message_id = await self.accept(submission)
        except AcceptError as exc:
            return exc.smtp_reply
        except Exception:
            log.exception("could not accept a message from %s", credential.login)
            return "451 4.3.0 Temporary failure, please try again"
        finally:
            self.busy -= 1
        return f"250 2.0.0 OK: queued as <{message_id}>"


class SmtpListeners:
    """Starts and stops the configured SMTP listeners: submission ports, and the MX port when
    there is an inbound side to hand mail to."""

    def __init__(
        self, config: Config, handler: SubmissionHandler, mx_handler: BaseHandler | None = None
    ) -> None:
        self.config = config
        self.handler = handler
        self.spool = DataSpool(config.smtp.data_memory_bytes, config.smtp.spool_max_bytes,
                               Path(config.server.data_dir) / "spool")
        self.mx_handler = mx_handler
        self.servers: dict[str, asyncio.Server] = {}

    @property
    def handlers(self) -> list[BaseHandler]:
        return [self.handler] + ([self.mx_handler] if self.mx_handler else [])

    def specs(self) -> list[ListenerSpec]:
        smtp = self.config.smtp
        return [
            ListenerSpec(name, listen, name == "submission_tls")
            for name, listen in (("submission", smtp.submission),
                                 ("submission_tls", smtp.submission_tls),
                                 ("submission_alt", smtp.submission_alt),
                                 ("mx", smtp.mx if self.mx_handler else ""))
            if listen
        ]

    async def start(self) -> None:
        config = self.config
        specs = self.specs()
        if not specs:
            return
        context = server_context(config)
        loop = asyncio.get_running_loop()
        for spec in specs:
            host, port = parse_listen(f"smtp.{spec.name}", spec.listen)
            server = await loop.create_server(
                lambda spec=spec: self._session(spec, context),
                host, port, ssl=context if spec.implicit_tls else None,
                reuse_address=True, backlog=1024,
            )
            self.servers[spec.name] = server
            bound = server.sockets[0].getsockname()
            log.info("SMTP %s listening on %s:%d%s", spec.name, bound[0], bound[1],
                     " (implicit TLS)" if spec.implicit_tls else " (STARTTLS)")

    def _session(self, spec: ListenerSpec, context: ssl.SSLContext) -> SubmissionSession:
        config = self.config
        mx = spec.name == "mx"
        session = SubmissionSession(
            self.mx_handler if mx and self.mx_handler else self.handler,
            spec,
            spool=self.spool,
            hostname=config.server.hostname,
            ident="mta ESMTP",
            tls_context=None if spec.implicit_tls else context,
            require_starttls=False,
            auth_required=not mx,
            auth_require_tls=True,
            # the MX takes mail from anyone for our domains: it offers no AUTH at all
            auth_exclude_mechanism=["LOGIN", "PLAIN"] if mx else None,
            data_size_limit=config.sending.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=config.smtp.idle_timeout_s,
            command_call_limit={"AUTH": 10, "*": 100_000},
            line_limit=config.smtp.max_line_bytes,
        )
        return session

    def port(self, name: str) -> int:
        return self.servers[name].sockets[0].getsockname()[1]

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop listening, let messages already in DATA be committed and answered, then say
        421 to every remaining session."""
        for server in self.servers.values():
            server.close()
        for handler in self.handlers:
            handler.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(h.busy for h in self.handlers) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for handler in self.handlers:
            for session in list(handler.sessions):
                session.goodbye("421 4.3.2 Server shutting down, try again later")
        for server in self.servers.values():
            await server.wait_closed()
        self.servers.clear()
