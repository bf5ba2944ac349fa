"""API keys. Only a SHA-256 digest of each key is stored.

Keys are 128-bit random secrets, so a fast digest is enough (no password stretching needed)
and look-ups go by digest: a timing difference can only reveal digest prefixes, which say
nothing about any key.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from mta.store import Statement, Store


@dataclass(frozen=True)
class ApiKey:
    id: str
    domain: str | None  # None: primary key (every endpoint); else a sending key for that domain
    description: str
    created_at: float
    revoked_at: float | None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class ApiKeys:
    """Owns the api_keys table."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._active: dict[bytes, ApiKey] = {}
        self._cache_version = -1

    async def _refresh(self) -> None:
        version = self._store.admin_version()
        if version == self._cache_version:
            return
        rows = await self._store.fetchall(
            "SELECT id, secret_hash, domain, description, created_at, revoked_at"
            " FROM api_keys WHERE revoked_at IS NULL"
        )
        self._active = {
            bytes(r["secret_hash"]): ApiKey(
                r["id"], r["domain"], r["description"], r["created_at"], r["revoked_at"]
            )
            for r in rows
        }
        self._cache_version = version

    async def is_active(self, key_id: str) -> bool:
        """The key exists and is not revoked (a panel session signed in with it lives on)."""
        await self._refresh()
        return any(key.id == key_id for key in self._active.values())

    async def authenticate(self, secret: str) -> ApiKey | None:
        await self._refresh()
        return self._active.get(digest(secret))

    async def create(
        self, *, domain: str | None = None, description: str = ""
    ) -> tuple[ApiKey, str]:
        """A new key; the secret is returned once and never stored."""
        secret = "key-" + secrets.token_hex(16)
        key = ApiKey(secrets.token_hex(4), domain, description, time.time(), None)
        await self._store.write(
            Statement(
                "INSERT INTO api_keys (id, secret_hash, domain, description, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(key.id, digest(secret), key.domain, key.description, key.created_at)],
            )
        )
        return key, secret

    async def list(self) -> list[ApiKey]:
        rows = await self._store.fetchall(
            "SELECT id, domain, description, created_at, revoked_at FROM api_keys"
            " ORDER BY created_at"
        )
        return [
            ApiKey(r["id"], r["domain"], r["description"], r["created_at"], r["revoked_at"])
            for r in rows
        ]

    @staticmethod
    def revoke_domain(domain: str, now: float) -> Statement:
        """Revokes every sending key of a domain being removed (written with its removal: a
        key must not outlive its domain, nor work again if the name is added later)."""
        return Statement(
            "UPDATE api_keys SET revoked_at = ? WHERE domain = ? AND revoked_at IS NULL",
            [(now, domain)],
        )

    async def revoke(self, key_id: str) -> bool:
        row = await self._store.fetchone(
            "SELECT id FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
        )
        if row is None:
            return False
        await self._store.write(
            Statement("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [(time.time(), key_id)])
        )
        return True
