"""Signed tracking links: what a link says (which message, recipient and target) is inside the
link itself, with an HMAC, so a hit is attributed without a table of links, a link survives
the message it came from (it still redirects), and nobody can forge one: the click endpoint
can never be used as an open redirect, and an unsubscribe link unsubscribes only whom it was
made for.

A token is base64url(JSON + a 16-byte keyed BLAKE2b MAC: one C call, a few µs less than
HMAC-SHA256 for each of the dozens of links in a message). The JSON is
[version, kind, domain, message-id, recipient, issued (epoch s), extra], extra being the URL of
a click link, or the scope of an unsubscribe link ("*": the domain, ["tag", ...]: those tags,
"list:<address>": a mailing list).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

LIST_SCOPE = "list:"  # an unsubscribe link's scope prefix for a mailing list
LinkKind = Literal["o", "c", "u"]  # open pixel, click, unsubscribe: also the URL path segment
_VERSION = 1
_MAC_BYTES = 16
MAX_TOKEN_CHARS = 8192  # a longer path is not one of ours (and is not decoded)


@dataclass(frozen=True)
class Link:
    """What a verified token says."""

    kind: LinkKind
    domain: str
    message_id: str  # without angle brackets
    recipient: str
    issued: int
    url: str | None = None  # click links
    scope: str | list[str] | None = None  # unsubscribe links


class TrackingLinks:
    """Makes and reads tokens with the cluster's tracking secret (mta.account)."""

    def __init__(self, secret: bytes, lifetime_s: float) -> None:
        self._secret = secret
        self._lifetime_s = lifetime_s

    def _mac(self, payload: bytes) -> bytes:
        return hashlib.blake2b(payload, key=self._secret, digest_size=_MAC_BYTES).digest()

    def token(
        self,
        kind: LinkKind,
        domain: str,
        message_id: str,
        recipient: str,
        *,
        extra: Any = None,
        now: float | None = None,
    ) -> str:
        issued = int(time.time() if now is None else now)
        payload = orjson.dumps([_VERSION, kind, domain, message_id, recipient, issued, extra])
        raw = payload + self._mac(payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def read(self, kind: LinkKind, token: str, now: float | None = None) -> Link | None:
        """The link, or None when the token is not one of ours, was changed, is of another
        kind or has expired (all answered alike: 404, nothing recorded)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            version, found, domain, message_id, recipient, issued, extra = orjson.loads(payload)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            return None
        if version != _VERSION or found != kind:
            return None
        now = time.time() if now is None else now
        if now - issued > self._lifetime_s:
            return None
        return Link(
            kind=kind,
            domain=domain,
            message_id=message_id,
            recipient=recipient,
            issued=issued,
            url=extra if kind == "c" else None,
            scope=extra if kind == "u" else None,
        )


def link_base(public_url: str, api_public_url: str, web_scheme: str, web_prefix: str,
              domain: str) -> str:
    """Where a domain's tracking links point: [tracking] public_url, else [api] public_url,
    else the CNAME the domain publishes (<web_scheme>://<web_prefix>.<domain>)."""
    base = public_url or api_public_url
    if base:
        return base.rstrip("/")
    return f"{web_scheme}://{web_prefix}.{domain}"
