"""Inbound mail: what arrives on the MX port for the domains we host.

`Inbound.receive` checks the message (SPF, DKIM, spam), reads reports about mail we sent
(delayed bounces, complaints), and runs the routes. The message, the jobs its actions become and
its events are written in one transaction before the sender gets its 250. The actions that
leave the process (HTTP forwards, email forwards, store notifications) are jobs of the durable
outbox (mta.jobs), owned by the received message ("inbound:<key>"): they run from the store with
the configured retry schedule, on whichever node is up, and a crash loses none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.parser
import email.policy
import email.utils
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from mta import jobs, tokens, webpost
from mta.accept import AcceptError, Acceptor, Submission
from mta.accept.addresses import split_addresses
from mta.accept.mime import HeadError, MessageHead
from mta.account import Account, signed_fields
from mta.budget import off_loop_if
from mta.config import Config
from mta.dns import Resolver
from mta.domains import Domain, Domains
from mta.events import (
    DeliveryStatus,
    Envelope,
    Event,
    Flags,
    MatchedRoute,
    MessageHeaders,
    MessageSummary,
    Reject,
    Storage,
    event_statements,
)
from mta.events import MailingList as EventList
from mta.inbound.parsed import Parsed, decode_header_value, parse_message
from mta.inbound.reports import Reports, report_type
from mta.inbound.routes import MatchingTime, RouteMatch, Routes, RoutesOutOfTime
from mta.inbound.structure import TooComplex, check_structure
from mta.inbound.verdicts import Verdict, Verdicts
from mta.lists import Lists, MailingList
from mta.store import Statement, Store, periodic
from mta.tracking.copies import UNSUBSCRIBE_MAILBOX

log = logging.getLogger("mta.inbound")
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)
MAX_HOPS = 50  # Received headers before mail is taken for a loop (Postfix's hopcount_limit)
MAX_HEADERS = 500  # header fields that routes look at
HEAVY_BYTES = 64 * 1024  # larger messages (or header blocks) are read off the event loop
ROUTES_BUDGET_S = 0.1  # route matching (CPU) for all of one message's recipients together
_OURS = ("x-mailgun-", "x-envelope-from")
JOB_CONCURRENCY = 20
JOB_LEASE_S = 600.0
JOB_KINDS = ("post", "email", "notify")  # forward to a URL, to an address; store(notify=URL)
PURGE_INTERVAL_S = 3600.0  # by one node of the cluster
PURGE_CHECK_S = 60.0  # how often each node asks whether it is its turn
PURGE_CHUNK = 200
_INSERT_MESSAGE = (
    "INSERT INTO inbound (key, domain, received_at, sender, recipient, mime_key, prefix,"
    " stored_until, from_aligned) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_MESSAGE = (
    "SELECT i.key, i.domain, i.received_at, i.sender, i.recipient, i.prefix, i.from_aligned,"
    " m.mime FROM inbound i JOIN inbound_mime m ON m.key = i.mime_key"
)


def _reserved(name: str) -> bool:
    return name.startswith(_OURS)


def _from_domain(from_value: str) -> str:
    """The domain of a From header's (first) address, lower-cased; "" when it has none."""
    addresses = split_addresses(from_value)
    return addresses[0][1].rpartition("@")[2].lower() if addresses else ""


@dataclass(frozen=True)
class _Reading:
    """What receiving needs of a message, read once."""

    mime: bytes  # as stored and routed
    headers: list[tuple[str, str]]  # decoded, for routes
    report: str  # "delivery-status", "feedback-report" or ""
    from_domain: str


def _report_kind(content_type: str) -> str:
    holder = email.message.Message()
    holder["Content-Type"] = content_type
    return report_type(holder)  # type: ignore[arg-type]


def _forwards_to_addresses(matches: list[RouteMatch]) -> bool:
    return any(
        action.kind == "forward"
        and any(not t.lower().startswith(("http://", "https://")) for t in action.destinations)
        for match in matches
        for action in match.actions
    )


def _aligned(from_domain: str, authenticated: frozenset[str]) -> bool:
    """DMARC's relaxed alignment, without a public-suffix list: a domain that passed SPF or
    DKIM is the From domain, or one is under the other."""
    return any(
        d == from_domain or from_domain.endswith("." + d) or d.endswith("." + from_domain)
        for d in authenticated
        if d
    )


def _first_header(headers: list[tuple[str, str]], name: str) -> str:
    return next((v for n, v in headers if n.lower() == name), "")


def _received(peer_ip: str, helo: str, hostname: str, now: float) -> str:
    """The trace header RFC 5321 asks for (and what loop detection counts)."""
    helo = "".join(c for c in helo if c.isprintable() and c not in "()\\")[:255] or "unknown"
    stamp = email.utils.formatdate(now)
    return f"Received: from {helo} ([{peer_ip}]) by {hostname} with ESMTP; {stamp}\r\n"

class InboundError(Exception):
    """A refusal in SMTP terms (code, enhanced code, text)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class StoredMessage:
    key: str
    domain: str
    received_at: float
    sender: str
    recipient: str
    mime: bytes
    from_aligned: bool  # its From passed SPF or DKIM, aligned: a forward may sign it

    @classmethod
    def from_row(cls, row: Any) -> StoredMessage:
        """A `_SELECT_MESSAGE` row: the recipient's own added headers, then the content."""
        return cls(row["key"], row["domain"], row["received_at"], row["sender"],
                   row["recipient"], row["prefix"] + row["mime"], bool(row["from_aligned"]))

    def raw_fields(self) -> dict[str, str]:
        """Mailgun's raw-MIME form: envelope, From and Subject, and the message itself."""
        end = self.mime.find(b"\r\n\r\n")
        head = _HEADERS.parsebytes(self.mime if end < 0 else self.mime[: end + 4])
        return {
            "recipient": self.recipient,
            "sender": self.sender,
            "from": decode_header_value(str(head.get("From", ""))),
            "subject": decode_header_value(str(head.get("Subject", ""))),
            "body-mime": self.mime.decode("utf-8", "replace"),
        }


def _owner(key: str) -> str:
    """The jobs owner of a received message: its jobs go when it is purged."""
    return f"inbound:{key}"


@dataclass(frozen=True)
class _Action:
    """One route action of a received message, as a job's payload holds it."""

    inbound_key: str
    kind: str  # one of JOB_KINDS
    target: str
    route_id: str
    attempts: int  # made before this one

    @classmethod
    def from_job(cls, job: jobs.Job) -> _Action:
        payload = job.payload
        return cls(payload["inbound"], job.kind.removeprefix("inbound."),
                   payload["target"], payload.get("route", ""), job.attempts)

    @staticmethod
    def new_job(kind: str, inbound_key: str, target: str, route_id: str) -> jobs.NewJob:
        return jobs.NewJob(f"inbound.{kind}",
                           {"inbound": inbound_key, "target": target, "route": route_id},
                           owner=_owner(inbound_key))


class Inbound:
    def __init__(
        self,
        config: Config,
        store: Store,
        domains: Domains,
        routes: Routes,
        verdicts: Verdicts,
        reports: Reports,
        acceptor: Acceptor,
        resolver: Resolver,
        account: Account,
        unsubscribe: Callable[[str, str, str], Awaitable[bool]],
        lists: Lists,
    ) -> None:
        self._config = config
        self._lists = lists  # a list address takes posts per its access level
        self._account = account
        # honours a List-Unsubscribe mailto: (recipient, subject, peer ip) -> whether it was one
        self._unsubscribe = unsubscribe
        self._resolver = resolver
        self._store = store
        self._domains = domains
        self._routes = routes
        self._verdicts = verdicts
        self._reports = reports
        self._acceptor = acceptor
        self._purger: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._jobs = jobs.Runner(store, lease_s=JOB_LEASE_S, concurrency=JOB_CONCURRENCY,
                                 name="inbound-jobs")
        schedule = jobs.Schedule(tuple(config.inbound.retry_intervals_s))
        for kind in JOB_KINDS:
            self._jobs.register(f"inbound.{kind}", self._run, schedule)

    # -- receiving ------------------------------------------------------------------------------

    def storage_url(self, domain: str, key: str) -> str:
        base = self._config.api.public_url.rstrip("/") or f"http://{self._config.api.listen}"
        return f"{base}/v3/domains/{domain}/messages/{key}"

    async def receive(
        self, sender: str, recipients: list[str], mime: bytes, peer_ip: str, helo: str
    ) -> int:
        """Check, route and store one message; returns how many recipients took it. Raises
        InboundError when none would (no route, no report)."""
        now = time.time()
        reading = await off_loop_if(
            len(mime) > HEAVY_BYTES, functools.partial(self._read, mime)
        )
        mime, headers = reading.mime, reading.headers
        recipients = list(dict.fromkeys(recipients))
        domains = [await self._domains.get(r.rpartition("@")[2]) for r in recipients]
        verdict = Verdict("", "", None, None)
        authenticated: frozenset[str] | None = None  # domains that passed SPF or DKIM
        if any(d is not None and d.spam_action in ("tag", "block") for d in domains):
            verdict = await self._verdicts.check(mime, sender, peer_ip, helo)
            authenticated = verdict.passed
        report = None
        if reading.report:  # a bounce or complaint report: read once, whole, off the loop
            report = await self._reports.summarise(mime)
        received = _received(peer_ip, helo, self._config.server.hostname, now)
        mime_key = tokens.token_urlsafe(24)  # the content, stored once for every recipient
        budget = MatchingTime(ROUTES_BUDGET_S)
        statements: list[Statement] = []
        taken = 0
        keeps_content = False
        posts: list[MailingList] = []  # lists this message is posted to
        refused: list[Event] = []  # `rejected` events of posts lists' access levels refused
        for rcpt, domain in zip(recipients, domains, strict=True):
            await asyncio.sleep(0)  # other sessions go on between recipients
            if domain is None:
                continue
            if report is not None:
                effect = await self._reports.read(report, rcpt)
                if effect is not None:
                    statements += effect
                    taken += 1
                    report = None  # one report takes effect once, whatever the recipients
                    continue
            if rcpt.partition("@")[0].lower() == UNSUBSCRIBE_MAILBOX and await self._unsubscribe(
                rcpt, _first_header(headers, "subject"), peer_ip
            ):
                log.info("unsubscribe by mail for <%s> from <%s>", rcpt, sender)
                taken += 1
                continue
            if domain.spam_action == "block" and verdict.spam:
                log.info("dropped spam for <%s> from <%s> (score %s)", rcpt, sender, verdict.score)
                taken += 1
                continue
            added = [("X-Mailgun-Incoming", "Yes"), ("X-Envelope-From", f"<{sender}>")]
            if domain.spam_action == "tag":
                added += verdict.headers()
            try:
                matches = await self._routes.evaluate(rcpt, headers + added, budget)
            except RoutesOutOfTime:  # nothing is committed yet: the sender tries again later
                raise InboundError(
                    "451 4.3.0 Routing this message took too long, please try again later"
                ) from None
            # a list and a route on one address both act (manual: "Mailing Lists and Routes")
            lst = await self._lists.get(rcpt)
            if lst is not None:
                refusal = await self._post_refusal(lst, sender, headers)
                if refusal is None:
                    posts.append(lst)
                else:
                    log.info("refused a post to list <%s> from <%s>: %s", rcpt, sender, refusal)
                    refused.append(_refused_post(lst, rcpt, sender, peer_ip, headers, refusal))
                    statements += event_statements(lst.domain, refused[-1:])
                if not matches:
                    taken += refusal is None
                    continue
            if not matches:
                log.info("no route for <%s> (from <%s>)", rcpt, sender)
                continue
            aligned = False
            if _forwards_to_addresses(matches) and await self._hosted(reading.from_domain):
                if authenticated is None:  # SPF and DKIM, asked only when it matters
                    authenticated = await self._verdicts.authenticate(mime, sender, peer_ip, helo)
                aligned = _aligned(reading.from_domain, authenticated)
            prefix = (received + "".join(f"{n}: {v}\r\n" for n, v in added)).encode()
            routed = self._routed(domain, rcpt, sender, mime_key, prefix, len(mime), headers,
                                  matches, aligned, now)
            statements += routed
            keeps_content = keeps_content or len(routed) > 1
            taken += 1
        if not taken:
            if refused:
                await self._store.write(*statements)
                assert refused[0].reject is not None
                raise InboundError(f"550 5.7.1 {refused[0].reject.description}")
            raise InboundError("550 5.1.1 No such recipient here")
        if keeps_content:
            statements.append(
                Statement("INSERT INTO inbound_mime (key, mime) VALUES (?, ?)", [(mime_key, mime)])
            )
        for lst in posts:  # the first post commits with the routes' work, in one transaction
            try:
                await self._acceptor.accept(_post_submission(lst, sender, received, mime,
                                                             peer_ip), *statements)
                statements = []
            except AcceptError as exc:  # recorded as `rejected` by accept itself
                log.info("list <%s> could not take a post from <%s>: %s", lst.address, sender,
                         exc.message)
                taken -= 1
                if not taken and not statements:
                    raise InboundError(exc.smtp_reply) from None
        if statements:
            await self._store.write(*statements)
        return taken

    async def _post_refusal(
        self, lst: MailingList, sender: str, headers: list[tuple[str, str]]
    ) -> str | None:
        """Why `lst` refuses this post (None: it takes it). Owners post by the API or SMTP
        submission; on the MX, members lists take their subscribed members' mail (the envelope
        sender's or the From address), everyone lists anybody's. A message that already went
        out to this list (its List-Id) is a loop."""
        list_id = f"<{lst.address.replace('@', '.')}>"
        if any(n.lower() == "list-id" and list_id in v.lower() for n, v in headers):
            return f"Mail loop: this message already went out to the list {lst.address}"
        if lst.access_level == "everyone":
            return None
        if lst.access_level == "members":
            candidates = {sender.lower()} if sender else set()
            candidates |= {addr.lower() for _, addr in
                           split_addresses(_first_header(headers, "from"))[:1]}
            for address in candidates:
                if await self._lists.is_subscribed(lst, address):
                    return None
            return f"Only members may post to the list {lst.address}"
        return f"The list {lst.address} takes posts from its owner only"

    def _read(self, mime: bytes) -> _Reading:
        """The message read once, from the bytes that are stored: header block (capped), MIME
        shape (capped), hops, and a stranger's copies of our own headers dropped."""
        smtp, inbound = self._config.smtp, self._config.inbound
        try:
            head = MessageHead.parse(mime, smtp.max_header_bytes, smtp.max_header_fields)
            check_structure(mime, inbound.max_mime_parts, inbound.max_mime_depth)
        except (HeadError, TooComplex) as exc:
            raise InboundError(f"552 5.3.4 {exc}") from None
        for name in ("from", "sender"):
            if head.count(name) > 1:
                raise InboundError(f"550 5.6.0 Message has more than one {name.title()} header")
        if head.count("received") > MAX_HOPS:
            raise InboundError("554 5.4.6 Too many hops: a mail loop?")
        # what a stranger wrote in our own header names is not ours: dropped before ours go in
        kept = head.without(_reserved)
        headers = []
        for field in kept.fields[:MAX_HEADERS]:
            name, _, value = field.partition(b":")
            headers.append((name.decode("ascii", "replace").strip(),
                            decode_header_value(value.decode("utf-8", "surrogateescape"))))
        content_type = kept.first("content-type") or ""
        return _Reading(kept.to_bytes(), headers, _report_kind(content_type),
                        _from_domain(kept.first("from") or ""))

    async def _hosted(self, name: str) -> bool:
        """Whether `name` or a domain it is under is hosted here."""
        labels = name.split(".")
        for i in range(len(labels) - 1):
            if await self._domains.get(".".join(labels[i:])) is not None:
                return True
        return False

    def _routed(
        self,
        domain: Domain,
        rcpt: str,
        sender: str,
        mime_key: str,
        prefix: bytes,
        size: int,
        headers: list[tuple[str, str]],
        matches: list[RouteMatch],
        aligned: bool,
        now: float,
    ) -> list[Statement]:
        """The events of a routed recipient, and (when an action needs the message later) its
        row and jobs: the first statement is always the events."""
        key = tokens.token_urlsafe(24)
        new_jobs = []
        stored_until = 0.0
        for match in matches:
            for action in match.actions:
                if action.kind == "forward":
                    for target in action.destinations:
                        web = target.lower().startswith(("http://", "https://"))
                        new_jobs.append(_Action.new_job("post" if web else "email", key, target,
                                                        match.route.id))
                elif action.kind == "store":
                    stored_until = now + self._config.inbound.store_days * 86400
                    if action.notify:
                        new_jobs.append(_Action.new_job("notify", key, action.notify,
                                                        match.route.id))
        storage = Storage(self.storage_url(domain.name, key), key) if stored_until else None
        accepted = self._accepted_event(rcpt, sender, size + len(prefix), headers, matches,
                                        storage)
        events = [accepted]
        if storage is not None:
            events.append(_stored_event(accepted))
        log.info("routed mail for <%s> from <%s>: %d action(s)%s", rcpt, sender,
                 len(new_jobs), ", stored" if stored_until else "")
        statements = event_statements(domain.name, events)
        if new_jobs or stored_until:
            statements.append(
                Statement(_INSERT_MESSAGE, [(key, domain.name, now, sender, rcpt, mime_key,
                                             prefix, stored_until, int(aligned))])
            )
        if new_jobs:
            statements.append(jobs.enqueue_many(new_jobs, now=now))
        return statements

    @staticmethod
    def _accepted_event(
        rcpt: str,
        sender: str,
        size: int,
        headers: list[tuple[str, str]],
        matches: list[RouteMatch],
        storage: Storage | None = None,
    ) -> Event:
        first: dict[str, str] = {}
        for name, value in headers:
            first.setdefault(name.lower(), value)
        return Event(
            "accepted",
            method="smtp",
            recipient=rcpt,
            tags=(),
            user_variables={},
            flags=_ACCEPTED_FLAGS,
            envelope=Envelope(sender=sender, transport="smtp", targets=rcpt),
            message=MessageSummary(
                headers=MessageHeaders(
                    to=first.get("to", ""),
                    message_id=first.get("message-id", "").strip().strip("<>"),
                    from_=first.get("from", ""),
                    subject=first.get("subject", ""),
                ),
                recipients=(rcpt,),
                size=size,
            ),
            routes=tuple(
                MatchedRoute(id=m.route.id, recipient=rcpt, expression=m.route.expression)
                for m in matches
            ),
            storage=storage,
        )

    # -- stored messages ------------------------------------------------------------------------

    async def stored(self, domain: str, key: str) -> StoredMessage | None:
        row = await self._store.fetchone(
            _SELECT_MESSAGE + " WHERE i.key = ? AND i.domain = ? AND i.stored_until > ?",
            (key, domain, time.time()),
        )
        return None if row is None else StoredMessage.from_row(row)

    async def delete_stored(self, domain: str, key: str) -> bool:
        if await self.stored(domain, key) is None:
            return False
        await self._store.write(
            Statement(
                "UPDATE inbound SET stored_until = 0 WHERE key = ? AND domain = ?", [(key, domain)]
            )
        )
        return True

    async def purge(self) -> None:
        """Messages no longer stored and with no job left to run, a few hundred at a time: one
        long transaction would hold up every acknowledgement behind it. Candidates are read in
        key order, so messages still waiting for a job never hide the ones after them."""
        after = ""
        while True:
            rows = await self._store.fetchall(
                "SELECT key, mime_key FROM inbound WHERE stored_until < ? AND key > ?"
                " ORDER BY key LIMIT ?",
                (time.time(), after, PURGE_CHUNK),
            )
            if not rows:
                return
            after = rows[-1]["key"]
            busy = await jobs.pending(self._store, [_owner(row["key"]) for row in rows])
            done = [row for row in rows if _owner(row["key"]) not in busy]
            if not done:
                continue
            keys = [row["key"] for row in done]
            contents = list({row["mime_key"] for row in done})
            marks = ",".join("?" * len(keys))
            await self._store.write(
                *jobs.forget([_owner(key) for key in keys]),
                Statement(f"DELETE FROM inbound WHERE key IN ({marks})", [keys]),
                Statement(
                    f"DELETE FROM inbound_mime WHERE key IN ({','.join('?' * len(contents))})"
                    " AND NOT EXISTS (SELECT 1 FROM inbound i WHERE i.mime_key = inbound_mime.key)",
                    [contents],
                ),
            )

    # -- jobs -----------------------------------------------------------------------------------

    async def start(self) -> None:
        inbound = self._config.inbound
        policy = webpost.Policy(inbound.forward_allow, inbound.forward_deny, "inbound.forward_deny")
        self._http = webpost.session(self._resolver, policy, inbound.post_timeout_s)
        await self._jobs.start()
        self._purger = asyncio.create_task(self._purge_loop(), name="inbound-purge")

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        await self._jobs.stop(self._config.outbound.stop_grace_s)
        if self._http is not None:
            await self._http.close()

    async def _purge_loop(self) -> None:
        while True:
            try:
                if await periodic.claim(self._store, "inbound-purge", PURGE_INTERVAL_S):
                    await self.purge()
            except Exception:
                log.exception("purging inbound messages failed")
            await asyncio.sleep(PURGE_CHECK_S)

    async def _run(self, job: jobs.Job) -> jobs.Outcome:
        """The handler of every inbound job kind. An exception is a failed attempt (the runner
        retries it), as is a post that got no 200 or 406."""
        action = _Action.from_job(job)
        row = await self._store.fetchone(_SELECT_MESSAGE + " WHERE i.key = ?",
                                         (action.inbound_key,))
        domain = await self._domains.get(row["domain"]) if row is not None else None
        if row is None or domain is None:
            return jobs.Outcome.fail("the message or its domain is gone")
        message = StoredMessage.from_row(row)
        if action.kind == "email":
            return await self._forward_email(action, domain, message)
        return await self._post(action, domain, message)

    async def _forward_email(
        self, action: _Action, domain: Domain, message: StoredMessage
    ) -> jobs.Outcome:
        submission = Submission(
            domain=domain.name,
            method="smtp",
            to=[action.target],
            mime=message.mime,
            envelope_sender=message.sender,
            authenticated=False,
            control_headers=False,  # a stranger's X-Mailgun-* are not ours to obey
        )
        head = MessageHead.parse(message.mime, len(message.mime), len(message.mime))
        if not message.from_aligned and await self._hosted(_from_domain(head.first("from") or "")):
            # signing it for a hosted domain would make a stranger's spoof pass DMARC: the
            # envelope is ours (the return path), the signature is left off
            submission.options.dkim = False
        try:
            await self._acceptor.accept(submission)
        except AcceptError as exc:
            log.warning(
                "forward of <%s> to <%s> refused: %s", message.recipient, action.target,
                exc.message,
            )
            return jobs.Outcome.fail(
                exc.message, *self._given_up(action, message, 0, exc.message, reason="generic")
            )
        return jobs.Outcome.done()

    async def _post(self, action: _Action, domain: Domain, message: StoredMessage) -> jobs.Outcome:
        """A refused address is retried like any failure: it is judged on the DNS answer of
        the moment, and an operator who widens forward_allow gets the waiting posts through."""
        form = await self._form(action, domain, message)
        assert self._http is not None
        where = webpost.redact(action.target)
        try:
            status = await webpost.post(self._http, action.target, form)
        except webpost.PostError as exc:
            problem = str(exc)
            return jobs.Outcome.retry(f"{action.kind} to {where}: {problem}",
                                      *self._given_up(action, message, exc.status, problem))
        if status == 200:
            log.info("posted mail for <%s> to %s", message.recipient, where)
            return jobs.Outcome.done()
        if status == 406:
            log.info("%s rejected mail for <%s> (406): not retried", where, message.recipient)
            return jobs.Outcome.stop(f"{action.kind} to {where}: 406, not retried")
        problem = webpost.status_line(status)
        return jobs.Outcome.retry(f"{action.kind} to {where}: {problem}",
                                  *self._given_up(action, message, status, problem))

    async def _form(
        self, action: _Action, domain: Domain, message: StoredMessage
    ) -> aiohttp.FormData:
        """Always multipart/form-data, attachments or not: Mailgun's posts are, and some
        applications read only that."""
        form = aiohttp.FormData(default_to_multipart=True)
        if action.kind == "post" and action.target.rstrip("/").lower().endswith("mime"):
            fields = message.raw_fields()
            for name, value in (fields | signed_fields(await self._account.signing_key())).items():
                form.add_field(name, value)
            return form
        parsed: Parsed = await asyncio.to_thread(parse_message, message.mime)
        fields = dict(parsed.fields)
        fields["recipient"] = message.recipient
        fields["sender"] = message.sender
        if action.kind == "notify":
            url = self.storage_url(domain.name, message.key)
            fields["domain"] = domain.name
            fields["recipients"] = message.recipient  # §3: both spellings
            fields["message-url"] = url
            fields["attachments"] = orjson.dumps(attachments_json(url, parsed)).decode()
            fields.pop("attachment-count", None)
        for name, value in (fields | signed_fields(await self._account.signing_key())).items():
            form.add_field(name, value)
        if action.kind == "post":
            for number, attachment in enumerate(parsed.attachments, start=1):
                form.add_field(
                    f"attachment-{number}",
                    attachment.data,
                    filename=attachment.filename or f"attachment-{number}",
                    content_type=attachment.content_type,
                )
        return form

    def _given_up(
        self, action: _Action, message: StoredMessage, status: int, problem: str,
        reason: str = "old",
    ) -> list[Statement]:
        """The `failed` event recorded when the action is given up."""
        target = webpost.redact(action.target)  # events are read by more people than routes are
        return event_statements(
            message.domain, [_failed_event(action, message, status, problem, reason, target)]
        )


_ACCEPTED_FLAGS = Flags(
    is_authenticated=False, is_routed=True, is_test_mode=False, is_system_test=False
)
_STORED_FLAGS = Flags(is_test_mode=False)
_GIVEN_UP_FLAGS = Flags(is_routed=True)


def _post_submission(
    lst: MailingList, sender: str, received: str, mime: bytes, peer_ip: str
) -> Submission:
    """A stranger's post to a list, as the one accept path takes it: their message as it came
    (our Received line on top), none of its X-Mailgun-* controls obeyed."""
    return Submission(
        domain=lst.domain,
        method="smtp",
        to=[lst.address],
        mime=received.encode() + mime,
        envelope_sender=sender,
        authenticated=False,
        control_headers=False,
        originating_ip=peer_ip,
    )


def _refused_post(
    lst: MailingList,
    rcpt: str,
    sender: str,
    peer_ip: str,
    headers: list[tuple[str, str]],
    why: str,
) -> Event:
    return Event(
        "rejected",
        method="smtp",
        recipient=rcpt,
        reject=Reject("invalid", why),
        tags=(),
        user_variables={},
        flags=Flags(is_authenticated=False, is_test_mode=False),
        envelope=Envelope(sender=sender, transport="smtp", targets=rcpt),
        message=MessageSummary(
            headers=MessageHeaders(
                to=_first_header(headers, "to")[:1000],
                message_id=_first_header(headers, "message-id").strip().strip("<>")[:1000],
                from_=_first_header(headers, "from")[:1000],
                subject=_first_header(headers, "subject")[:1000],
            )
        ),
        mailing_list=EventList(address=lst.address, list_id=lst.id),
        originating_ip=peer_ip or None,
    )


def _stored_event(accepted: Event) -> Event:
    """The `stored` event beside a routed recipient's `accepted` one (which has the storage)."""
    return Event("stored", storage=accepted.storage, message=accepted.message,
                 flags=_STORED_FLAGS)


def _failed_event(
    action: _Action, message: StoredMessage, status: int, problem: str, reason: str, target: str
) -> Event:
    """The `failed` event of a route action given up (`target` already redacted)."""
    return Event(
        "failed",
        recipient=message.recipient,
        severity="permanent",
        reason=reason,
        flags=_GIVEN_UP_FLAGS,
        routes=(MatchedRoute(id=action.route_id, recipient=message.recipient),),
        delivery_status=DeliveryStatus(
            code=status,
            message=problem,
            description=f"{action.kind} to {target} given up",
            attempt_no=action.attempts + 1,
        ),
        envelope=Envelope(sender=message.sender, transport=action.kind, targets=target),
    )


def attachments_json(message_url: str, parsed: Parsed) -> list[dict[str, Any]]:
    return [
        {
            "size": len(a.data),
            "url": f"{message_url}/attachments/{n}",
            "name": a.filename,
            "content-type": a.content_type,
        }
        for n, a in enumerate(parsed.attachments)
    ]
