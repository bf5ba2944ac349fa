"""Per-address protection for the SMTP listeners: concurrent connections and AUTH failures.

Kept in memory (a restart forgets blocks, which is acceptable: they are short) and bounded, so
a scan from many addresses cannot grow it without limit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from mta.config import SmtpConfig

MAX_TRACKED_ADDRESSES = 100_000


class Guard:
    def __init__(self, config: SmtpConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._connections: dict[str, int] = {}
        self._total = 0
        self._failures: dict[str, deque[float]] = {}
        self._blocked_until: dict[str, float] = {}

    def connect(self, address: str) -> str | None:
        """Count a new session; a reply refusing it when over a limit or blocked."""
        if self.blocked(address):
            return "421 4.7.0 Too many authentication failures from your address, try later"
        if self._total >= self._config.max_connections:
            return "421 4.3.2 Too many connections, try again later"
        if self._connections.get(address, 0) >= self._config.max_connections_per_ip:
            return "421 4.7.0 Too many connections from your address, try again later"
        self._connections[address] = self._connections.get(address, 0) + 1
        self._total += 1
        return None

    def disconnect(self, address: str) -> None:
        count = self._connections.get(address, 0) - 1
        if count <= 0:
            self._connections.pop(address, None)
        else:
            self._connections[address] = count
        self._total = max(0, self._total - 1)

    def blocked(self, address: str) -> bool:
        until = self._blocked_until.get(address)
        if until is None:
            return False
        if self._clock() >= until:
            del self._blocked_until[address]
            return False
        return True

    def auth_failed(self, address: str) -> bool:
        """Record a failed AUTH; True when the address is now blocked."""
        now = self._clock()
        window = self._config.auth_failure_window_s
        failures = self._failures.get(address)
        if failures is None:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                self._forget_stale(now - window)
            failures = self._failures[address] = deque()
        failures.append(now)
        while failures and failures[0] < now - window:
            failures.popleft()
        if len(failures) >= self._config.auth_failures:
            self._blocked_until[address] = now + self._config.auth_block_s
            del self._failures[address]
            return True
        return False

    def _forget_stale(self, horizon: float) -> None:
        for address in [a for a, f in self._failures.items() if not f or f[-1] < horizon]:
            del self._failures[address]
        if len(self._failures) >= MAX_TRACKED_ADDRESSES:
            self._failures.clear()
