"""Builds every component in one event loop, runs them, and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from mta.accept import Acceptor
from mta.api import build_app
from mta.api.context import Services
from mta.budget import ByteBudget
from mta.config import Config, parse_listen
from mta.credentials import Credentials, PasswordChecks
from mta.dns import Resolver
from mta.domains import Domains
from mta.events import purge_expired
from mta.inbound import Inbound
from mta.inbound.reports import Reports
from mta.inbound.routes import Routes
from mta.inbound.verdicts import Verdicts
from mta.keys import ApiKeys
from mta.outbound import Outbound
from mta.outbound.policy import load_classifier
from mta.outbound.returnpath import ReturnPaths, load_secret
from mta.smtp import SmtpListeners
from mta.smtp.guard import Guard
from mta.smtp.mx import MxHandler
from mta.store import open_store

log = logging.getLogger("mta")

PURGE_INTERVAL_S = 3600


async def open_services(config: Config) -> Services:
    store = await open_store(config)
    try:
        resolver = Resolver(config.dns)
        domains = Domains(store, config, resolver)
        acceptor = Acceptor(store, domains, config)
        routes = Routes(store, config)
        return_paths = ReturnPaths(await load_secret(store))
        classifier = load_classifier(config.outbound.bounce_rules_file)
        reports = Reports(store, return_paths, classifier)
        return Services(
            config=config,
            store=store,
            resolver=resolver,
            domains=domains,
            keys=ApiKeys(store),
            credentials=Credentials(store, PasswordChecks(config.smtp)),
            acceptor=acceptor,
            routes=routes,
            return_paths=return_paths,
            classifier=classifier,
            inbound=Inbound(
                config, store, domains, routes, Verdicts(config, resolver), reports, acceptor,
                resolver,
            ),
            accepting=ByteBudget(config.sending.max_accepting_bytes),
        )
    except BaseException:
        await store.close()  # its threads would otherwise keep the process alive
        raise


@dataclass
class Server:
    """A running server: `start` binds everything, `stop` shuts down cleanly."""

    config: Config
    services: Services | None = None
    runner: web.AppRunner | None = None
    api_port: int = 0
    smtp: SmtpListeners | None = None
    outbound: Outbound | None = None
    _purger: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.services = await open_services(self.config)
        try:
            await self._start_listeners()
        except BaseException:
            await self.stop()  # close the store so its threads do not keep the process alive
            raise

    async def _start_listeners(self) -> None:
        assert self.services is not None
        if self.config.outbound.enabled:  # built first: its policy files are checked here
            services = self.services
            self.outbound = Outbound(
                self.config,
                services.store,
                services.domains,
                services.resolver,
                services.classifier,
                services.return_paths,
            )
        host, port = parse_listen("api.listen", self.config.api.listen)
        self.runner = web.AppRunner(build_app(self.services), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        self.api_port = self.runner.addresses[0][1]
        services = self.services
        mx = MxHandler(
            services, Guard(self.config.smtp, self.config.smtp.mx_max_connections_per_ip),
            services.inbound,
        )
        self.smtp = SmtpListeners(services, mx)
        await self.smtp.start()
        await services.inbound.start()
        if self.outbound is not None:
            await self.outbound.start()
        self._purger = asyncio.create_task(self._purge_loop(), name="events-purge")
        if not any(k.revoked_at is None for k in await self.services.keys.list()):
            log.warning("no API keys yet: create one with `mta key create`")
        if not await self.services.domains.all():
            log.warning("no domains yet: add one with `mta domain add NAME`")
        log.info("HTTP API listening on %s:%d, store %s", host, self.api_port,
                 self.config.store_name)

    async def _purge_loop(self) -> None:
        assert self.services is not None
        while True:
            try:
                await purge_expired(self.services.store, self.config.events.retention_days)
            except Exception:
                log.exception("events purge failed")
            await asyncio.sleep(PURGE_INTERVAL_S)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests and SMTP transactions finish (their commits
        too), close the store. Safe to call twice; the store is closed even if a step fails."""
        try:
            if self._purger is not None:
                self._purger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._purger
                self._purger = None
            if self.smtp is not None:
                smtp, self.smtp = self.smtp, None
                await smtp.stop()
            if self.services is not None:
                await self.services.inbound.stop()
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
                self.services.credentials.checks.close()
                await self.services.store.close()


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
