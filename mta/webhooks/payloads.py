"""What a webhook posts: Mailgun's two payload styles, built from an event as stored.

- Current names (`delivered`, `permanent_fail`, ...) post JSON
  `{"signature": {timestamp, token, signature}, "event-data": <event>}`, the event being the
  stored payload byte for byte, so a receiver sees exactly what the Events API returns.
- Legacy names (`deliver`, `bounce`, `drop`, ...) post the old form fields (the manual's
  "Tracking Messages" tables): `event` in its legacy spelling (`bounced`, `dropped`, ...), the
  hook's own fields, every user variable as a top-level field, then `timestamp`, `token` and
  `signature` last, so that a receiver that takes the last of repeated values (django-anymail
  does, as Mailgun advises) reads our signature even if a user variable has the same name.
  `message-headers` is made from what the event carries (To, From, Subject, Message-Id, the
  tags and the user variables as X-Mailgun-Tag / X-Mailgun-Variables), not from the stored
  message: the message may be purged by the time a retry runs, and a batch send stores a
  template, not each recipient's headers.

A legacy `bounce` hook gets hard bounces only and `drop` hook the suppressed and given-up
recipients (Mailgun's `hardfail` and `old`); other permanent failures reach neither (the
events trigger queues a job for both: `legacy_fields` answers None for the one that is not
posted).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from mta.events import (
    ClientInfo,
    DeliveryStatus,
    Event,
    Geolocation,
    MessageHeaders,
    MessageSummary,
)

CURRENT_NAMES = (
    "accepted", "clicked", "complained", "delivered", "opened", "permanent_fail",
    "temporary_fail", "unsubscribed",
)
LEGACY_NAMES = ("bounce", "click", "deliver", "drop", "open", "spam", "unsubscribe")
# the `event` field of each legacy hook's posts
LEGACY_EVENTS = {
    "bounce": "bounced",
    "click": "clicked",
    "deliver": "delivered",
    "drop": "dropped",
    "open": "opened",
    "spam": "complained",
    "unsubscribe": "unsubscribed",
}
_WITH_HEADERS = frozenset({"bounce", "deliver", "drop", "spam"})
_TRACKING = frozenset({"click", "open", "unsubscribe"})
_DROP_REASONS = {"old": "old", "hardfail": "hardfail", "suppress-bounce": "hardfail",
                 "suppress-unsubscribe": "hardfail", "suppress-complaint": "hardfail"}


def is_legacy(name: str) -> bool:
    return name in LEGACY_EVENTS


def json_body(event_json: bytes, signature: Mapping[str, str]) -> aiohttp.payload.BytesPayload:
    """The current style's body, the stored event spliced in as it is (not parsed again)."""
    body = b'{"signature":' + orjson.dumps(signature) + b',"event-data":' + event_json + b"}"
    return aiohttp.payload.BytesPayload(body, content_type="application/json")


def legacy_form(fields: list[tuple[str, str]], signature: Mapping[str, str]) -> aiohttp.FormData:
    """urlencoded, as Mailgun posts legacy hooks without attachments."""
    form = aiohttp.FormData()
    for name, value in [*fields, *signature.items()]:
        form.add_field(name, value)
    return form


def legacy_fields(name: str, event: Mapping[str, Any], domain: str) -> list[tuple[str, str]] | None:
    """The legacy hook `name`'s fields for `event` (a stored payload), signature left out;
    None when this hook does not post this event."""
    status = event.get("delivery-status") or {}
    code = int(status.get("code") or 0)
    reason = event.get("reason", "")
    if name == "bounce" and not (reason == "bounce" or (reason == "generic" and code >= 500)):
        return None
    if name == "drop" and reason not in _DROP_REASONS:
        return None
    headers = (event.get("message") or {}).get("headers") or {}
    message_id = headers.get("message-id", "")
    recipient = event.get("recipient", "")
    fields = [("event", LEGACY_EVENTS[name]), ("recipient", recipient), ("domain", domain)]
    if name in _WITH_HEADERS:
        fields.append(("message-headers", _message_headers(event, headers)))
        fields.append(("Message-Id", f"<{message_id}>"))
    else:
        fields.append(("message-id", message_id))
    fields.append(("X-Mailgun-Sid", _sending_id(message_id, recipient, domain)))
    if name == "bounce":
        fields += [("code", str(code)), ("error", status.get("message", "")),
                   ("notification", status.get("description", ""))]
    elif name == "drop":
        fields += [("reason", _DROP_REASONS[reason]), ("code", str(code)),
                   ("description", status.get("description") or status.get("message", ""))]
    if name in _TRACKING:
        fields += _tracking_fields(event)
    if name != "deliver":
        for campaign in event.get("campaigns") or ():
            fields += [("campaign-id", campaign["id"]), ("campaign-name", campaign["name"])]
        fields += [("tag", tag) for tag in event.get("tags") or ()]
        if (mailing_list := event.get("mailing-list")) is not None:
            fields.append(("mailing-list", mailing_list["address"]))
    for key, value in (event.get("user-variables") or {}).items():
        fields.append((key, value if isinstance(value, str) else orjson.dumps(value).decode()))
    return fields


def _tracking_fields(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    where = event.get("geolocation") or {}
    client = event.get("client-info") or {}
    fields = [("ip", event.get("ip", ""))]
    fields += [(key, where.get(key, "unknown")) for key in ("country", "region", "city")]
    fields += [(key, client.get(key, "unknown")) for key in
               ("user-agent", "device-type", "client-type", "client-name", "client-os")]
    if "url" in event:
        fields.append(("url", event["url"]))
    return fields


def _message_headers(event: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    """Mailgun's `message-headers`: a JSON list of [name, value] pairs."""
    pairs: list[list[str]] = []
    for key, shown in (("to", "To"), ("from", "From"), ("subject", "Subject")):
        if key in headers:
            pairs.append([shown, headers[key]])
    pairs.append(["Message-Id", f"<{headers.get('message-id', '')}>"])
    pairs += [["X-Mailgun-Tag", tag] for tag in event.get("tags") or ()]
    if variables := event.get("user-variables"):
        pairs.append(["X-Mailgun-Variables", orjson.dumps(variables).decode()])
    return orjson.dumps(pairs).decode()


def _sending_id(message_id: str, recipient: str, domain: str) -> str:
    """Mailgun's undocumented X-Mailgun-Sid names the message and recipient opaquely; ours is
    the same three facts, stable across retries."""
    return base64.b64encode(orjson.dumps([message_id, recipient, domain])).decode()


def sample_event(name: str, domain: str) -> Event:
    """What `PUT …/webhooks/<name>/test` posts: an event of the kind the hook fires on."""
    message = MessageSummary(
        headers=MessageHeaders(to="Alice <alice@example.com>", message_id=f"sample@{domain}",
                               from_=f"Sender <sender@{domain}>", subject="Webhook test"),
        size=512,
    )
    common: dict[str, Any] = {"recipient": "alice@example.com", "message": message,
                              "tags": ("webhook-test",), "user_variables": {"test": "yes"}}
    if name in ("opened", "open", "clicked", "click", "unsubscribed", "unsubscribe"):
        kind = {"open": "opened", "click": "clicked", "unsubscribe": "unsubscribed"}.get(name, name)
        return Event(
            kind,  # type: ignore[arg-type]
            ip="192.0.2.1", geolocation=Geolocation(country="US", region="CA", city="Oakland"),
            client_info=ClientInfo(client_type="browser", client_os="Linux",
                                   device_type="desktop", client_name="Firefox",
                                   user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
            url="https://example.com/" if kind == "clicked" else None,
            message=MessageSummary(headers=MessageHeaders(message_id=f"sample@{domain}")),
            recipient="alice@example.com", tags=("webhook-test",),
            user_variables={"test": "yes"},
        )
    if name in ("permanent_fail", "bounce"):
        status = DeliveryStatus(code=550, message="5.1.1 No such user",
                                description="Not delivering to a mailbox that does not exist",
                                enhanced_code="5.1.1", attempt_no=1)
        return Event("failed", severity="permanent", reason="bounce", delivery_status=status,
                     **common)
    if name == "drop":
        status = DeliveryStatus(code=605, description="Not delivering to previously bounced"
                                " address", attempt_no=1)
        return Event("failed", severity="permanent", reason="suppress-bounce",
                     delivery_status=status, **common)
    if name == "temporary_fail":
        status = DeliveryStatus(code=452, message="4.2.2 Mailbox full", enhanced_code="4.2.2",
                                attempt_no=1, retry_seconds=600)
        return Event("failed", severity="temporary", reason="generic", delivery_status=status,
                     **common)
    if name in ("complained", "spam"):
        return Event("complained", **common)
    if name == "accepted":
        return Event("accepted", method="http", **common)
    return Event("delivered", delivery_status=DeliveryStatus(code=250, message="OK"), **common)
