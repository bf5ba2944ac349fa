"""The one accept path: HTTP and SMTP submissions both end in `Acceptor.accept`.

It validates, expands batch sends into per-recipient copies, and writes the message, its
recipient rows and their `accepted` events in one transaction. Only when that commit has
returned does the caller answer 200 / 250.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from mta import queue, tokens
from mta.accept.addresses import Address, split_addresses, valid_addr_spec
from mta.accept.headers import HeaderOptionError, consume_control_headers, message_summary
from mta.accept.mime import (
    RECIPIENT_KEY,
    HeadError,
    HeaderSlot,
    MessageHead,
    Parts,
    Piece,
    address_header,
    build_message,
    encode_header,
    header_line,
    render,
)
from mta.accept.template import (
    MimeSlot,
    Personal,
    Template,
    ToSlot,
    VariablesSlot,
    personalised_variables,
)
from mta.budget import off_loop_if
from mta.config import Config
from mta.dates import message_date
from mta.domains import Domain, Domains
from mta.events import (
    Attachment,
    Campaign,
    Envelope,
    Event,
    Flags,
    MessageHeaders,
    MessageSummary,
    Reject,
    event_statements,
    new_event_ids,
    record,
)
from mta.stats import campaigns as stats_campaigns
from mta.stats import tags as stats_tags
from mta.store import Statement, Store

if TYPE_CHECKING:
    from mta.lists import MailingList

# the mailing lists among some addresses (lower-cased address -> list): mta.lists.Lists.any_of
FindLists = Callable[[Iterable[str]], Awaitable[dict[str, "MailingList"]]]

__all__ = ["AcceptError", "Acceptor", "Address", "Options", "Submission", "valid_addr_spec"]

log = logging.getLogger("mta.accept")

# every line end, a lone CR too, becomes CRLF: what SMTP puts on the wire (and DKIM signs)
_CRLF_NORMALISE = re.compile(rb"\r\n|\r|\n")
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_UNSAFE_VALUE = re.compile(r"[\r\n\0]")
_VARIABLE_KEY = re.compile(RECIPIENT_KEY)
_VARIABLE_KEY_BYTES = re.compile(RECIPIENT_KEY.encode())
_AT_DOMAIN = re.compile(r"@\[?([\w.-]+)")
ADDRESSES_ON_LOOP = 8192  # address text parsed on the event loop; more goes to a thread


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
    test_mode: bool | None = None
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
    mime: bytes | None = None  # a pre-built message (messages.mime, SMTP)
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
    # who sends, when they may only speak for `domain` (an SMTP login, a domain sending key):
    # senders on another hosted domain are refused (see _check_senders)
    principal: str | None = None
    # obey X-Mailgun-* control headers inside a pre-built message: not for mail that a route
    # forwards on a stranger's behalf
    control_headers: bool = True
    # the names of the campaigns the options name, by id, as the store has them
    campaign_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Addresses:
    from_: list[Address]
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]


def parse_addresses(values: list[str], param: str) -> list[Address]:
    """Addresses from repeated and/or comma-separated values; 400 naming the parameter."""
    out = []
    for value in values:
        if _UNSAFE_VALUE.search(value):
            raise AcceptError(
                f"{param} parameter is not a valid address. please check documentation"
            )
        pairs = split_addresses(value)
        if not pairs and value.strip():  # text, but no address in it (an open comment...)
            raise AcceptError(
                f"{param} parameter is not a valid address. please check documentation"
            )
        for name, addr in pairs:
            if not valid_addr_spec(addr):
                raise AcceptError(
                    f"{param} parameter is not a valid address. please check documentation"
                )
            local, _, dom = addr.rpartition("@")
            out.append(Address(name, f"{local}@{dom.lower()}"))
    return out


def new_message_id(domain: str, now: float) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    return f"{stamp}.{tokens.token_hex(8)}@{domain}"


@dataclass
class _Copy:
    """The recipients one copy of the message goes to, and what personalises it (a batch send:
    its To recipient's values)."""

    to_header: str
    recipients: list[Address]
    personal: Personal | None
    user_variables: dict[str, Any]


@dataclass
class _Built:
    """A message ready to store: its content (plain, or a template personalised per recipient:
    a batch send, a send to a list) and its copies."""

    content: bytes
    is_template: bool
    size: int
    copies: list[_Copy]
    message_id: str
    summary: dict[str, Any]


@dataclass(frozen=True)
class _Listed:
    """The recipients that are mailing lists of the sending domain: each becomes a list send,
    expanded into its members' rows after the commit (mta.queue.expansion)."""

    lists: dict[str, MailingList] = field(default_factory=dict)

    def __contains__(self, address: Address) -> bool:
        return address.key in self.lists

    def others(self, addresses: list[Address]) -> list[Address]:
        return [a for a in addresses if a.key not in self.lists]


class Acceptor:
    def __init__(
        self, store: Store, domains: Domains, config: Config, find_lists: FindLists
    ) -> None:
        self._store = store
        self._domains = domains
        self._config = config
        self._find_lists = find_lists

    async def accept(self, sub: Submission, *also: Statement) -> str:
        """Validate, store and queue; returns the Message-Id (without angle brackets). `also`:
        statements committed with the message (the MX's route actions for a list post)."""
        domain = await self._domains.get(sub.domain)
        if domain is None:
            raise AcceptError(f"Domain not found: {sub.domain}", 404)
        try:
            return await self._accept(domain, sub, also)
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

    async def _accept(self, domain: Domain, sub: Submission, also: tuple[Statement, ...]) -> str:
        now = time.time()
        limits = self._config.sending
        if domain.is_disabled:
            raise AcceptError(f"Domain {domain.name} is not allowed to send: domain is disabled")
        head: MessageHead | None = None
        if sub.mime is not None:
            head = await off_loop_if(
                len(sub.mime) > _HEAVY_BYTES, functools.partial(self._read_message, sub)
            )
        addresses = await self._parse_addresses(sub)
        from_ = addresses.from_
        if sub.mime is None and not from_:
            raise AcceptError("from parameter is missing")
        if sub.principal is not None:
            await self._check_senders(domain, sub, from_, head)
        to, cc, bcc = addresses.to, addresses.cc, addresses.bcc
        if not to:
            raise AcceptError("to parameter is missing")
        everyone = _unique(to + cc + bcc)
        if len(everyone) > limits.max_recipients:
            raise AcceptError(
                f"Too many recipients, max is {limits.max_recipients}", smtp="452 4.5.3"
            )
        # lists of the sending domain only: another customer's list address is a recipient
        # like any other (its own MX and access level decide)
        listed = _Listed(await self._find_lists(a.key for a in everyone if a.domain == domain.name))
        if domain.is_sandbox:  # list members are checked when the list is expanded
            strangers = [a.addr for a in listed.others(everyone)
                         if a.key not in domain.authorized_recipients]
            if strangers:
                raise AcceptError(
                    f"Domain {domain.name} is not allowed to send: Sandbox subdomains are for test"
                    " purposes only. Please add your own domain or add the address to authorized"
                    f" recipients: {', '.join(strangers[:5])}",
                    smtp="550 5.7.1",
                )
        self._check_options(sub, now)
        if sub.options.campaigns:
            await self._check_campaigns(domain, sub)
        _check_headers(sub)
        budget = sum(len(n) + len(str(v)) for n, v in sub.headers)
        budget += sum(len(k) + len(str(v)) for k, v in sub.user_variables.items())
        budget += sum(len(t) for t in sub.options.tags + sub.options.campaigns)
        if budget > limits.max_options_bytes:
            raise AcceptError(
                "Send options (parameters starting with o:, h:, or v:) are limited to 16 kB total"
            )

        # big bodies and large batches are built off the event loop: other clients go on
        message_id, statements = await off_loop_if(
            _is_heavy(sub, len(everyone)),
            functools.partial(self._prepare, domain, sub, head, addresses, listed, now),
        )
        # the statements hold what is stored: let go of the message as it came in, which would
        # otherwise be held beside it while the store makes its own copies
        sub.mime = sub.parts = None
        del head
        await self._store.write(*statements, *also)
        log.info(
            "accepted <%s> for %s via %s: %d recipient(s)%s, sender <%s>",
            message_id,
            domain.name,
            sub.method,
            len(everyone) - len(listed.lists),
            "".join(f", list <{a}>" for a in listed.lists),
            sub.envelope_sender or (from_[0].addr if from_ else ""),
        )
        return message_id

    def _read_message(self, sub: Submission) -> MessageHead:
        """A pre-built message: line ends normalised first, then its header block read once
        (and its X-Mailgun-* options taken); everything after reads that one reading."""
        assert sub.mime is not None
        mime = normalise_line_ends(sub.mime)
        smtp = self._config.smtp

        def parse(message: bytes) -> MessageHead:
            try:
                return MessageHead.parse(message, smtp.max_header_bytes, smtp.max_header_fields)
            except HeadError as exc:
                raise AcceptError(str(exc), smtp="552 5.3.4") from None

        head = parse(mime)
        if sub.control_headers:
            try:
                head, found = consume_control_headers(head, lambda inner: parse(
                    normalise_line_ends(inner)))
            except HeaderOptionError as exc:
                raise AcceptError(str(exc)) from None
            _apply_message_options(sub, found)
        else:
            sub.message_headers = message_summary(head)
        for name in ("from", "sender"):
            if head.count(name) > 1:
                raise AcceptError(
                    f"'message' has more than one {name.title()} header", smtp="550 5.6.0"
                )
        return head

    async def _parse_addresses(self, sub: Submission) -> _Addresses:
        """Sizes are capped before any parsing; long inputs are parsed off the event loop."""
        limits = self._config.sending
        values = [*sub.from_, *sub.to, *sub.cc, *sub.bcc]
        size = sum(len(v) for v in values)
        if size > limits.max_address_bytes:
            raise AcceptError(
                f"from, to, cc and bcc are limited to {limits.max_address_bytes} bytes in all",
                smtp="552 5.3.4",
            )
        if sum(v.count("@") for v in (*sub.to, *sub.cc, *sub.bcc)) > 2 * limits.max_recipients:
            raise AcceptError(
                f"Too many recipients, max is {limits.max_recipients}", smtp="452 4.5.3"
            )

        def parse() -> _Addresses:
            return _Addresses(
                parse_addresses(sub.from_, "from"),
                parse_addresses(sub.to, "to"),
                parse_addresses(sub.cc, "cc"),
                parse_addresses(sub.bcc, "bcc"),
            )

        return await off_loop_if(size > ADDRESSES_ON_LOOP, parse)

    def _prepare(
        self,
        domain: Domain,
        sub: Submission,
        head: MessageHead | None,
        addresses: _Addresses,
        listed: _Listed,
        now: float,
    ) -> tuple[str, list[Statement]]:
        """Build the message and the rows that store it (no I/O)."""
        limits = self._config.sending
        message_id = new_message_id(domain.name, now)
        if sub.recipient_variables is not None:
            _check_variables(sub, head)
        if head is not None:
            built = self._from_mime(sub, head, addresses, listed, message_id, now)
        else:
            built = self._from_parts(sub, addresses, listed, message_id, now)
        if built.size > limits.max_message_bytes:
            raise AcceptError(
                f"Message size exceeds the {_size(limits.max_message_bytes)} limit", 413
            )
        if sub.envelope_sender is not None:  # "" is the null sender of a bounce: keep it
            sender = sub.envelope_sender
        else:
            from_ = addresses.from_
            sender = from_[0].addr if from_ else built.summary["from-addr"]
        return built.message_id, self._statements(domain, sub, sender, built, listed, now)

    async def _check_senders(
        self, domain: Domain, sub: Submission, from_: list[Address], head: MessageHead | None
    ) -> None:
        """A login or a domain sending key sends for its own domain: the envelope sender and
        every address of every From and Sender header on another domain hosted here are
        refused (a stolen login cannot speak for other customers); addresses on domains not
        hosted here pass when smtp.foreign_senders = "allow" (a relayhost's cron mail from
        root@host), and are refused when it is "reject"."""
        addresses = [a.addr for a in from_]
        if sub.envelope_sender:
            addresses.append(sub.envelope_sender)
        headers = [v for n, v in sub.headers if n.lower() == "sender"]
        if head is not None:
            headers += head.values("from") + head.values("sender")
        for value in headers:
            # every "@domain" in the header, not only what our parser reads as addresses: a
            # receiver's parser may read the text differently (display names, broken syntax)
            addresses += [addr for _, addr in split_addresses(value)]
            addresses += [f"@{domain}" for domain in _AT_DOMAIN.findall(value)]
        for addr in addresses:
            sender_domain = addr.rpartition("@")[2].lower().rstrip(".")
            if sender_domain == domain.name or sender_domain.endswith("." + domain.name):
                continue
            if await self._domains.get(sender_domain) is not None:
                raise AcceptError(
                    f"Sender {addr} is on {sender_domain}; {sub.principal} may only send"
                    f" for {domain.name}",
                    403,
                    smtp="550 5.7.1",
                )
            if self._config.smtp.foreign_senders == "reject":
                raise AcceptError(
                    f"Sender {addr} is not on {domain.name}, the domain of {sub.principal}",
                    403,
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
        opts.campaigns = list(dict.fromkeys(c.strip() for c in opts.campaigns if c.strip()))
        if len(opts.campaigns) > 3:
            raise AcceptError("Too many campaigns, max is 3 per message")
        for campaign in opts.campaigns:
            if len(campaign) > stats_campaigns.MAX_ID:
                raise AcceptError(
                    f"Campaign id is too long (max {stats_campaigns.MAX_ID} characters)"
                )
        if opts.deliver_at is not None:
            if opts.deliver_at <= now:  # a time already past: send now, as Mailgun does
                opts.deliver_at = None
            elif opts.deliver_at > now + self._config.sending.max_schedule_days * 86400:
                days = self._config.sending.max_schedule_days
                raise AcceptError(f"invalid delivery time: at most {days:g} days in the future")

    async def _check_campaigns(self, domain: Domain, sub: Submission) -> None:
        """A send joins campaigns made beforehand (Campaigns API): its events carry their
        names, and an id the domain has no campaign for is refused (one store read)."""
        campaigns = sub.options.campaigns
        sub.campaign_names = await stats_campaigns.names(self._store, domain.name, campaigns)
        for campaign in campaigns:
            if campaign not in sub.campaign_names:
                raise AcceptError(f"Campaign {campaign!r} not found")

    # -- building ------------------------------------------------------------------------------

    def _from_parts(
        self,
        sub: Submission,
        addresses: _Addresses,
        listed: _Listed,
        message_id: str,
        now: float,
    ) -> _Built:
        parts = sub.parts or Parts()
        if parts.text is None and parts.html is None and parts.amp_html is None:
            raise AcceptError("Need at least one of 'text' or 'html' parameters specified")
        from_, to, cc, bcc = addresses.from_, addresses.to, addresses.cc, addresses.bcc
        custom = [(n, v) for n, v in sub.headers if n.lower() not in _RESERVED_HEADERS]
        for name, value in sub.headers:
            if name.lower() == "message-id":
                message_id = value.strip().strip("<>") or message_id
        summary = {
            "from": ", ".join(email.utils.formataddr((a.name, a.addr)) for a in from_),
            "from-addr": from_[0].addr,
            "subject": parts.subject,
            "message-id": message_id,
            "attachments": [a.summary for a in parts.attachments],
            "to": format_to(to),
        }
        batch = sub.recipient_variables is not None
        personalised = batch or bool(listed.lists)
        to_line: Piece | ToSlot = header_line(address_header("To", [(a.name, a.addr) for a in to]))
        if batch:  # each copy shows its own recipient; list members, the lists named in To
            named = [(a.name, a.addr) for a in to if a in listed]
            to_line = ToSlot(address_header("To", named) if named else None)
        elif listed.lists:
            to_line = ToSlot(address_header("To", [(a.name, a.addr) for a in to]))
        variables: list[Piece | VariablesSlot] = []
        if personalised:
            variables = [VariablesSlot(sub.user_variables)]
        elif sub.user_variables:
            variables = [header_line(_variables_header(sub.user_variables))]
        headers: list[Any] = [
            header_line(address_header("From", [(a.name, a.addr) for a in from_])),
            to_line,
            *([header_line(address_header("Cc", [(a.name, a.addr) for a in cc]))] if cc else []),
            HeaderSlot("Subject", parts.subject),
            header_line(f"Message-Id: <{message_id}>"),
            header_line(f"Date: {message_date(now)}"),
            *(HeaderSlot(n, v) for n, v in custom),
            *variables,
        ]
        pieces = build_message(headers, parts)
        if not personalised:
            content = render(pieces, _same)
            copies = [_Copy(summary["to"], _unique(to + cc + bcc), None, sub.user_variables)]
            return _Built(content, False, len(content), copies, message_id, summary)
        template = Template(pieces)
        if batch:
            copies = self._batch_copies(sub, listed, to, cc, bcc, sub.user_variables)
        else:
            copies = _plain_copies(summary["to"], listed, to + cc + bcc, sub.user_variables)
        return _Built(template.dump(), True, template.size, copies, message_id, summary)

    def _from_mime(
        self,
        sub: Submission,
        head: MessageHead,
        addresses: _Addresses,
        listed: _Listed,
        message_id: str,
        now: float,
    ) -> _Built:
        found = sub.message_headers
        if not head.fields or b":" not in head.fields[0]:
            raise AcceptError("'message' parameter is not a valid MIME message")
        added = []
        if "message-id" in found and found["message-id"].strip("<> "):
            message_id = found["message-id"].strip().strip("<>")
        else:
            added.append(header_line(f"Message-Id: <{message_id}>"))
        if "date" not in found:
            added.append(header_line(f"Date: {message_date(now)}"))
        for name, _value in sub.headers:
            if name.lower() in ("from", "sender") and head.count(name.lower()):
                raise AcceptError(f"h:{name} would be a second {name} header of 'message'")
        added += [
            header_line(encode_header(n, v))
            for n, v in sub.headers
            if n.lower() != "x-mailgun-variables"
        ]
        if sub.user_variables:
            added.append(header_line(_variables_header(sub.user_variables)))
        mime = head.to_bytes(added)
        from_header = found.get("from", "")
        from_addrs = split_addresses(from_header)
        summary = {
            "from": from_header,
            "from-addr": from_addrs[0][1] if from_addrs else "",
            "subject": found.get("subject", ""),
            "message-id": message_id,
            "to": found.get("to", ""),
            "attachments": [],
        }
        if not summary["from-addr"]:
            raise AcceptError("'message' has no valid From header")
        to, cc, bcc = addresses.to, addresses.cc, addresses.bcc
        merged = sub.message_variables | sub.user_variables
        if sub.recipient_variables is None and not listed.lists:
            copies = [_Copy(summary["to"], _unique(to + cc + bcc), None, merged)]
            return _Built(mime, False, len(mime), copies, message_id, summary)
        template = Template([MimeSlot(mime)])
        if sub.recipient_variables is not None:
            copies = self._batch_copies(sub, listed, to, cc, bcc, merged)
        else:
            copies = _plain_copies(summary["to"], listed, to + cc + bcc, merged)
        return _Built(template.dump(), True, len(mime), copies, message_id, summary)

    @staticmethod
    def _batch_copies(
        sub: Submission,
        listed: _Listed,
        to: list[Address],
        cc: list[Address],
        bcc: list[Address],
        variables: dict[str, Any],
    ) -> list[_Copy]:
        """One copy per `to` recipient (cc and bcc get each one too, as with Mailgun), each with
        its own values; the content itself is stored once. Lists get theirs when expanded."""
        per_recipient = _variables_by_address(sub)
        cc, bcc = listed.others(cc), listed.others(bcc)
        copies = []
        for rcpt in listed.others(to):
            personal = Personal(rcpt.name, rcpt.addr, per_recipient.get(rcpt.key, {}))
            copies.append(
                _Copy(
                    format_to([rcpt]),
                    _unique([rcpt, *cc, *bcc]),
                    personal,
                    personalised_variables(variables, personal.substituter()),
                )
            )
        return copies

    # -- storing -----------------------------------------------------------------------------

    def _statements(
        self,
        domain: Domain,
        sub: Submission,
        sender: str,
        built: _Built,
        listed: _Listed,
        now: float,
    ) -> list[Statement]:
        opts = sub.options
        key = tokens.token_urlsafe(24)
        due = opts.deliver_at if opts.deliver_at is not None else now
        recipient_rows = []
        for copy in built.copies:
            personal = copy.personal.dump() if copy.personal is not None else None
            variables_blob = orjson.dumps(copy.user_variables) if personal is not None else None
            to_header = copy.to_header if personal is not None else None
            for rcpt in copy.recipients:
                recipient_rows.append(
                    queue.NewRecipient(rcpt.addr, variables_blob, to_header, personal, due)
                )
        summary = built.summary
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
        options = opts.as_json() | {
            "user-variables": sub.message_variables | sub.user_variables,
            "message": described,
        }
        if built.is_template:
            options["template"] = True
        if sub.campaign_names:  # later events (delivered, failed, hits) carry the names too
            options["campaign-names"] = sub.campaign_names
        if listed.lists:  # what members' copies and events say of their list, as sent
            options["lists"] = {
                lst.address: {"id": lst.id, "name": lst.name,
                              "reply_preference": lst.reply_preference}
                for lst in listed.lists.values()
            }
        list_sends = [queue.ListSend(lst.id, lst.address, now) for lst in listed.lists.values()]
        return [
            *queue.enqueue(
                queue.NewMessage(key, built.message_id, domain.name, now, sender,
                                 orjson.dumps(options), built.content),
                recipient_rows,
                list_sends,
            ),
            *stats_tags.seen_statements(domain.name, opts.tags, now, self._config.stats.tag_limit),
            *event_statements(domain.name, _accepted_events(sub, sender, built)),
        ]

    async def _record_rejection(self, domain: Domain, sub: Submission, exc: AcceptError) -> None:
        """Refusals that got as far as a sender and a recipient leave a `rejected` event."""
        if not (sub.from_ or sub.envelope_sender or sub.message_headers) or not sub.to:
            return
        headers = {
            "to": ", ".join(sub.to)[:1000],
            "message-id": "",
            "from": ", ".join(sub.from_)[:1000],
            "subject": sub.parts.subject[:1000] if sub.parts else "",
        }
        for name in ("to", "from", "subject", "message-id"):  # a pre-built message's own
            if name in sub.message_headers:
                value = sub.message_headers[name][:1000]
                headers[name] = value.strip("<> ") if name == "message-id" else value
        event = Event(
            "rejected",
            reject=Reject("invalid" if exc.status < 500 else "error", exc.message),
            tags=tuple(sub.options.tags),
            campaigns=tuple(
                Campaign(c, sub.campaign_names.get(c, c)) for c in sub.options.campaigns
            ),
            user_variables=sub.user_variables,
            flags=Flags(
                is_authenticated=sub.authenticated, is_test_mode=bool(sub.options.test_mode)
            ),
            envelope=Envelope(
                sender=sub.envelope_sender or ", ".join(sub.from_)[:1000],
                transport=sub.method,
                targets=", ".join(sub.to)[:1000],
            ),
            message=MessageSummary(
                headers=MessageHeaders(
                    to=headers["to"],
                    message_id=headers["message-id"],
                    from_=headers["from"],
                    subject=headers["subject"],
                )
            ),
            originating_ip=sub.originating_ip or None,
        )
        try:
            await record(self._store, domain.name, [event])
        except Exception:  # the refusal itself must still reach the client
            log.exception("could not record rejected event")


def _plain_copies(
    to_header: str, listed: _Listed, everyone: list[Address], variables: dict[str, Any]
) -> list[_Copy]:
    """The one copy of a message that is not a batch, for its recipients that are not lists
    (none when it was sent to lists only)."""
    others = _unique(listed.others(everyone))
    return [_Copy(to_header, others, None, variables)] if others else []


def _accepted_events(sub: Submission, sender: str, built: _Built) -> list[Event]:
    """One `accepted` event per recipient of each copy. What the events of a submission (or
    of a copy) share is built once: a batch send of thousands makes thousands of them."""
    opts = sub.options
    summary = built.summary
    tags = tuple(opts.tags)
    campaigns = tuple(Campaign(c, sub.campaign_names[c]) for c in opts.campaigns)
    attachments = tuple(
        Attachment(a["filename"], a["content-type"], a["size"]) for a in summary["attachments"]
    )
    originating_ip = sub.originating_ip or None
    flags = {  # by is-big (more than 100 recipients in the copy)
        big: Flags(
            is_authenticated=sub.authenticated,
            is_test_mode=bool(opts.test_mode),
            is_routed=False,
            is_system_test=False,
            is_big=big,
        )
        for big in (False, True)
    }
    ids = iter(new_event_ids(sum(len(copy.recipients) for copy in built.copies)))
    events = []
    for copy in built.copies:
        # each copy is its own message to its own recipients (a batch: one `to` each)
        recipients = tuple([r.addr for r in copy.recipients])
        message = MessageSummary(
            headers=MessageHeaders(
                to=copy.to_header,
                message_id=summary["message-id"],
                from_=summary["from"],
                subject=summary["subject"],
            ),
            attachments=attachments,
            recipients=recipients,
            size=built.size,
        )
        copy_flags = flags[len(recipients) > 100]
        for addr in recipients:
            events.append(
                Event(
                    "accepted",
                    id=next(ids),
                    method=sub.method,
                    recipient=addr,
                    tags=tags,
                    campaigns=campaigns,
                    user_variables=copy.user_variables,
                    flags=copy_flags,
                    envelope=Envelope(sender=sender, transport=sub.method, targets=addr),
                    message=message,
                    delivery_time=opts.deliver_at,
                    originating_ip=originating_ip,
                )
            )
    return events


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


def normalise_line_ends(mime: bytes) -> bytes:
    """Every line end, a bare CR or LF too, as CRLF: what SMTP carries and DKIM signs. Counting
    is cheap and most messages need no copy."""
    crlf = mime.count(b"\r\n")
    if mime.count(b"\r") == crlf and mime.count(b"\n") == crlf:
        return mime
    return _CRLF_NORMALISE.sub(b"\r\n", mime)


def _check_headers(sub: Submission) -> None:
    """h: headers: a field name of printable ASCII without a colon, a value without CR, LF or
    NUL (either would start a header of its own), and never a second From or Sender."""
    seen: set[str] = set()
    for name, value in sub.headers:
        if not name.isascii():
            raise AcceptError(f"Header name must be pure ASCII: {name}")
        if not _HEADER_NAME.fullmatch(name):
            raise AcceptError(f"Header name is not valid: {name!r}")
        if _UNSAFE_VALUE.search(value):
            raise AcceptError(f"Header value of {name} must not contain CR, LF or NUL")
        lowered = name.lower()
        if lowered in ("from", "sender") and lowered in seen:
            raise AcceptError(f"h:{name} is given more than once")
        seen.add(lowered)
    parts = sub.parts
    if parts is not None:
        if _UNSAFE_VALUE.search(parts.subject):
            raise AcceptError("subject parameter must not contain CR, LF or NUL")
        for attachment in parts.attachments:
            if _UNSAFE_VALUE.search(attachment.filename):
                field_name = "inline" if attachment.inline else "attachment"
                raise AcceptError(f"{field_name} file name must not contain CR, LF or NUL")


def _check_variables(sub: Submission, head: MessageHead | None) -> None:
    """A recipient variable must not break a header: with API parts, values used in the
    subject or an h: header are checked (the text parts encode theirs); a pre-built message is
    personalised in clear, wherever a variable stands -- part headers too, and a bare line end
    in a body would change what was signed -- so every value it uses is checked. Read from the
    bytes (a 25 MB message is not decoded to be searched)."""
    if head is not None:
        keys = {m.group(1).decode("utf-8", "replace")
                for chunk in (*head.fields, head.body) for m in _VARIABLE_KEY_BYTES.finditer(chunk)}
        where = "in the message"
    else:
        texts = [v for _, v in sub.headers] + [sub.parts.subject if sub.parts else ""]
        keys = {m.group(1) for text in texts for m in _VARIABLE_KEY.finditer(text)}
        where = "in a header"
    if not keys:
        return
    for address, values in (sub.recipient_variables or {}).items():
        if not isinstance(values, dict):
            continue
        for key in keys & values.keys():
            value = values[key]
            text = value if isinstance(value, str) else orjson.dumps(value).decode()
            if _UNSAFE_VALUE.search(text):
                raise AcceptError(
                    f"recipient-variables: the value of {key!r} for {address} is used {where}"
                    " and must not contain CR, LF or NUL"
                )


def _variables_header(variables: dict[str, Any]) -> str:
    return encode_header("X-Mailgun-Variables", orjson.dumps(variables).decode())


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


def _apply_message_options(sub: Submission, found: Any) -> None:
    """Merge the X-Mailgun-* headers (and a variables container) of a pre-built message into the
    submission; options given outside the message (API fields) win."""
    opts = sub.options
    opts.tags = opts.tags + found.tags
    opts.campaigns = opts.campaigns + [c for c in found.campaigns if c not in opts.campaigns]
    if opts.deliver_at is None:
        opts.deliver_at = found.deliver_at
    for name, value in found.flags.items():
        if getattr(opts, name) is None:
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
