"""Tags: made by the sends that use them (`o:tag`, `X-Mailgun-Tag`), within a per-domain limit.

A tag is counted (stats, aggregates) only while it is one of its domain's tags: a send's tags
beyond the limit still travel in its events, but make no new counters. Deleting a tag keeps
its counters (Mailgun's "stats are kept"); a later send with it makes it again.
"""

from __future__ import annotations

from collections.abc import Sequence

from mta.store import Statement

_SEEN = "UPDATE tags SET last_seen = ?1 WHERE domain = ?2 AND tag = ?3 AND last_seen < ?1"
_NEW = (
    "INSERT INTO tags (domain, tag, description, first_seen, last_seen)"
    " SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), '', CAST(?3 AS DOUBLE PRECISION),"
    " CAST(?3 AS DOUBLE PRECISION)"
    " WHERE NOT EXISTS (SELECT 1 FROM tags WHERE domain = ?1 AND tag = ?2)"
    " AND (SELECT count(*) FROM tags WHERE domain = ?1) < ?4"
    " ON CONFLICT (domain, tag) DO NOTHING"
)


def seen_statements(domain: str, tags: Sequence[str], now: float, limit: int) -> list[Statement]:
    """A send's tags, noted in its accept transaction (before its events are counted)."""
    return [
        Statement(_SEEN, [(now, domain, tag) for tag in tags]),
        Statement(_NEW, [(domain, tag, now, limit) for tag in tags]),
    ]
