"""The queue: the only writer of the `messages` and `recipients` tables.

Accepting enqueues (statements inside the accept transaction), delivery claims, finishes,
retries and defers; each outcome is written with its event in one transaction.

A leased row has `due_at = lease_until` (in the future), so the due-rows index skips it, and
names the node holding it. If a node dies, its rows become due again when the lease runs out
and any node takes them; a node starting again frees only its own leases at once. On
PostgreSQL, nodes claiming together skip each other's locked rows (FOR UPDATE SKIP LOCKED).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from mta.accept.template import Personal, Template
from mta.events import (
    Attachment,
    Campaign,
    DeliveryStatus,
    Envelope,
    Event,
    EventKind,
    Flags,
    MailingList,
    MessageHeaders,
    MessageSummary,
    Severity,
    event_statements,
)
from mta.store import Statement, Store

_CLAIM = (
    "UPDATE recipients SET lease_until = ?1, due_at = ?1, lease_node = ?2"
    " WHERE id IN (SELECT id FROM recipients WHERE state = 'queued' AND due_at <= ?3"
    " ORDER BY due_at LIMIT ?4{lock})"
    " RETURNING id, message_key, address, attempts, to_header, user_variables, personal,"
    " mailing_list, mime IS NOT NULL AS has_copy"
)
_CLAIM_SQL = {
    "sqlite": _CLAIM.format(lock=""),  # the one writer serialises claims
    "postgresql": _CLAIM.format(lock=" FOR UPDATE SKIP LOCKED"),
}
_DONE = "UPDATE recipients SET state = ?, attempts = attempts + 1, lease_until = 0 WHERE id = ?"
_RETRY = "UPDATE recipients SET attempts = attempts + 1, due_at = ?, lease_until = 0 WHERE id = ?"
_DEFER = "UPDATE recipients SET due_at = ?, lease_until = 0 WHERE id = ?"
_ENQUEUE_MESSAGE = (
    "INSERT INTO messages (key, message_id, domain, created_at, sender, options, mime)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ENQUEUE_RECIPIENT = (
    "INSERT INTO recipients"
    " (message_key, address, user_variables, to_header, personal, due_at, mailing_list, state)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 'queued')"
)
_ENQUEUE_LIST_SEND = (
    "INSERT INTO list_sends (message_key, list_id, list_address, due_at) VALUES (?, ?, ?, ?)"
)
_CHUNK = 500
PURGE_CHUNK = 200
DOMAIN_REMOVED = "domain-removed"


class NewMessage(NamedTuple):
    """An accepted message as stored: `options` and `mime` already serialised."""

    key: str
    message_id: str
    domain: str
    created_at: float
    sender: str
    options: bytes
    mime: bytes


class NewRecipient(NamedTuple):
    address: str
    user_variables: bytes | None
    to_header: str | None
    personal: bytes | None
    due_at: float
    mailing_list: str | None = None  # the list (address) a member's row was expanded from


class ListSend(NamedTuple):
    """A message sent to a mailing list: expanded into its members' rows by
    mta.queue.expansion, a chunk at a time, after the accepting commit."""

    list_id: str
    list_address: str
    due_at: float  # when expansion may start


def enqueue(
    message: NewMessage,
    recipients: Sequence[NewRecipient],
    list_sends: Sequence[ListSend] = (),
) -> list[Statement]:
    """The statements that queue a message, for the accepting transaction (with its events)."""
    statements = [
        Statement(_ENQUEUE_MESSAGE, [message]),
        Statement(_ENQUEUE_RECIPIENT, [(message.key, *r) for r in recipients]),
    ]
    if list_sends:
        statements.append(
            Statement(_ENQUEUE_LIST_SEND, [(message.key, *send) for send in list_sends])
        )
    return statements


def enqueue_recipients(message_key: str, recipients: Sequence[NewRecipient]) -> Statement:
    """More rows for a message already queued (a list send's next members)."""
    return Statement(_ENQUEUE_RECIPIENT, [(message_key, *r) for r in recipients])


@dataclass(eq=False)
class Message:
    """What every recipient of one accepted message shares."""

    key: str
    domain: str
    sender: str
    created_at: float
    options: dict[str, Any]
    mime: bytes | None
    pending: int = 0  # deliveries in memory that point here
    dkim_header: bytes | None = None  # signature of the shared content, made once
    tracked: bool | None = None  # recipients get copies with their own links (None: not known)
    _template: Template | None = None

    @property
    def template(self) -> Template | None:
        """A batch send's template (read once), rendered per recipient; None for a message
        that goes out alike to everyone."""
        if self._template is None and self.options.get("template") and self.mime is not None:
            self._template = Template.load(self.mime)
        return self._template

    @property
    def message_id(self) -> str:
        return str(self.options.get("message", {}).get("headers", {}).get("message-id", ""))

    @property
    def deliver_at(self) -> float | None:
        return self.options.get("deliver_at")

    @property
    def first_due(self) -> float:
        return self.deliver_at or self.created_at

    @property
    def tags(self) -> list[str]:
        return list(self.options.get("tags", []))

    @property
    def test_mode(self) -> bool:
        return bool(self.options.get("test_mode"))


@dataclass(eq=False)
class Delivery:
    """One recipient's next attempt."""

    id: int
    message: Message
    address: str
    attempts: int
    to_header: str | None
    user_variables: dict[str, Any] | None
    personal: Personal | None = None  # a batch recipient's values (the message is a template)
    copy: bytes | None = None  # a copy of its own (stored per recipient before templates)
    mailing_list: str | None = None  # a list member's row: the list's address
    site: Any = field(default=None, repr=False)  # the scheduler's Site, once sorted
    signed: bool = False  # DKIM-signed on its last attempt

    @property
    def recipient_domain(self) -> str:
        return self.address.rpartition("@")[2].lower()

    @property
    def shared(self) -> bool:
        """Whether every recipient of the message gets the same bytes (one signature)."""
        return self.copy is None and self.message.template is None

    @property
    def size(self) -> int:
        if self.copy is not None:
            return len(self.copy)
        template = self.message.template
        if template is not None:
            return template.size
        return len(self.message.mime or b"")

    def content(self) -> bytes:
        """What is sent to this recipient (a batch copy is rendered here, each time)."""
        if self.copy is not None:
            return self.copy
        template = self.message.template
        if template is not None:
            # a plain recipient of a template (a message also sent to a list) keeps its To
            return template.render(self.personal or Personal("", self.address, keeps_to=True))
        assert self.message.mime is not None
        return self.message.mime


class Queue:
    """The store side of delivery: leases, the messages they need, and outcomes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._messages: dict[str, Message] = {}

    async def release_own(self, now: float) -> int:
        """Free the leases this node's previous run left behind (it crashed or was killed),
        and unnamed ones from before leases named their node. Other nodes' leases are
        theirs: they expire on their own if those nodes are gone."""
        rows = await self._store.write_returning(
            "UPDATE recipients SET due_at = ?, lease_until = 0, lease_node = ''"
            " WHERE state = 'queued' AND lease_until > 0 AND lease_node IN (?, '') RETURNING id",
            (now, self._store.node_id),
        )
        return len(rows)

    async def anything_due(self, now: float) -> bool:
        row = await self._store.fetchone(
            "SELECT 1 FROM recipients WHERE state = 'queued' AND due_at <= ? LIMIT 1", (now,)
        )
        return row is not None

    async def claim(self, now: float, lease_s: float, limit: int) -> list[Delivery]:
        until = now + lease_s
        rows = await self._store.write_returning(
            _CLAIM_SQL[self._store.dialect], (until, self._store.node_id, now, limit)
        )
        if not rows:
            return []
        messages = await self._load_messages({r["message_key"] for r in rows})
        copies = await self._copies([r["id"] for r in rows if r["has_copy"]])
        deliveries = []
        for row in rows:
            # while this claim awaited its reads, the last delivery of a cached message may have
            # left memory and dropped it from the cache: put it back
            message = self._messages.setdefault(row["message_key"], messages[row["message_key"]])
            message.pending += 1
            deliveries.append(_delivery(row, message, copies.get(row["id"])))
        return deliveries

    async def renew(self, ids: list[int], until: float) -> None:
        """Extend the leases of recipients still held in memory (a slow site, a long queue)."""
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            await self._store.write(
                Statement(
                    f"UPDATE recipients SET lease_until = ?, due_at = ? WHERE id IN ({marks})"
                    " AND state = 'queued' AND lease_node = ?",
                    [(until, until, *chunk, self._store.node_id)],
                )
            )

    def forget(self, delivery: Delivery) -> None:
        """The delivery left memory (done, retried later or deferred)."""
        message = delivery.message
        message.pending -= 1
        if message.pending <= 0:
            self._messages.pop(message.key, None)

    async def _load_messages(self, keys: set[str]) -> dict[str, Message]:
        """The messages of `keys`: cached, or read and cached."""
        found = {k: self._messages[k] for k in keys if k in self._messages}
        missing = [k for k in keys if k not in found]
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in await self._store.fetchall(
                "SELECT key, domain, sender, created_at, options, mime FROM messages"
                f" WHERE key IN ({marks})",
                chunk,
            ):
                found[row["key"]] = self._messages.setdefault(row["key"], Message(
                    key=row["key"],
                    domain=row["domain"],
                    sender=row["sender"],
                    created_at=row["created_at"],
                    options=orjson.loads(row["options"]),
                    mime=row["mime"],
                ))
        return found

    async def _copies(self, ids: list[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in await self._store.fetchall(
                f"SELECT id, mime FROM recipients WHERE id IN ({marks})", chunk
            ):
                found[row["id"]] = row["mime"]
        return found

    # -- outcomes: each is the row change plus its event, in one transaction -------------------

    async def finish(
        self, delivery: Delivery, state: str, event: Event, *extra: Statement
    ) -> None:
        """Delivered or permanently failed."""
        await self._store.write(
            Statement(_DONE, [(state, delivery.id)]),
            *event_statements(delivery.message.domain, [event]),
            *extra,
        )

    async def retry(self, delivery: Delivery, due_at: float, event: Event) -> None:
        await self._store.write(
            Statement(_RETRY, [(due_at, delivery.id)]),
            *event_statements(delivery.message.domain, [event]),
        )

    async def defer(self, deliveries: Iterable[Delivery], due_at: float) -> None:
        """Put back without an attempt (the destination is paused or full)."""
        rows = [(due_at, d.id) for d in deliveries]
        if rows:
            await self._store.write(Statement(_DEFER, rows))

    async def purge_finished(self, before: float) -> None:
        """Drop messages older than `before` whose every recipient is done, a few hundred at
        a time: one long transaction would hold up every acknowledgement behind it."""
        while True:
            done = await self._store.fetchall(
                "SELECT key FROM messages m WHERE created_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM recipients r WHERE r.message_key = m.key"
                " AND r.state = 'queued') AND NOT EXISTS"
                " (SELECT 1 FROM list_sends s WHERE s.message_key = m.key) LIMIT ?",
                (before, PURGE_CHUNK),
            )
            if not done:
                return
            keys = [row["key"] for row in done]
            marks = ",".join("?" * len(keys))
            await self._store.write(
                Statement(f"DELETE FROM recipients WHERE message_key IN ({marks})", [keys]),
                Statement(f"DELETE FROM messages WHERE key IN ({marks})", [keys]),
            )


SUPPRESSION_CODES = (605, 606, 607)  # not sent: the address is on a suppression list


def delivery_event(
    d: Delivery,
    kind: EventKind,
    status: DeliveryStatus | Mapping[str, Any] | None,
    *,
    mail_from: str | None,
    sending_ip: str = "",
    provider: str | None = None,
    delayed_bounce: bool = False,
    severity: Severity | None = None,
    reason: str | None = None,
    primary_dkim: str | None = None,
) -> Event:
    """An event about one recipient of a sent message (delivered, failed, complained),
    carrying what its `accepted` event carried. `status` may be Mailgun-named (the scheduler's
    dicts); empty or None leaves `delivery-status` out (complaints)."""
    message = d.message
    opts = message.options
    described = opts.get("message", {})
    names = opts.get("campaign-names", {})  # messages accepted before names were kept: ids
    variables = d.user_variables
    if variables is None:
        variables = opts.get("user-variables", {})
    if status is not None and not isinstance(status, DeliveryStatus):
        status = DeliveryStatus.from_payload(status) if status else None
    if kind == "failed" and status is not None and 400 <= status.code < 600:
        # a refused attempt, hard or soft as Mailgun tells it (suppressed addresses, 6xx, and
        # messages of removed domains, 0, were never tried)
        status = dataclasses.replace(
            status, bounce_type="hard" if severity == "permanent" else "soft"
        )
    return Event(
        kind,
        recipient=d.address,
        method=described.get("method", "http"),
        severity=severity,
        reason=reason,
        tags=tuple(opts.get("tags", ())),
        campaigns=tuple(Campaign(c, names.get(c, c)) for c in opts.get("campaigns", ())),
        user_variables=variables,
        flags=Flags(
            is_authenticated=described.get("is-authenticated", True),
            is_test_mode=message.test_mode,
            is_routed=False,
            is_system_test=False,
            is_delayed_bounce=delayed_bounce,
        ),
        envelope=Envelope(
            sender=message.sender,
            transport="smtp",
            targets=d.address,
            mail_from=mail_from,
            sending_ip=sending_ip or None,
        ),
        message=_summary(d, described),
        delivery_status=status,
        recipient_provider=provider,
        primary_dkim=primary_dkim,
        mailing_list=mailing_list_of(d),
    )


def mailing_list_of(d: Delivery) -> MailingList | None:
    """The list a member's copy came from, as its events name it (from what accept kept)."""
    if d.mailing_list is None:
        return None
    described = d.message.options.get("lists", {}).get(d.mailing_list, {})
    return MailingList(address=d.mailing_list, list_id=described.get("id"))


def _summary(d: Delivery, described: Mapping[str, Any]) -> MessageSummary:
    """The `message` of a sent recipient's events, from what accept stored with the message
    (a batch recipient has its own To)."""
    headers = described.get("headers", {})
    return MessageSummary(
        headers=MessageHeaders(
            to=d.to_header if d.to_header is not None else headers.get("to"),
            message_id=headers.get("message-id", ""),
            from_=headers.get("from"),
            subject=headers.get("subject"),
        ),
        attachments=tuple(Attachment.from_payload(a) for a in described.get("attachments", ())),
        size=d.size,
    )


async def sent_recipient(store: Store, recipient_id: int) -> Delivery | None:
    """A recipient row and its message, for reports that come back about it later (bounces,
    complaints); None once the message has been purged."""
    row = await store.fetchone(
        "SELECT r.id, r.message_key, r.address, r.attempts, r.to_header, r.user_variables,"
        " r.personal, r.mailing_list, r.mime, m.domain, m.sender, m.created_at, m.options,"
        " m.mime AS shared"
        " FROM recipients r JOIN messages m ON m.key = r.message_key WHERE r.id = ?",
        (recipient_id,),
    )
    if row is None:
        return None
    message = Message(
        key=row["message_key"],
        domain=row["domain"],
        sender=row["sender"],
        created_at=row["created_at"],
        options=orjson.loads(row["options"]),
        mime=row["shared"],
    )
    return _delivery(row, message, row["mime"])


def dropped_event(d: Delivery) -> Event:
    """The `failed` event of a recipient never sent because its sending domain was removed."""
    status = DeliveryStatus(
        code=0,
        description=f"Not delivering: the sending domain {d.message.domain} was removed",
        attempt_no=d.attempts + 1,
    )
    return delivery_event(d, "failed", status, mail_from=None, severity="permanent",
                          reason="generic")


async def make_due(store: Store, domain: str, now: float) -> None:
    """Everything queued for `domain` (a removed domain) becomes due now: the scheduler then
    finds the domain gone and fails each recipient with its event, as any other outcome."""
    await store.write(
        Statement(
            "UPDATE recipients SET due_at = ? WHERE state = 'queued' AND lease_until = 0"
            " AND message_key IN (SELECT key FROM messages WHERE domain = ?)",
            [(now, domain)],
        )
    )


def _delivery(row: Any, message: Message, copy: bytes | None) -> Delivery:
    """A recipient row (id, address, attempts, to_header, user_variables, personal) as a
    Delivery."""
    variables = row["user_variables"]
    personal = row["personal"]
    return Delivery(
        id=row["id"],
        message=message,
        address=row["address"],
        attempts=row["attempts"],
        to_header=row["to_header"],
        user_variables=orjson.loads(variables) if variables else None,
        personal=Personal.load(personal) if personal else None,
        copy=copy,
        mailing_list=row["mailing_list"],
    )


async def recipient_by_message_id(store: Store, message_id: str, address: str) -> int | None:
    """The recipient row of a message (by its Message-Id) and address, if we sent it."""
    row = await store.fetchone(
        "SELECT r.id FROM recipients r JOIN messages m ON m.key = r.message_key"
        " WHERE m.message_id = ? AND lower(r.address) = lower(?) ORDER BY r.id DESC LIMIT 1",
        (message_id.strip().strip("<>"), address),
    )
    return None if row is None else int(row["id"])
