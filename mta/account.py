"""Account-wide settings: the HTTP signing key and the tracking-link secret.

One signing key signs everything we POST to users' applications (webhooks, route forwards,
store notifications), as Mailgun's account "HTTP webhook signing key" does: a receiver
configures one key. It is made on first use, shown with `GET /v5/accounts/http_signing_key`
or `mta signing-key`, and rotated with POST / `--rotate` (every node picks the new one up
through the admin version). The tracking secret keys the MAC on open, click and unsubscribe
links; it never leaves the store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from mta import tokens
from mta.store import Statement, Store

SIGNING_KEY = "http_signing_key"
TRACKING_SECRET = "tracking_secret"

_CREATE = "INSERT INTO account_settings (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING"


def signed_fields(signing_key: str) -> dict[str, str]:
    """timestamp, a fresh 50-character token and their HMAC-SHA256, as Mailgun signs a post
    (and as receivers' verify() checks it)."""
    timestamp = str(int(time.time()))
    token = tokens.token_hex(25)
    signature = hmac.new(
        signing_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256
    ).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": signature}


class Account:
    """Owns the account_settings table; values are cached until admin data changes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, str] = {}
        self._cache_version = -1

    async def _value(self, name: str, make: str) -> str:
        version = self._store.admin_version()
        if version != self._cache_version:
            rows = await self._store.fetchall("SELECT name, value FROM account_settings")
            self._cache = {r["name"]: r["value"] for r in rows}
            self._cache_version = version
        value = self._cache.get(name)
        if value is None:
            # nodes starting together may race: the first insert wins, the others read it
            await self._store.write(Statement(_CREATE, [(name, make)]))
            row = await self._store.fetchone(
                "SELECT value FROM account_settings WHERE name = ?", (name,)
            )
            assert row is not None
            value = self._cache[name] = row["value"]
        return value

    async def signing_key(self) -> str:
        return await self._value(SIGNING_KEY, _new_signing_key())

    async def rotate_signing_key(self) -> str:
        key = _new_signing_key()
        await self._store.write(
            Statement(
                "INSERT INTO account_settings (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [(SIGNING_KEY, key)],
            )
        )
        self._cache[SIGNING_KEY] = key
        return key

    async def tracking_secret(self) -> bytes:
        return bytes.fromhex(await self._value(TRACKING_SECRET, secrets.token_hex(32)))


def _new_signing_key() -> str:
    """32 hex characters, the shape of Mailgun's signing keys."""
    return secrets.token_hex(16)
