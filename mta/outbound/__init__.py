"""Outbound delivery: what was accepted leaves here for the recipients' MX hosts.

`Outbound` wires the parts (queue scheduler, MX resolver, SMTP connector, shaping and reply
policies, return paths) and runs them beside the listeners in the one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mta.config import Config
from mta.dns import Resolver
from mta.domains import Domains
from mta.outbound.client import Connector, Timeouts
from mta.outbound.mx import MxResolver
from mta.outbound.policy import Classifier, load_shaping
from mta.outbound.returnpath import ReturnPaths
from mta.outbound.scheduler import DeliveryTimings, Scheduler
from mta.queue.expansion import Expander
from mta.store import Store, periodic
from mta.tracking.copies import Tracker

log = logging.getLogger("mta.outbound")

PURGE_INTERVAL_S = 3600
PERIODIC_TICK_S = 60  # how often each node asks whether a periodic job is due


class Outbound:
    def __init__(
        self,
        config: Config,
        store: Store,
        domains: Domains,
        resolver: Resolver,
        classifier: Classifier,
        return_paths: ReturnPaths,
        tracker: Tracker,
        expander: Expander,
        timings: DeliveryTimings | None = None,
    ) -> None:
        self._config = config
        self._timings = timings  # metrics, when they are on
        self._expander = expander  # sends to lists become members' rows, then delivered here
        self._tracker = tracker
        self._store = store
        self._domains = domains
        self._resolver = resolver
        self._classifier = classifier
        self._return_paths = return_paths
        # read and checked now, so that a policy mistake stops the server before it listens
        self._shaping = load_shaping(config.outbound.shaping_file)
        self.scheduler: Scheduler | None = None
        self._purger: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._store.hold_node_name()
        cfg = self._config.outbound
        mx = MxResolver(self._config, self._resolver)
        connector = Connector(
            mx,
            cfg.helo_name or self._config.server.hostname,
            Timeouts(cfg.connect_timeout_s, cfg.command_timeout_s, cfg.data_timeout_s),
            cfg.tls_ca_file,
        )
        self.scheduler = Scheduler(
            self._config,
            self._store,
            self._domains,
            mx,
            connector,
            self._shaping,
            self._classifier,
            self._return_paths,
            self._tracker,
            self._timings,
        )
        await self.scheduler.start()
        await self._expander.start()
        self._purger = asyncio.create_task(self._purge_loop(), name="outbound-purge")
        target = cfg.relay or "recipients' MX hosts"
        log.info("outbound delivery running (to %s)", target)

    async def _purge_loop(self) -> None:
        """Every node ticks; one node of the cluster purges per period."""
        assert self.scheduler is not None
        while True:
            try:
                if await periodic.claim(self._store, "outbound-purge", PURGE_INTERVAL_S):
                    await self.scheduler.purge_finished()
            except Exception:
                log.exception("purging finished messages failed")
            await asyncio.sleep(PERIODIC_TICK_S)

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        await self._expander.stop()
        if self.scheduler is not None:
            scheduler, self.scheduler = self.scheduler, None
            await scheduler.stop()

