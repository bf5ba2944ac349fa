"""Control panel sign-ins: who may sign in, their sessions, and the throttle on failures.

A session is a random cookie; the store keeps only its SHA-256 (a leaked database opens no
session) and every node reads the same table, so a sign-in works behind a load balancer. A
session ends after `panel.session_hours` without use, on sign-out, or when the API key it
signed in with is revoked. The CSRF token of a session is an HMAC of its cookie: nothing more
to store, and it cannot be derived without the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from mta.config import PanelConfig
from mta.credentials import PasswordChecks, check_password, hash_password
from mta.keys import ApiKeys
from mta.store import Statement, Store

ADMIN_PASSWORD = "panel_admin_password"  # account_settings: its scrypt hash
ADMIN = "admin"  # who a password sign-in is
TOUCH_EVERY_S = 60.0  # last_used is written at most this often per session
FAILURE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Session:
    token: str
    who: str  # "admin", or "key <id>" for a sign-in with an API key
    csrf: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def csrf_token(token: str) -> str:
    return hmac.new(token.encode(), b"mta panel csrf", hashlib.sha256).hexdigest()


async def set_admin_password(store: Store, password: str) -> None:
    """Store the admin password's hash (`mta admin password`)."""
    await store.write(
        Statement(
            "INSERT INTO account_settings (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [(ADMIN_PASSWORD, hash_password(password))],
        )
    )


class SignInThrottle:
    """At most `limit` failed sign-ins per address per minute, on this node."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - FAILURE_WINDOW_S:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def held(self, address: str) -> bool:
        return len(self._recent(address, time.monotonic())) >= self._limit

    def failed(self, address: str) -> None:
        now = time.monotonic()
        self._recent(address, now)
        if len(self._failures) > 100_000:  # a spray from many addresses: forget the oldest
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(now)


class Sessions:
    """Owns the panel_sessions table."""

    def __init__(
        self, store: Store, keys: ApiKeys, checks: PasswordChecks, config: PanelConfig
    ) -> None:
        self._store = store
        self._keys = keys
        self._checks = checks
        self._lifetime = config.session_hours * 3600
        self.throttle = SignInThrottle(config.sign_in_failures)

    async def sign_in(self, secret: str) -> Session | None:
        """A primary API key, or the admin password; domain sending keys cannot sign in."""
        secret = secret.strip()
        if not secret:
            return None
        key = await self._keys.authenticate(secret)
        if key is not None:
            return None if key.domain is not None else await self._start(f"key {key.id}", key.id)
        row = await self._store.fetchone(
            "SELECT value FROM account_settings WHERE name = ?", (ADMIN_PASSWORD,)
        )
        if row is None or not await self._checks.run(check_password, secret, row["value"]):
            return None
        return await self._start(ADMIN, None)

    async def _start(self, who: str, key_id: str | None) -> Session:
        token = secrets.token_urlsafe(32)
        now = time.time()
        await self._store.write(
            Statement(
                "INSERT INTO panel_sessions (token_hash, who, key_id, created_at, last_used)"
                " VALUES (?, ?, ?, ?, ?)",
                [(_digest(token), who, key_id, now, now)],
            ),
            Statement("DELETE FROM panel_sessions WHERE last_used < ?", [(now - self._lifetime,)]),
        )
        return Session(token, who, csrf_token(token))

    async def find(self, token: str) -> Session | None:
        """The live session this cookie names; its use keeps it alive."""
        if not token or len(token) > 100:
            return None
        row = await self._store.fetchone(
            "SELECT who, key_id, last_used FROM panel_sessions WHERE token_hash = ?",
            (_digest(token),),
        )
        now = time.time()
        if row is None or row["last_used"] < now - self._lifetime:
            return None
        if row["key_id"] is not None and not await self._keys.is_active(row["key_id"]):
            return None
        if row["last_used"] < now - TOUCH_EVERY_S:
            await self._store.write(
                Statement(
                    "UPDATE panel_sessions SET last_used = ? WHERE token_hash = ?",
                    [(now, _digest(token))],
                )
            )
        return Session(token, row["who"], csrf_token(token))

    async def end(self, token: str) -> None:
        await self._store.write(
            Statement("DELETE FROM panel_sessions WHERE token_hash = ?", [(_digest(token),)])
        )
