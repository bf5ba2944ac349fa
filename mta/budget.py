"""A byte budget shared by requests: how much message data is being worked on at once.

Accepting a message holds it whole in memory a few times over (parsed, rebuilt, handed to the
store), so the number of messages in that state is bounded by their bytes, not their count:
many small ones go through together, big ones take turns. Waiters are served in order, so a big
message is not starved by a stream of small ones.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Wait until `size` bytes (at most the whole budget) fit, hold them while inside."""
        size = max(0, min(size, self.limit))
        if self._waiters or self.used + size > self.limit:
            future = asyncio.get_running_loop().create_future()
            entry = (size, future)
            self._waiters.append(entry)
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self.used -= size  # granted just as we were cancelled: give it back
                else:
                    self._waiters.remove(entry)
                self._wake()
                raise
        else:
            self.used += size
        try:
            yield
        finally:
            self.used -= size
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if self.used + size > self.limit:
                return
            self._waiters.popleft()
            self.used += size
            future.set_result(None)
