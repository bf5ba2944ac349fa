"""Periodic work (purges, retention) done once per cluster, by whichever node comes first.

Every node ticks; `claim` lets one node through per period: a single upsert moves the
period's next start forward only if it was due, so two nodes can never both see it due.
"""

from __future__ import annotations

import time

from mta.store import Store

_CLAIM = (
    "INSERT INTO periodic_runs (name, next_at, node) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (name) DO UPDATE SET next_at = excluded.next_at, node = excluded.node"
    " WHERE periodic_runs.next_at <= ?4 RETURNING name"
)


async def claim(store: Store, name: str, every_s: float, now: float | None = None) -> bool:
    """True for the one caller (across every node) that should run `name` now."""
    now = time.time() if now is None else now
    rows = await store.write_returning(_CLAIM, (name, now + every_s, store.node_id, now))
    return bool(rows)
