"""How long counts are kept (the manual: tag stats at least 6 months). Only stats tables are
purged here: mail waiting in the queue, and events, have their own retention."""

from __future__ import annotations

import time

from mta.config import StatsConfig
from mta.store import Statement, Store


async def purge_expired(store: Store, config: StatsConfig, now: float | None = None) -> None:
    """Hour counters and first-hit marks past `hourly_retention_days`, day counters past
    `daily_retention_days`, campaign report rows past theirs; month counters stay."""
    now = time.time() if now is None else now
    hours = now - config.hourly_retention_days * 86400
    days = now - config.daily_retention_days * 86400
    campaigns = now - config.campaign_retention_days * 86400
    deliveries = now - config.campaign_delivered_retention_days * 86400
    await store.write(
        Statement(
            "DELETE FROM stats_counters WHERE resolution = ? AND bucket < ?",
            [("hour", int(hours)), ("day", int(days))],
        ),
        Statement("DELETE FROM stats_uniques WHERE ts < ?", [(hours,)]),
        Statement("DELETE FROM campaign_events WHERE ts < ?", [(campaigns,)]),
        Statement(
            "DELETE FROM campaign_events WHERE event = 'delivered' AND ts < ?", [(deliveries,)]
        ),
    )
