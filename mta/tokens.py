"""Random tokens for the ids made on every message (message ids, storage keys, MIME boundaries,
event ids), read from the OS's CSPRNG in blocks.

`secrets` makes one getrandom() call per token; each call lets go of the GIL and waits to get
it back behind the signing and store threads, which showed as 9 % of the event loop's time when
delivering. One call per 4 KB serves about 250 tokens. Secrets that guard something (API keys,
password salts) still come from `secrets` directly.
"""

from __future__ import annotations

import base64
import os
import threading

_BLOCK = 4096
_lock = threading.Lock()
_pool = b""


def _forget_pool() -> None:
    global _pool
    _pool = b""  # a forked child must not hand out its parent's tokens again


os.register_at_fork(after_in_child=_forget_pool)


def token_bytes(n: int) -> bytes:
    global _pool
    with _lock:
        if len(_pool) < n:
            _pool = os.urandom(max(_BLOCK, n))
        out, _pool = _pool[:n], _pool[n:]
    return out


def token_hex(n: int) -> str:
    return token_bytes(n).hex()


def token_urlsafe(n: int) -> str:
    return base64.urlsafe_b64encode(token_bytes(n)).rstrip(b"=").decode("ascii")
