"""Prometheus metrics (issue 14): one registry per node, fed by commit observers and read at
scrape time."""

from __future__ import annotations

from mta.config import Config
from mta.store import Store


class Metrics:
    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._store = store
