"""Events: the single, append-only history of everything that happens to a message.

Producers build Mailgun-shaped event payloads and hand them to `event_statement`, which they
include in the same transaction as the change the events describe (so an event exists exactly
when its change does). The searchable columns are derived here, in one place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from mta import tokens
from mta.store import Statement, Store

SEP = "\x1f"  # separates list items in searchable columns, so a term can match a whole item

INSERT_EVENT = (
    "INSERT INTO events (id, domain, ts, event, recipient, message_id, severity, tags, from_addr,"
    " to_addr, subject, size, recipients, attachments, list, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

LOG_LEVELS = {
    "accepted": "info",
    "delivered": "info",
    "opened": "info",
    "clicked": "info",
    "stored": "info",
    "rejected": "warn",
    "complained": "warn",
    "unsubscribed": "info",
}


def new_event_id() -> str:
    return tokens.token_urlsafe(16)  # 22 characters, like Mailgun's


def joined(items: Iterable[str]) -> str:
    items = [i.lower() for i in items if i]
    return SEP + SEP.join(items) + SEP if items else ""


def new_event(event: str, **fields: Any) -> dict[str, Any]:
    """A payload with the fields every event has; `fields` use Mailgun's (hyphenated) names."""
    payload: dict[str, Any] = {
        "id": new_event_id(),
        "event": event,
        "timestamp": time.time(),
        "log-level": LOG_LEVELS.get(event, "info"),
    }
    for name, value in fields.items():
        payload[name.replace("_", "-")] = value
    if event == "failed":
        payload["log-level"] = "error" if payload.get("severity") == "permanent" else "warn"
    return payload


def _row(domain: str, payload: dict[str, Any]) -> tuple[Any, ...]:
    message = payload.get("message") or {}
    headers = message.get("headers") or {}
    mailing_list = payload.get("mailing-list") or {}
    return (
        payload["id"],
        domain,
        payload["timestamp"],
        payload["event"],
        (payload.get("recipient") or "").lower(),
        headers.get("message-id", ""),
        payload.get("severity", ""),
        joined(payload.get("tags") or ()),
        headers.get("from", ""),
        headers.get("to", ""),
        headers.get("subject", ""),
        int(message.get("size") or 0),
        joined(message.get("recipients") or ()),
        joined(a.get("filename", "") for a in message.get("attachments") or ()),
        (mailing_list.get("address") or "").lower(),
        orjson.dumps(payload),
    )


def event_statement(domain: str, payloads: Iterable[dict[str, Any]]) -> Statement:
    return Statement(INSERT_EVENT, [_row(domain, p) for p in payloads])


async def record(store: Store, domain: str, payloads: Iterable[dict[str, Any]]) -> None:
    """Write events on their own (for events that accompany no other change)."""
    await store.write(event_statement(domain, payloads))


async def purge_expired(store: Store, retention_days: float) -> None:
    horizon = time.time() - retention_days * 86400
    await store.write(Statement("DELETE FROM events WHERE ts < ?", [(horizon,)]))
