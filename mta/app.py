"""Runs one node: starts the parts mta.services builds, in order, and stops them in reverse.

Every node ticks its periodic work (purges); `periodic.claim` lets one node of the cluster run
each job per period, so several nodes on one database do not all purge the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from mta.api import build_app
from mta.config import Config, parse_listen
from mta.events import purge_expired
from mta.outbound import Outbound
from mta.services import Services, build_outbound, open_services, smtp_listeners
from mta.smtp import SmtpListeners, guard
from mta.stats import retention as stats_retention
from mta.store import periodic

log = logging.getLogger("mta")

PURGE_INTERVAL_S = 3600.0  # how often the cluster purges expired events and AUTH failures
PERIODIC_CHECK_S = 60.0  # how often each node asks whether a periodic job is its turn


@dataclass
class Server:
    """A running server: `start` binds everything, `stop` shuts down cleanly."""

    config: Config
    services: Services | None = None
    runner: web.AppRunner | None = None
    api_port: int = 0
    smtp: SmtpListeners | None = None
    outbound: Outbound | None = None
    _periodic: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.services = await open_services(self.config)
        try:
            await self._start_listeners()
        except BaseException:
            await self.stop()  # close the store so its threads do not keep the process alive
            raise

    async def _start_listeners(self) -> None:
        assert self.services is not None
        services = self.services
        if self.config.outbound.enabled:  # built first: its policy files are checked here
            self.outbound = build_outbound(services)
        host, port = parse_listen("api.listen", self.config.api.listen)
        self.runner = web.AppRunner(build_app(services), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        self.api_port = self.runner.addresses[0][1]
        self.smtp = smtp_listeners(services)
        await self.smtp.start()
        await services.inbound.start()
        await services.webhooks.start()
        if self.outbound is not None:
            await self.outbound.start()
        self._periodic = asyncio.create_task(self._periodic_loop(), name="periodic")
        if not any(k.revoked_at is None for k in await services.keys.list()):
            log.warning("no API keys yet: create one with `mta key create`")
        if not await services.domains.all():
            log.warning("no domains yet: add one with `mta domain add NAME`")
        log.info("HTTP API listening on %s:%d, store %s", host, self.api_port,
                 self.config.store_name)

    def _periodic_jobs(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        assert self.services is not None
        store, config = self.services.store, self.config
        return [
            ("events-purge", lambda: purge_expired(store, config.events.retention_days)),
            ("auth-purge", lambda: guard.purge(store, config.smtp)),
            ("stats-purge", lambda: stats_retention.purge_expired(store, config.stats)),
        ]

    async def _periodic_loop(self) -> None:
        """Each job once per PURGE_INTERVAL_S across the cluster (at start too, if due)."""
        assert self.services is not None
        store = self.services.store
        jobs = self._periodic_jobs()
        while True:
            for name, work in jobs:
                try:
                    if await periodic.claim(store, name, PURGE_INTERVAL_S):
                        await work()
                except Exception:
                    log.exception("%s failed", name)
            await asyncio.sleep(PERIODIC_CHECK_S)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests and SMTP transactions finish (their commits
        too), close the store. Safe to call twice; the store is closed even if a step fails."""
        try:
            if self._periodic is not None:
                self._periodic.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._periodic
                self._periodic = None
            if self.smtp is not None:
                smtp, self.smtp = self.smtp, None
                await smtp.stop()
            if self.services is not None:
                await self.services.inbound.stop()
                await self.services.webhooks.stop()
        finally:
            try:
                if self.outbound is not None:
                    outbound, self.outbound = self.outbound, None
                    await outbound.stop()
            finally:
                await self._stop_api_and_store()
        log.info("stopped")

    async def _stop_api_and_store(self) -> None:
        try:
            if self.runner is not None:
                runner, self.runner = self.runner, None
                await runner.cleanup()
        finally:
            if self.services is not None:
                await self.services.close()


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()
