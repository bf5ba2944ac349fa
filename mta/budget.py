"""Bounding what requests do: a byte budget for how much message data is being worked on at
once, and heavy work kept off the event loop.

Accepting a message holds it whole in memory a few times over (parsed, rebuilt, handed to the
store), so the number of messages in that state is bounded by their bytes, not their count:
many small ones go through together, big ones take turns. Big waiters are served in order (one
is not starved by a stream of others), and a small request that fits goes past them: a 1 KB
send does not wait behind a queue of 25 MB messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")


async def off_loop_if(heavy: bool, work: Callable[[], T]) -> T:
    """`work()`, in a thread when it is heavy: other clients go on meanwhile (a thread hop
    costs more than light work does)."""
    return await asyncio.to_thread(work) if heavy else work()


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.small = limit // 64  # at most this much may pass waiting big ones
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Wait until `size` bytes (at most the whole budget) fit, hold them while inside."""
        size = max(0, min(size, self.limit))
        fits = self.used + size <= self.limit
        if not fits or (self._waiters and size > self.small):
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
        """Serve waiters in order while they fit; then the small ones that fit, past a big one
        that does not yet."""
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            self._grant(self._waiters.popleft())
        for entry in [e for e in self._waiters if e[0] <= self.small]:
            if self.used + entry[0] <= self.limit:
                self._waiters.remove(entry)
                self._grant(entry)

    def _grant(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        size, future = entry
        self.used += size
        future.set_result(None)
