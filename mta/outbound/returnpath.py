"""Return-path (envelope sender) addresses that lead an asynchronous bounce back to its recipient.

`bounce+<recipient id>.<tag>@<sending domain>`: the id names the queued recipient row, the tag
(an HMAC under a secret kept in the store) stops anyone from forging bounces for other rows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from mta.store import Statement, Store

_SECRET_NAME = "return_path"
_TAG_LENGTH = 10
_PATTERN = re.compile(r"bounce\+([0-9a-z]+)\.([0-9a-f]+)@(.+)", re.IGNORECASE)
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = _DIGITS[digit] + out
        if not number:
            return out


async def load_secret(store: Store) -> bytes:
    """The tag secret, made on first use and kept, so that tags outlive restarts."""
    await store.write(
        Statement(
            "INSERT OR IGNORE INTO server_secrets (name, value) VALUES (?, ?)",
            [(_SECRET_NAME, secrets.token_bytes(32))],
        )
    )
    row = await store.fetchone("SELECT value FROM server_secrets WHERE name = ?", (_SECRET_NAME,))
    assert row is not None
    return bytes(row["value"])


class ReturnPaths:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _tag(self, rid: str, domain: str) -> str:
        digest = hmac.new(self._secret, f"{rid}@{domain.lower()}".encode(), hashlib.sha256)
        return digest.hexdigest()[:_TAG_LENGTH]

    def address(self, recipient_id: int, domain: str) -> str:
        rid = _base36(recipient_id)
        return f"bounce+{rid}.{self._tag(rid, domain)}@{domain}"

    def recipient_id(self, address: str) -> int | None:
        """The recipient row a bounce address stands for; None if it is not one of ours."""
        match = _PATTERN.fullmatch(address.strip())
        if match is None:
            return None
        rid, tag, domain = match.group(1).lower(), match.group(2).lower(), match.group(3)
        if not hmac.compare_digest(tag, self._tag(rid, domain)):
            return None
        return int(rid, 36)
