"""Reading back what was recorded about one sent copy, for events that come later (tracking
hits carry the tags, campaigns and user-variables of the message they are about)."""

from __future__ import annotations

import orjson

from mta.events.model import Event
from mta.store import Store


async def sent_event(store: Store, domain: str, message_id: str, recipient: str) -> Event | None:
    """The `delivered` event of the message to the recipient, else its `accepted` event (not
    yet delivered, or the delivery's event not committed yet), else None (never sent, or
    purged with the event history)."""
    rows = await store.fetchall(
        "SELECT event, payload FROM events WHERE message_id = ? AND domain = ?"
        " AND recipient = ? AND event IN ('delivered', 'accepted') ORDER BY seq DESC",
        (message_id, domain, recipient.lower()),
    )
    found: dict[str, bytes] = {}
    for row in rows:
        found.setdefault(row["event"], row["payload"])
    payload = found.get("delivered") or found.get("accepted")
    return None if payload is None else Event.from_payload(orjson.loads(bytes(payload)))
