"""The one accept path: HTTP and SMTP submissions both end in `Acceptor.accept`.

It validates, expands batch sends into per-recipient copies, and writes the message, its
recipient rows and their `accepted` events in one transaction. Only when that commit has
returned does the caller answer 200 / 250.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from mta import tokens
from mta.accept.headers import HeaderOptionError, consume_control_headers, message_summary
from mta.accept.mime import (
    Parts,
    address_header,
    build_message,
    encode_header,
    personalise_mime,
    recipient_substituter,
)
from mta.config import Config
from mta.dates import message_date
from mta.domains import Domain, Domains
from mta.events import event_statement, new_event, record
from mta.store import Statement, Store

log = logging.getLogger("mta.accept")

# every line end, a lone CR too, becomes CRLF: what SMTP puts on the wire (and DKIM signs)
_CRLF_NORMALISE = re.compile(rb"\r\n|\r|\n")


class AcceptError(Exception):
    """A refused submission: `status` and `message` in the protocol's terms (HTTP here; the SMTP
    listener maps them to reply codes)."""

    def __init__(self, message: str, status: int = 400, smtp: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self._smtp = smtp

    @property
    def smtp_reply(self) -> str:
        """The refusal as an SMTP reply: code, enhanced code, text on one line."""
        code = self._smtp or {413: "552 5.3.4", 404: "550 5.1.2"}.get(self.status, "550 5.6.0")
        text = " ".join(self.message.split())
        return f"{code} {text}"


@dataclass
class Options:
    tags: list[str] = field(default_factory=list)
    campaigns: list[str] = field(default_factory=list)
    dkim: bool | None = None
    deliver_at: float | None = None
    test_mode: bool = False
    tracking: bool | None = None
    tracking_clicks: bool | str | None = None  # True, False or "htmlonly"
    tracking_opens: bool | None = None
    tracking_pixel_top: bool | None = None
    require_tls: bool | None = None
    skip_verification: bool | None = None

    def as_json(self) -> dict[str, Any]:
        """Set options only: None means "not given, use the domain's setting"."""
        return {k: v for k, v in self.__dict__.items() if v is not None and v != []}


@dataclass
class Submission:
    """A normalised submission, whichever door it came in by."""

    domain: str
    method: str  # "http" or "smtp"
    from_: list[str] = field(default_factory=list)
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    parts: Parts | None = None
    mime: bytes | None = None  # a pre-built message (messages.mime, SMTP), instead of parts
    headers: list[tuple[str, str]] = field(default_factory=list)  # h:Name -> value
    user_variables: dict[str, Any] = field(default_factory=dict)  # v:* (API), added as a header
    # X-Mailgun-Variables already inside a pre-built message (they stay there)
    message_variables: dict[str, Any] = field(default_factory=dict)
    # a pre-built message's own From, Sender, To, Subject, Message-Id, Date (read once)
    message_headers: dict[str, str] = field(default_factory=dict)
    recipient_variables: dict[str, Any] | None = None
    options: Options = field(default_factory=Options)
    envelope_sender: str | None = None
    authenticated: bool = True
    originating_ip: str | None = None
    # an SMTP login: senders must not be on another hosted domain (see _check_senders)
    sender_login: str | None = None
    # obey X-Mailgun-* control headers inside a pre-built message: not for mail that a route
    # forwards on a stranger's behalf
    control_headers: bool = True


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


_LOCAL_OK = re.compile(r"[^\s<>()\[\],;:\"\\@]+|\"[^\"\r\n]+\"")
_LABEL = r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?"  # letters/digits (IDN too), inner hyphens
_DOMAIN_OK = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")
# the common forms, `addr` and `Name <addr>`, read without email.utils (several times faster)
_SIMPLE_ADDRESS = re.compile(
    r"\s*(?:([^\s<>@][^<>@]*?)\s*<([^<>\s@]+@[^<>\s@]+)>|([^<>\s@]+@[^<>\s@]+))\s*"
)


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


def _split_addresses(value: str) -> list[tuple[str, str]]:
    if not any(c in value for c in '"(\\;:'):
        pairs = []
        for piece in value.split(","):
            match = _SIMPLE_ADDRESS.fullmatch(piece)
            if match is None:
                break
            name, bracketed, bare = match.groups()
            pairs.append((name or "", bracketed or bare))
        else:
            return pairs
    return email.utils.getaddresses([value])


def parse_addresses(values: list[str], param: str) -> list[Address]:
    """Addresses from repeated and/or comma-separated values; 400 naming the parameter."""
    out = []
    for value in values:
        if "\r" in value or "\n" in value:
            raise AcceptError(
                f"{param} parameter is not a valid address. please check documentation"
            )
        if not value.strip():
            continue
        for name, addr in _split_addresses(value):
            addr = addr.strip()
            if not valid_addr_spec(addr):
                raise AcceptError(
                    f"{param} parameter is not a valid address. please check documentation"
                )
            local, _, dom = addr.rpartition("@")
            out.append(Address(name.strip(), f"{local}@{dom.lower()}"))
    return out


def new_message_id(domain: str, now: float) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"{stamp}.{tokens.token_hex(8)}@{domain}"


@dataclass
class _Copy:
    """One stored copy of the message and the recipients it goes to."""

    to_header: str
    recipients: list[Address]
    mime: bytes | None  # None: the message's shared content
    user_variables: dict[str, Any]


class Acceptor:
    def __init__(self, store: Store, domains: Domains, config: Config) -> None:
        self._store = store
        self._domains = domains
        self._config = config

    async def accept(self, sub: Submission) -> str:
        """Validate, store and queue; returns the Message-Id (without angle brackets)."""
        domain = await self._domains.get(sub.domain)
        if domain is None:
            raise AcceptError(f"Domain not found: {sub.domain}", 404)
        try:
            return await self._accept(domain, sub)
        except AcceptError as exc:
            log.info(
                "rejected a %s submission for %s from %s: %s",
                sub.method,
                domain.name,
                sub.originating_ip or "-",
                exc.message,
            )
            await self._record_rejection(domain, sub, exc)
            raise

    async def _accept(self, domain: Domain, sub: Submission) -> str:
        now = time.time()
        limits = self._config.sending
        if domain.is_disabled:
            raise AcceptError(f"Domain {domain.name} is not allowed to send: domain is disabled")
        if sub.mime is not None:
            if sub.control_headers:
                _apply_message_options(sub)
            else:
                sub.message_headers = message_summary(sub.mime)
        from_ = parse_addresses(sub.from_, "from")
        if sub.mime is None and not from_:
            raise AcceptError("from parameter is missing")
        if sub.sender_login is not None:
            await self._check_senders(domain, sub, from_)
        to = parse_addresses(sub.to, "to")
        if not to:
            raise AcceptError("to parameter is missing")
        cc = parse_addresses(sub.cc, "cc")
        bcc = parse_addresses(sub.bcc, "bcc")
        everyone = _unique(to + cc + bcc)
        if len(everyone) > limits.max_recipients:
            raise AcceptError(
                f"Too many recipients, max is {limits.max_recipients}", smtp="452 4.5.3"
            )
        if domain.is_sandbox:
            strangers = [a.addr for a in everyone if a.key not in domain.authorized_recipients]
            if strangers:
                raise AcceptError(
                    f"Domain {domain.name} is not allowed to send: Sandbox subdomains are for test"
                    " purposes only. Please add your own domain or add the address to authorized"
                    f" recipients: {', '.join(strangers[:5])}",
                    smtp="550 5.7.1",
                )
        self._check_options(sub, now)
        for name, value in sub.headers:
            if not name.isascii():
                raise AcceptError(f"Header name must be pure ASCII: {name}")
            if not re.fullmatch(r"[!-9;-~]+", name):
                raise AcceptError(f"Header name is not valid: {name!r}")
            if "\r" in value or "\n" in value:
                raise AcceptError(f"Header value of {name} must not contain CR or LF")
        budget = sum(len(n) + len(str(v)) for n, v in sub.headers)
        budget += sum(len(k) + len(str(v)) for k, v in sub.user_variables.items())
        budget += sum(len(t) for t in sub.options.tags + sub.options.campaigns)
        if budget > limits.max_options_bytes:
            raise AcceptError(
                "Send options (parameters starting with o:, h:, or v:) are limited to 16 kB total"
            )

        prepare = functools.partial(self._prepare, domain, sub, from_, to, cc, bcc, now)
        if _is_heavy(sub, len(everyone)):
            # big bodies and large batches are built off the event loop: other clients go on
            message_id, statements = await asyncio.to_thread(prepare)
        else:
            message_id, statements = prepare()
        await self._store.write(*statements)
        log.info(
            "accepted <%s> for %s via %s: %d recipient(s), sender <%s>",
            message_id,
            domain.name,
            sub.method,
            len(everyone),
            sub.envelope_sender or (from_[0].addr if from_ else ""),
        )
        return message_id

    def _prepare(
        self,
        domain: Domain,
        sub: Submission,
        from_: list[Address],
        to: list[Address],
        cc: list[Address],
        bcc: list[Address],
        now: float,
    ) -> tuple[str, list[Statement]]:
        """Build every copy and the rows that store them (no I/O)."""
        limits = self._config.sending
        message_id = new_message_id(domain.name, now)
        if sub.mime is not None:
            shared, copies, message_id, headers = self._copies_from_mime(
                sub, to, cc, bcc, message_id
            )
        else:
            shared, copies, message_id, headers = self._copies_from_parts(
                sub, from_, to, cc, bcc, message_id, now
            )
        biggest = max([len(shared or b"")] + [len(c.mime or b"") for c in copies])
        if biggest > limits.max_message_bytes:
            raise AcceptError(
                f"Message size exceeds the {_size(limits.max_message_bytes)} limit", 413
            )
        if sub.envelope_sender is not None:  # "" is the null sender of a bounce: keep it
            sender = sub.envelope_sender
        else:
            sender = from_[0].addr if from_ else headers["from-addr"]
        statements = self._statements(domain, sub, message_id, sender, shared, copies, headers, now)
        return message_id, statements

    async def _check_senders(self, domain: Domain, sub: Submission, from_: list[Address]) -> None:
        """An SMTP login sends for its own domain: envelope and From addresses on another domain
        hosted here are refused (a stolen login cannot speak for other customers); addresses on
        domains not hosted here pass when smtp.foreign_senders = "allow" (a relayhost's cron
        mail from root@host), and are refused when it is "reject"."""
        addresses = [a.addr for a in from_]
        if sub.envelope_sender:
            addresses.append(sub.envelope_sender)
        for name in ("from", "sender"):
            if name in sub.message_headers:
                addresses += [a for _, a in email.utils.getaddresses([sub.message_headers[name]])]
        for addr in addresses:
            sender_domain = addr.rpartition("@")[2].lower().rstrip(".")
            if sender_domain == domain.name or sender_domain.endswith("." + domain.name):
                continue
            if await self._domains.get(sender_domain) is not None:
                raise AcceptError(
                    f"Sender {addr} is on {sender_domain}; {sub.sender_login} may only send"
                    f" for {domain.name}",
                    smtp="550 5.7.1",
                )
            if self._config.smtp.foreign_senders == "reject":
                raise AcceptError(
                    f"Sender {addr} is not on {domain.name}, the domain of {sub.sender_login}",
                    smtp="550 5.7.1",
                )

    def _check_options(self, sub: Submission, now: float) -> None:
        opts = sub.options
        opts.tags = normalise_tags(opts.tags)
        if len(opts.tags) > 3:
            raise AcceptError("Too many tags, max is 3 per message")
        for tag in opts.tags:
            if len(tag) > 128:
                raise AcceptError(f"Tag is too long (max 128 characters): {tag[:32]}...")
        if len(opts.campaigns) > 3:
            raise AcceptError("Too many campaigns, max is 3 per message")
        if opts.deliver_at is not None:
            if opts.deliver_at < now - 60:
                raise AcceptError("invalid delivery time: it is in the past")
            if opts.deliver_at > now + self._config.sending.max_schedule_days * 86400:
                days = self._config.sending.max_schedule_days
                raise AcceptError(f"invalid delivery time: at most {days:g} days in the future")

    # -- building the copies -----------------------------------------------------------------

    def _variables_header(self, variables: dict[str, Any]) -> list[str]:
        if not variables:
            return []
        return [encode_header("X-Mailgun-Variables", orjson.dumps(variables).decode())]

    def _copies_from_parts(
        self,
        sub: Submission,
        from_: list[Address],
        to: list[Address],
        cc: list[Address],
        bcc: list[Address],
        message_id: str,
        now: float,
    ) -> tuple[bytes | None, list[_Copy], str, dict[str, Any]]:
        parts = sub.parts or Parts()
        if parts.text is None and parts.html is None and parts.amp_html is None:
            raise AcceptError("Need at least one of 'text' or 'html' parameters specified")
        custom = [(n, v) for n, v in sub.headers if n.lower() not in _RESERVED_HEADERS]
        for name, value in sub.headers:
            if name.lower() == "message-id":
                message_id = value.strip().strip("<>") or message_id
        from_header = address_header("From", [(a.name, a.addr) for a in from_])
        cc_header = [address_header("Cc", [(a.name, a.addr) for a in cc])] if cc else []
        fixed_tail = [f"Message-Id: <{message_id}>", f"Date: {message_date(now)}"]
        summary = {
            "from": ", ".join(email.utils.formataddr((a.name, a.addr)) for a in from_),
            "from-addr": from_[0].addr,
            "subject": parts.subject,
            "message-id": message_id,
            "attachments": [a.summary for a in parts.attachments],
        }

        def render(to_list: list[Address], subst: Any, variables: dict[str, Any]) -> bytes:
            personal = Parts(
                subject=subst(parts.subject),
                text=subst(parts.text) if parts.text is not None else None,
                html=subst(parts.html) if parts.html is not None else None,
                amp_html=subst(parts.amp_html) if parts.amp_html is not None else None,
                attachments=parts.attachments,
            )
            headers = [
                from_header,
                address_header("To", [(a.name, a.addr) for a in to_list]),
                *cc_header,
                encode_header("Subject", personal.subject),
                *fixed_tail,
                *(encode_header(n, subst(v)) for n, v in custom),
                *self._variables_header(variables),
            ]
            return build_message(headers, personal)

        if sub.recipient_variables is None:
            mime = render(to, _same, sub.user_variables)
            summary["to"] = format_to(to)
            return (
                mime,
                [_Copy(summary["to"], _unique(to + cc + bcc), None, sub.user_variables)],
                message_id,
                summary,
            )
        per_recipient = _variables_by_address(sub)
        copies = []
        for rcpt in to:
            subst = recipient_substituter(rcpt.name, rcpt.addr, per_recipient.get(rcpt.key, {}))
            variables = {
                k: subst(v) if isinstance(v, str) else v for k, v in sub.user_variables.items()
            }
            mime = render([rcpt], subst, variables)
            copies.append(_Copy(format_to([rcpt]), _unique([rcpt, *cc, *bcc]), mime, variables))
        summary["to"] = format_to(to)
        return None, copies, message_id, summary

    def _copies_from_mime(
        self,
        sub: Submission,
        to: list[Address],
        cc: list[Address],
        bcc: list[Address],
        message_id: str,
    ) -> tuple[bytes | None, list[_Copy], str, dict[str, Any]]:
        assert sub.mime is not None
        mime = _CRLF_NORMALISE.sub(b"\r\n", sub.mime)
        found = sub.message_headers
        if ":" not in mime.split(b"\r\n", 1)[0].decode("latin-1"):
            raise AcceptError("'message' parameter is not a valid MIME message")
        added = []
        if "message-id" in found and found["message-id"].strip("<> "):
            message_id = found["message-id"].strip().strip("<>")
        else:
            added.append(f"Message-Id: <{message_id}>")
        if "date" not in found:
            added.append(f"Date: {message_date(time.time())}")
        added += [encode_header(n, v) for n, v in sub.headers if n.lower() != "x-mailgun-variables"]
        added += self._variables_header(sub.user_variables)
        if added:
            mime = ("\r\n".join(added) + "\r\n").encode("utf-8") + mime
        from_header = found.get("from", "")
        from_addrs = email.utils.getaddresses([from_header])
        summary = {
            "from": from_header,
            "from-addr": from_addrs[0][1] if from_addrs and from_addrs[0][1] else "",
            "subject": found.get("subject", ""),
            "message-id": message_id,
            "to": found.get("to", ""),
            "attachments": [],
        }
        if not summary["from-addr"]:
            raise AcceptError("'message' has no valid From header")
        merged = sub.message_variables | sub.user_variables
        if sub.recipient_variables is None:
            return (
                mime,
                [_Copy(summary["to"], _unique(to + cc + bcc), None, merged)],
                message_id,
                summary,
            )
        per_recipient = _variables_by_address(sub)
        copies = []
        for rcpt in to:
            subst = recipient_substituter(rcpt.name, rcpt.addr, per_recipient.get(rcpt.key, {}))
            copy = personalise_mime(mime, format_to([rcpt]), subst)
            variables = {k: subst(v) if isinstance(v, str) else v for k, v in merged.items()}
            copies.append(_Copy(format_to([rcpt]), _unique([rcpt, *cc, *bcc]), copy, variables))
        return None, copies, message_id, summary

    # -- storing -----------------------------------------------------------------------------

    def _statements(
        self,
        domain: Domain,
        sub: Submission,
        message_id: str,
        sender: str,
        shared: bytes | None,
        copies: list[_Copy],
        summary: dict[str, Any],
        now: float,
    ) -> list[Statement]:
        opts = sub.options
        key = tokens.token_urlsafe(24)
        due = opts.deliver_at if opts.deliver_at is not None else now
        recipient_rows, events = [], []
        for copy in copies:
            size = len(copy.mime if copy.mime is not None else shared or b"")
            variables_blob = orjson.dumps(copy.user_variables) if copy.mime is not None else None
            # each copy is its own message to its own recipients (a batch: one `to` each)
            copy_recipients = [r.addr for r in copy.recipients]
            to_header = copy.to_header if copy.mime is not None else None
            for rcpt in copy.recipients:
                recipient_rows.append(
                    (key, rcpt.addr, copy.mime, variables_blob, to_header, "queued", due)
                )
                events.append(
                    self._accepted_event(sub, sender, rcpt, copy, summary, copy_recipients, size)
                )
        # what later events about this message repeat (delivered, failed, ...)
        described = {
            "headers": {
                "to": summary["to"],
                "message-id": summary["message-id"],
                "from": summary["from"],
                "subject": summary["subject"],
            },
            "attachments": summary["attachments"],
            "method": sub.method,
            "is-authenticated": sub.authenticated,
        }
        options = orjson.dumps(
            opts.as_json()
            | {"user-variables": sub.message_variables | sub.user_variables, "message": described}
        )
        return [
            Statement(
                "INSERT INTO messages (key, message_id, domain, created_at, sender, options, mime)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key, message_id, domain.name, now, sender, options, shared)],
            ),
            Statement(
                "INSERT INTO recipients"
                " (message_key, address, mime, user_variables, to_header, state, due_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                recipient_rows,
            ),
            event_statement(domain.name, events),
        ]

    def _accepted_event(
        self,
        sub: Submission,
        sender: str,
        rcpt: Address,
        copy: _Copy,
        summary: dict[str, Any],
        recipients: list[str],
        size: int,
    ) -> dict[str, Any]:
        opts = sub.options
        payload = new_event(
            "accepted",
            method=sub.method,
            recipient=rcpt.addr,
            recipient_domain=rcpt.domain,
            tags=opts.tags,
            campaigns=[{"id": c, "name": c} for c in opts.campaigns],
            user_variables=copy.user_variables,
            flags={
                "is-authenticated": sub.authenticated,
                "is-test-mode": opts.test_mode,
                "is-routed": False,
                "is-system-test": False,
                "is-big": len(recipients) > 100,
            },
            envelope={"sender": sender, "transport": sub.method, "targets": rcpt.addr},
            message={
                "headers": {
                    "to": copy.to_header,
                    "message-id": summary["message-id"],
                    "from": summary["from"],
                    "subject": summary["subject"],
                },
                "attachments": summary["attachments"],
                "recipients": recipients,
                "size": size,
            },
        )
        if opts.deliver_at is not None:
            payload["delivery-time"] = opts.deliver_at
        if sub.originating_ip:
            payload["originating-ip"] = sub.originating_ip
        return payload

    async def _record_rejection(self, domain: Domain, sub: Submission, exc: AcceptError) -> None:
        """Refusals that got as far as a sender and a recipient leave a `rejected` event."""
        if not (sub.from_ or sub.envelope_sender or sub.mime) or not sub.to:
            return
        headers = {
            "to": ", ".join(sub.to),
            "message-id": "",
            "from": ", ".join(sub.from_),
            "subject": sub.parts.subject if sub.parts else "",
        }
        for name in ("to", "from", "subject", "message-id"):  # a pre-built message's own
            if name in sub.message_headers:
                value = sub.message_headers[name]
                headers[name] = value.strip("<> ") if name == "message-id" else value
        payload = new_event(
            "rejected",
            reject={
                "reason": "invalid" if exc.status < 500 else "error",
                "description": exc.message,
            },
            tags=sub.options.tags,
            campaigns=[{"id": c, "name": c} for c in sub.options.campaigns],
            user_variables=sub.user_variables,
            flags={"is-authenticated": sub.authenticated, "is-test-mode": sub.options.test_mode},
            envelope={
                "sender": sub.envelope_sender or ", ".join(sub.from_),
                "transport": sub.method,
                "targets": ", ".join(sub.to),
            },
            message={"headers": headers, "attachments": [], "size": 0},
        )
        if sub.originating_ip:
            payload["originating-ip"] = sub.originating_ip
        try:
            await record(self._store, domain.name, [payload])
        except Exception:  # the refusal itself must still reach the client
            log.exception("could not record rejected event")


_RESERVED_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "x-mailgun-variables",
}


def _variables_by_address(sub: Submission) -> dict[str, dict[str, Any]]:
    """recipient-variables keyed by lower-cased address (keys are matched without case)."""
    return {
        address.lower(): values
        for address, values in (sub.recipient_variables or {}).items()
        if isinstance(values, dict)
    }


def _size(limit: int) -> str:
    mib, rest = divmod(limit, 1024 * 1024)
    return f"{mib} MB" if mib and not rest else f"{limit} bytes"


def normalise_tags(tags: list[str]) -> list[str]:
    """ASCII only (other characters dropped), case-insensitive, each once; an all-unicode tag
    is ignored."""
    cleaned = ("".join(c for c in tag if c.isascii()).strip().lower() for tag in tags)
    return list(dict.fromkeys(t for t in cleaned if t))


def _apply_message_options(sub: Submission) -> None:
    """Merge the X-Mailgun-* headers (and a variables container) of a pre-built message into the
    submission; options given outside the message (API fields) win."""
    assert sub.mime is not None
    try:
        sub.mime, found = consume_control_headers(sub.mime)
    except HeaderOptionError as exc:
        raise AcceptError(str(exc)) from None
    opts = sub.options
    opts.tags = opts.tags + found.tags
    opts.campaigns = opts.campaigns + [c for c in found.campaigns if c not in opts.campaigns]
    if opts.deliver_at is None:
        opts.deliver_at = found.deliver_at
    for name, value in found.flags.items():
        if getattr(opts, name) in (None, False):
            setattr(opts, name, value)
    sub.message_variables = found.user_variables
    sub.message_headers = found.summary
    if sub.recipient_variables is None:
        sub.recipient_variables = found.recipient_variables


_HEAVY_BYTES = 256 * 1024
_HEAVY_RECIPIENTS = 50


def _is_heavy(sub: Submission, recipients: int) -> bool:
    if recipients > _HEAVY_RECIPIENTS:
        return True
    if sub.mime is not None:
        return len(sub.mime) > _HEAVY_BYTES
    parts = sub.parts
    return parts is not None and (
        sum(len(a.data) for a in parts.attachments) > _HEAVY_BYTES
        or len(parts.html or "") + len(parts.text or "") > _HEAVY_BYTES
    )


def _same(text: str) -> str:
    return text


def _unique(addresses: list[Address]) -> list[Address]:
    seen: set[str] = set()
    out = []
    for a in addresses:
        if a.key not in seen:
            seen.add(a.key)
            out.append(a)
    return out


def format_to(addresses: list[Address]) -> str:
    return ", ".join(
        email.utils.formataddr((a.name, a.addr)) if a.name else a.addr for a in addresses
    )
