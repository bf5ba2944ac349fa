"""SMTP credentials: logins are full addresses on a domain of ours, passwords stored as scrypt.

scrypt is deliberately slow (tens of ms), so a successful check is remembered, keyed by an HMAC
of login, password and stored hash under a per-process secret: a relayhost that opens a
connection per message pays the cost once, a wrong password pays it every time, and a changed
password invalidates the memory (the stored hash is part of the key). Checks run on a few
threads of their own with a bounded wait list (`PasswordChecks`), so a flood of logins cannot
take the default thread pool that the rest of the server shares.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mta.config import SmtpConfig
from mta.store import Statement, Store

log = logging.getLogger("mta.credentials")

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD, MAX_PASSWORD = 5, 128
QUIET_LOG_S = 60.0  # one warning a minute while checks are turned away


class CredentialError(Exception):
    """A refused credentials operation; the text goes back to the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Credential:
    login: str
    domain: str
    created_at: float
    # the password it was checked with (a digest of the stored hash; empty when not checked):
    # `still_valid` compares it, so a changed password or a deleted login ends open sessions
    stamp: bytes = field(default=b"", repr=False, compare=False)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=64 * 1024 * 1024, dklen=32)


_DUMMY_HASH = hash_password(secrets.token_hex(8))  # checked for unknown logins: same cost


def full_login(login: str, domain: str) -> str:
    """`alice` and `alice@<domain>` name the same credential."""
    login = login.strip().lower()
    return login if "@" in login else f"{login}@{domain}"


class CheckRefused(Exception):
    """A password that was not checked (no leave for it, or too many checks waiting): a
    temporary condition for the client, never a wrong password."""


class PasswordChecks:
    """scrypt on `auth_check_threads` threads of its own; at most `auth_check_queue` checks
    wait for them, more are refused at once rather than queued without end."""

    def __init__(self, config: SmtpConfig) -> None:
        self._executor = ThreadPoolExecutor(
            config.auth_check_threads, thread_name_prefix="password-check"
        )
        self._room = config.auth_check_threads + config.auth_check_queue
        self.pending = 0  # running or waiting, until the thread is done with it
        self._logged = float("-inf")

    async def run(self, check: Callable[..., bool], *args: Any) -> bool:
        if self.pending >= self._room:
            now = time.monotonic()
            if now - self._logged >= QUIET_LOG_S:
                self._logged = now
                log.warning("%d password checks running or waiting: more get 454 for now",
                            self.pending)
            raise CheckRefused("too many password checks waiting")
        loop = asyncio.get_running_loop()
        future = self._executor.submit(check, *args)
        self.pending += 1
        # counted until the thread has finished, even when the session that asked is gone
        future.add_done_callback(lambda _: self._release(loop))
        return await asyncio.wrap_future(future)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody counts any more
            loop.call_soon_threadsafe(self._finished)

    def _finished(self) -> None:
        self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Credentials:
    """Owns the credentials table."""

    def __init__(self, store: Store, checks: PasswordChecks) -> None:
        self._store = store
        self._hashes: dict[str, tuple[str, str]] = {}  # login -> (domain, hash)
        self._cache_version = -1
        self._verified: set[bytes] = set()
        self._secret = secrets.token_bytes(32)
        self.checks = checks

    async def _refresh(self) -> None:
        version = self._store.admin_version()
        if version == self._cache_version:
            return
        rows = await self._store.fetchall("SELECT login, domain, password_hash FROM credentials")
        self._hashes = {r["login"]: (r["domain"], r["password_hash"]) for r in rows}
        self._cache_version = version

    async def verify(self, login: str, password: str) -> Credential | None:
        """The credential if the password is right: remembered, or checked."""
        return await self.remembered(login, password) or await self.check(login, password)

    async def remembered(self, login: str, password: str) -> Credential | None:
        """The credential if this password was checked right before (an HMAC, no scrypt)."""
        login, domain, stored, mark = await self._lookup(login, password)
        return Credential(login, domain, 0.0, _stamp(stored)) if mark in self._verified else None

    async def check(self, login: str, password: str) -> Credential | None:
        """The credential if the password is right, by scrypt on `checks` (CheckRefused when
        too many wait); an unknown login costs the same, so timing does not tell it."""
        login, domain, stored, mark = await self._lookup(login, password)
        if not await self.checks.run(check_password, password, stored) or not domain:
            return None
        if len(self._verified) > 100_000:
            self._verified.clear()
        self._verified.add(mark)
        return Credential(login, domain, 0.0, _stamp(stored))

    async def still_valid(self, credential: Credential) -> bool:
        """Whether the login still exists, on its domain, with the password it was checked
        with: an SMTP session asks before each message, so deleting a login or changing its
        password (on any node: the cache follows `admin_version`) reaches open sessions."""
        await self._refresh()
        domain, stored = self._hashes.get(credential.login, ("", ""))
        return bool(domain) and domain == credential.domain and hmac.compare_digest(
            _stamp(stored), credential.stamp
        )

    async def _lookup(self, login: str, password: str) -> tuple[str, str, str, bytes]:
        """Login as stored, its domain and hash (a dummy for unknown logins), and the mark
        a right check of this password leaves."""
        await self._refresh()
        login = login.strip().lower()
        domain, stored = self._hashes.get(login, ("", _DUMMY_HASH))
        mark = hmac.new(self._secret, f"{login}\0{password}\0{stored}".encode(),
                        hashlib.sha256).digest()
        return login, domain, stored, mark

    async def create(self, domain: str, login: str, password: str) -> Credential:
        login = full_login(login, domain)
        local, _, login_domain = login.rpartition("@")
        if not local or login_domain != domain or any(c.isspace() for c in login):
            raise CredentialError(f"login must be an address on {domain}: {login}")
        check_password_length(password)
        credential = Credential(login, domain, time.time())
        hashed = await asyncio.to_thread(hash_password, password)
        # a login taken already comes back with no row, the same way on both engines
        created = await self._store.write_returning(
            "INSERT INTO credentials (login, domain, password_hash, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (login) DO NOTHING RETURNING login",
            (login, domain, hashed, credential.created_at),
        )
        if not created:
            raise CredentialError(f"Credentials already exist: {login}")
        return credential

    async def list(self, domain: str) -> list[Credential]:
        rows = await self._store.fetchall(
            "SELECT login, domain, created_at FROM credentials WHERE domain = ?"
            " ORDER BY created_at, login", (domain,)
        )
        return [Credential(r["login"], r["domain"], r["created_at"]) for r in rows]

    async def set_password(self, domain: str, login: str, password: str) -> None:
        login = full_login(login, domain)
        check_password_length(password)
        await self._require(domain, login)
        hashed = await asyncio.to_thread(hash_password, password)
        await self._store.write(Statement(
            "UPDATE credentials SET password_hash = ? WHERE login = ? AND domain = ?",
            [(hashed, login, domain)],
        ))

    async def delete(self, domain: str, login: str) -> str:
        login = full_login(login, domain)
        await self._require(domain, login)
        await self._store.write(Statement(
            "DELETE FROM credentials WHERE login = ? AND domain = ?", [(login, domain)]
        ))
        return login

    async def delete_all(self, domain: str) -> int:
        count = len(await self.list(domain))
        await self._store.write(Statement("DELETE FROM credentials WHERE domain = ?", [(domain,)]))
        return count

    async def _require(self, domain: str, login: str) -> None:
        row = await self._store.fetchone(
            "SELECT 1 FROM credentials WHERE login = ? AND domain = ?", (login, domain)
        )
        if row is None:
            raise CredentialError("Credentials not found", 404)


def _stamp(stored: str) -> bytes:
    return hashlib.sha256(stored.encode()).digest()[:16]


def check_password_length(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise CredentialError(
            f"Password length must be between {MIN_PASSWORD} and {MAX_PASSWORD} characters"
        )
