"""Events: the single, append-only history of everything that happens to a message.

Producers build typed `Event`s (mta.events.model) and hand them to `event_statements`, which
they include in the same transaction as the change the events describe (so an event exists
exactly when its change does). A row holds the event's Mailgun payload and the searchable
columns the event derives from its typed fields. The same statements count the events into
the stats tables (mta.stats.counting), and a trigger fans them out to webhooks: whoever writes
an event cannot forget either.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from mta.events.model import (
    LOG_LEVELS,
    SEP,
    Attachment,
    Campaign,
    ClientInfo,
    DeliveryStatus,
    Envelope,
    Event,
    EventKind,
    Flags,
    Geolocation,
    MailingList,
    MatchedRoute,
    MessageHeaders,
    MessageSummary,
    Reject,
    SearchColumns,
    Severity,
    Storage,
    joined,
    new_event_id,
    new_event_ids,
)
from mta.stats import counting
from mta.store import Statement, Store

__all__ = [
    "LOG_LEVELS",
    "SEP",
    "Attachment",
    "Campaign",
    "ClientInfo",
    "DeliveryStatus",
    "Envelope",
    "Event",
    "EventKind",
    "Flags",
    "Geolocation",
    "MailingList",
    "MatchedRoute",
    "MessageHeaders",
    "MessageSummary",
    "Reject",
    "SearchColumns",
    "Severity",
    "Storage",
    "event_statements",
    "joined",
    "new_event_id",
    "new_event_ids",
    "purge_expired",
    "record",
]

INSERT_EVENT = (
    "INSERT INTO events (id, domain, ts, event, recipient, message_id, severity, tags, from_addr,"
    " to_addr, subject, size, recipients, attachments, list, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row(domain: str, event: Event) -> tuple[Any, ...]:
    return (event.id, domain, event.timestamp, event.kind, *event.columns(), event.to_json())


def event_statements(domain: str, events: Iterable[Event]) -> list[Statement]:
    """The INSERT of `events` and their counting (for the transaction of the change they
    describe)."""
    events = list(events)
    return [
        Statement(INSERT_EVENT, [_row(domain, e) for e in events],
                  observed=tuple((domain, e) for e in events)),
        *counting.statements(domain, events),
    ]


async def record(store: Store, domain: str, events: Iterable[Event]) -> None:
    """Write events on their own (for events that accompany no other change)."""
    await store.write(*event_statements(domain, events))


async def purge_expired(store: Store, retention_days: float) -> None:
    horizon = time.time() - retention_days * 86400
    await store.write(Statement("DELETE FROM events WHERE ts < ?", [(horizon,)]))
