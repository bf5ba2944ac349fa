"""A destination's limits for the whole site: connections open to it and its pace.

Profiles say "at most N connections to gmail, M messages a minute": the site's, not each
node's. One node (the embedded SQLite store) keeps them in memory, as the scheduler's own
counters already do. Several nodes (PostgreSQL) count them in the store: a connection holds a
numbered slot row while it is open (renewed while used; a dead node's slots expire), and a
paced destination's next free send time is one row every node moves forward.
"""

from __future__ import annotations

import time
from typing import Protocol

from mta.store import Statement, Store

# a free slot number below the limit, taken in one statement; the number is drawn at random
# among the free ones so that connections opening together rarely want the same one (the
# loser of such a race gets no row and draws again)
_TAKE_SLOT = (
    "WITH RECURSIVE n(slot) AS (SELECT 0 UNION ALL SELECT slot + 1 FROM n WHERE slot + 1 < ?4)"
    " INSERT INTO site_slots (site, slot, node, until)"
    " SELECT ?1, slot, ?2, ?3 FROM n WHERE NOT EXISTS (SELECT 1 FROM site_slots s"
    " WHERE s.site = ?1 AND s.slot = n.slot AND s.until > ?5) ORDER BY random() LIMIT 1"
    " ON CONFLICT (site, slot) DO UPDATE SET node = excluded.node, until = excluded.until"
    " WHERE site_slots.until <= ?5 RETURNING slot"
)
_ANY_FREE = (
    "SELECT 1 AS free WHERE (SELECT count(*) FROM site_slots WHERE site = ?1 AND until > ?3) < ?2"
)
SLOT_DRAWS = 5  # tries when another connection took the drawn slot first
_RENEW_SLOT = "UPDATE site_slots SET until = ? WHERE site = ? AND slot = ? AND node = ?"
_FREE_SLOT = "DELETE FROM site_slots WHERE site = ? AND slot = ? AND node = ?"
# reserve the next send time: max(next_at, now) + interval, returned
_RESERVE = (
    "INSERT INTO site_pace (site, next_at)"
    " VALUES (?1, CAST(?2 AS DOUBLE PRECISION) + CAST(?3 AS DOUBLE PRECISION))"
    " ON CONFLICT (site) DO UPDATE SET next_at = CASE WHEN site_pace.next_at > ?2"
    " THEN site_pace.next_at ELSE ?2 END + ?3 RETURNING next_at"
)


class Paced(Protocol):
    key: str
    interval: float

    def slot_wait(self) -> float: ...


class SiteLimits(Protocol):
    async def take_connection(self, site: str, limit: int) -> int | None:
        """A connection slot to the site, or None when the site has `limit` open already."""

    async def keep_connection(self, site: str, slot: int) -> None:
        """The connection is still in use (before each message)."""

    async def free_connection(self, site: str, slot: int) -> None: ...

    async def pace(self, site: Paced) -> float:
        """Seconds to wait before sending the next message to a paced site."""

    async def release_own(self) -> int:
        """At start: free the slots this node's previous run left behind (it was killed);
        how many."""


class LocalLimits:
    """One node: the scheduler's in-memory counts are the site's."""

    async def take_connection(self, site: str, limit: int) -> int | None:
        return 0

    async def keep_connection(self, site: str, slot: int) -> None:
        return None

    async def free_connection(self, site: str, slot: int) -> None:
        return None

    async def pace(self, site: Paced) -> float:
        return site.slot_wait()

    async def release_own(self) -> int:
        return 0


class SharedLimits:
    """Several nodes on one database: the counts live in the store."""

    def __init__(self, store: Store, slot_lease_s: float) -> None:
        self._store = store
        self._lease_s = slot_lease_s
        self._renewed: dict[tuple[str, int], float] = {}

    async def take_connection(self, site: str, limit: int) -> int | None:
        for _ in range(SLOT_DRAWS):
            now = time.time()
            rows = await self._store.write_returning(
                _TAKE_SLOT, (site, self._store.node_id, now + self._lease_s, limit, now)
            )
            if rows:
                slot = int(rows[0]["slot"])
                self._renewed[(site, slot)] = now
                return slot
            if not await self._store.fetchone(_ANY_FREE, (site, limit, now)):
                return None
        return None

    async def keep_connection(self, site: str, slot: int) -> None:
        now = time.time()
        if now - self._renewed.get((site, slot), 0.0) < self._lease_s / 3:
            return
        self._renewed[(site, slot)] = now
        await self._store.write(
            Statement(_RENEW_SLOT, [(now + self._lease_s, site, slot, self._store.node_id)])
        )

    async def free_connection(self, site: str, slot: int) -> None:
        self._renewed.pop((site, slot), None)
        await self._store.write(Statement(_FREE_SLOT, [(site, slot, self._store.node_id)]))

    async def pace(self, site: Paced) -> float:
        if not site.interval:
            return 0.0
        now = time.time()
        rows = await self._store.write_returning(_RESERVE, (site.key, now, site.interval))
        return max(0.0, float(rows[0]["next_at"]) - site.interval - now)

    async def release_own(self) -> int:
        # one server per node id on a database (its advisory lock): the slots named after
        # this node are a killed run's, not a live connection's; left alone, they would keep
        # the restarted node from its busiest destinations until their lease ran out
        rows = await self._store.write_returning(
            "DELETE FROM site_slots WHERE node = ? RETURNING slot", (self._store.node_id,)
        )
        return len(rows)


def site_limits(store: Store, slot_lease_s: float) -> SiteLimits:
    """In memory for the one-node engine, in the store for the several-node one."""
    if store.dialect == "sqlite":
        return LocalLimits()
    return SharedLimits(store, slot_lease_s)
