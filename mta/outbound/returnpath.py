"""Return-path (envelope sender) addresses that lead an asynchronous bounce back to its recipient.

`bounce+<recipient id>.<tag>@<sending domain>`: the id names the recipient row, the tag (an HMAC
of id, message and domain under a secret kept in the store) stops anyone from forging bounces
for other rows. Inbound mail (DSNs to these addresses) reads them with `parse` and `genuine`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from mta.store import Statement, Store

_SECRET_NAME = "return_path"
# 80 bits in hex: forging a bounce for someone else's row means guessing it, and each DSN
# may try only a few (mta.inbound.reports), so that is out of reach; the local part stays
# well under 64 characters
_TAG_LENGTH = 20
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
            "INSERT INTO server_secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(_SECRET_NAME, secrets.token_bytes(32))],
        )
    )
    row = await store.fetchone("SELECT value FROM server_secrets WHERE name = ?", (_SECRET_NAME,))
    assert row is not None
    return bytes(row["value"])


@dataclass(frozen=True)
class BounceAddress:
    """What a return-path address claims: the recipient row it was made for."""

    recipient_id: int
    tag: str
    domain: str


class ReturnPaths:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _tag(self, rid: str, message_key: str, domain: str) -> str:
        # the message key makes a tag unique even if a purged table hands out an id again
        text = f"{rid}.{message_key}@{domain.lower()}"
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:_TAG_LENGTH]

    def address(self, recipient_id: int, message_key: str, domain: str) -> str:
        rid = _base36(recipient_id)
        return f"bounce+{rid}.{self._tag(rid, message_key, domain)}@{domain}"

    @staticmethod
    def parse(address: str) -> BounceAddress | None:
        """The claim of an address in our bounce form; check it with `genuine`."""
        match = _PATTERN.fullmatch(address.strip())
        if match is None:
            return None
        return BounceAddress(int(match.group(1), 36), match.group(2).lower(), match.group(3))

    def genuine(self, claim: BounceAddress, message_key: str) -> bool:
        """Whether we made this address for that recipient row of that message."""
        expected = self._tag(_base36(claim.recipient_id), message_key, claim.domain)
        return hmac.compare_digest(claim.tag, expected)
