"""Reading back what was recorded about sent copies, for events that come later (tracking hits
carry the tags, campaigns and user-variables of the message they are about)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from mta.events.model import Campaign, MailingList
from mta.store import Store

SentKey = tuple[str, str, str]  # domain, message-id (no angle brackets), recipient (lower case)


@dataclass(frozen=True)
class Sent:
    """What later events about a sent copy carry from it (Mailgun's opened, clicked and
    unsubscribed events repeat the message's tags, campaigns, user-variables and list)."""

    tags: tuple[str, ...] = ()
    campaigns: tuple[Campaign, ...] = ()
    user_variables: Mapping[str, Any] = field(default_factory=dict)
    mailing_list: MailingList | None = None
    at: float | None = None  # the event's time: the delivery's (or, not yet delivered, the
    # acceptance's: earlier, never later)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Sent:
        """Only these parts of the stored event (reading the whole Event costs five times
        as much, on every hit of a copy not seen lately)."""
        listed = payload.get("mailing-list")
        return cls(
            tags=tuple(payload.get("tags") or ()),
            campaigns=tuple(Campaign.from_payload(c) for c in payload.get("campaigns") or ()),
            user_variables=payload.get("user-variables") or {},
            mailing_list=MailingList.from_payload(listed) if listed else None,
            at=payload["timestamp"],
        )


async def sent_copies(store: Store, keys: Collection[SentKey]) -> dict[SentKey, Sent]:
    """For each copy, what the `delivered` event of the message to the recipient says, else its
    `accepted` event (not delivered yet, or its delivery not committed yet); a copy never
    sent, or purged with the event history, is left out. One query for them all: hits come
    in bursts, and a read's trip to a reader thread costs more than the indexed lookup."""
    if not keys:
        return {}
    messages = sorted({m for _, m, _ in keys})
    recipients = sorted({r for _, _, r in keys})
    rows = await store.fetchall(
        "SELECT domain, message_id, recipient, event, payload FROM events"
        f" WHERE message_id IN ({','.join('?' * len(messages))})"
        f" AND recipient IN ({','.join('?' * len(recipients))})"
        " AND event IN ('delivered', 'accepted') ORDER BY seq DESC",
        (*messages, *recipients),
    )
    wanted = set(keys)
    chosen: dict[SentKey, tuple[str, bytes]] = {}  # newest first: the latest of each kind
    for row in rows:
        key = (row["domain"], row["message_id"], row["recipient"])
        if key not in wanted:  # another pair of the messages and recipients asked about
            continue
        held = chosen.get(key)
        if held is None or (held[0] != "delivered" and row["event"] == "delivered"):
            chosen[key] = (row["event"], row["payload"])
    return {
        key: Sent.from_payload(orjson.loads(bytes(payload))) for key, (_, payload) in chosen.items()
    }


@dataclass(frozen=True)
class LastAttempt:
    """A recipient's latest delivery outcome (delivered, or failed for now or for good)."""

    event: str
    at: float
    severity: str
    code: int
    message: str


async def last_attempts(
    store: Store, message_id: str, recipients: Collection[str]
) -> dict[str, LastAttempt]:
    """For each recipient (lower case) of a message, its latest delivered or failed event
    (the queue's view of a message shows why a recipient waits)."""
    if not recipients:
        return {}
    wanted = sorted({r.lower() for r in recipients})
    rows = await store.fetchall(
        "SELECT recipient, event, ts, severity, payload FROM events WHERE message_id = ?"
        f" AND recipient IN ({','.join('?' * len(wanted))})"
        " AND event IN ('delivered', 'failed') ORDER BY seq DESC",
        (message_id, *wanted),
    )
    found: dict[str, LastAttempt] = {}
    for row in rows:
        if row["recipient"] in found:
            continue
        status = orjson.loads(bytes(row["payload"])).get("delivery-status") or {}
        found[row["recipient"]] = LastAttempt(
            row["event"], row["ts"], row["severity"], int(status.get("code") or 0),
            str(status.get("message") or status.get("description") or ""),
        )
    return found
