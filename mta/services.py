"""The composition root: every part is built here, once, and handed the few things it uses.

`open_services` opens the store and builds the shared parts (the server and the admin CLI both
use it); `smtp_listeners` and `build_outbound` build the receivers and the delivery side from them.
The HTTP API reads what it needs from `Services` (mta.api.context); the SMTP handlers get only
their own few parts, so a change of the bag does not reach them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mta.accept import Acceptor
from mta.account import Account
from mta.budget import ByteBudget
from mta.config import Config
from mta.credentials import Credentials, PasswordChecks
from mta.dns import Resolver
from mta.domains import Domains
from mta.events.logs import event_logger
from mta.inbound import Inbound
from mta.inbound.reports import Reports
from mta.inbound.routes import Routes
from mta.inbound.verdicts import Verdicts
from mta.keys import ApiKeys
from mta.lists import Lists
from mta.metrics import Metrics
from mta.outbound import Outbound
from mta.outbound.policy import Classifier, load_classifier
from mta.outbound.returnpath import ReturnPaths, load_secret
from mta.queue import make_due
from mta.queue.expansion import Expander
from mta.smtp import SmtpListeners, SubmissionHandler
from mta.smtp.guard import AuthThrottle, Guard
from mta.smtp.mx import MxHandler
from mta.store import Store, open_store
from mta.tracking.clients import ClientDescriber
from mta.tracking.copies import Tracker
from mta.tracking.hits import Hits
from mta.tracking.links import TrackingLinks
from mta.webhooks import Webhooks


@dataclass(frozen=True)
class Services:
    """The parts one node shares between its receivers, built by `open_services`."""

    config: Config
    store: Store
    resolver: Resolver
    domains: Domains
    keys: ApiKeys
    account: Account  # the HTTP signing key, the tracking secret
    tracking_links: TrackingLinks  # signs and reads open, click and unsubscribe links
    clients: ClientDescriber  # client-info and geolocation of tracking hits
    hits: Hits  # records opens, clicks and unsubscribes
    credentials: Credentials
    acceptor: Acceptor
    routes: Routes
    return_paths: ReturnPaths
    classifier: Classifier
    inbound: Inbound
    lists: Lists  # mailing lists and their members
    metrics: Metrics  # /metrics: counters fed by commits, gauges read at scrape time
    webhooks: Webhooks  # the webhooks table; its runner posts events to users' URLs
    accepting: ByteBudget  # message bytes being accepted at once, HTTP and SMTP together

    async def delete_domain(self, name: str) -> bool:
        """A domain goes with its sending keys (revoked in the same commit); what it has queued
        is made due, so delivery fails it with events rather than sending it unsigned. Its
        events stay until their retention ends."""
        now = time.time()
        name = name.strip().lower()
        if not await self.domains.delete(name, self.keys.revoke_domain(name, now)):
            return False
        await make_due(self.store, name, now)
        return True

    async def close(self) -> None:
        """Stop the password-check threads and close the store (its threads would otherwise
        keep the process alive)."""
        try:
            self.credentials.checks.close()
            self.clients.close()
        finally:
            await self.store.close()


async def open_services(config: Config) -> Services:
    """The store, migrated, and every shared part built on it."""
    store = await open_store(config)
    try:
        resolver = Resolver(config.dns)
        if config.logs.events != "off":
            store.observers.add(event_logger(config.logs.events))
        domains = Domains(store, config, resolver)
        lists = Lists(store, domains, config.lists)
        acceptor = Acceptor(store, domains, config, lists.any_of)
        routes = Routes(store, config)
        return_paths = ReturnPaths(await load_secret(store))
        classifier = load_classifier(config.outbound.bounce_rules_file)
        reports = Reports(store, return_paths, classifier)
        account = Account(store)
        tracking_links = TrackingLinks(
            await account.tracking_secret(), config.tracking.link_lifetime_days * 86400
        )
        clients = ClientDescriber(
            config.tracking.geoip_database, config.tracking.scanner_window_s
        )
        hits = Hits(store, domains, tracking_links, clients)
        metrics = Metrics(config, store)
        return Services(
            config=config,
            store=store,
            resolver=resolver,
            domains=domains,
            keys=ApiKeys(store),
            account=account,
            tracking_links=tracking_links,
            clients=clients,
            hits=hits,
            credentials=Credentials(store, PasswordChecks(config.smtp)),
            acceptor=acceptor,
            routes=routes,
            return_paths=return_paths,
            classifier=classifier,
            inbound=Inbound(
                config, store, domains, routes, Verdicts(config, resolver), reports, acceptor,
                resolver, account, hits.unsubscribe_by_mail, lists,
            ),
            lists=lists,
            metrics=metrics,
            webhooks=Webhooks(config, store, resolver, account,
                              metrics.webhook_failed if metrics.enabled else None),
            accepting=ByteBudget(config.sending.max_accepting_bytes),
        )
    except BaseException:
        await store.close()  # its threads would otherwise keep the process alive
        raise


def smtp_listeners(services: Services) -> SmtpListeners:
    """Submission (AUTH, site-wide throttles in the store, the accept path) and the MX (hosted
    domains, the inbound side); each listener counts its own connections."""
    config = services.config
    smtp = config.smtp
    submission_guard = Guard(smtp, smtp.max_connections_per_ip)
    submission = SubmissionHandler(
        config,
        submission_guard,
        services.accepting,
        throttle=AuthThrottle(smtp, services.store, submission_guard),
        credentials=services.credentials,
        accept=services.acceptor.accept,
    )
    mx_guard = Guard(smtp, smtp.mx_max_connections_per_ip)
    # the three submission ports share one guard: their sessions count as "submission"
    services.metrics.watch_listener("submission", submission_guard)
    services.metrics.watch_listener("mx", mx_guard)
    mx = MxHandler(
        config,
        mx_guard,
        services.accepting,
        find_domain=services.domains.get,
        receive=services.inbound.receive,
    )
    return SmtpListeners(config, submission, mx)


def build_outbound(services: Services) -> Outbound:
    """The delivery side (its policy files are read and checked here)."""
    return Outbound(
        services.config,
        services.store,
        services.domains,
        services.resolver,
        services.classifier,
        services.return_paths,
        Tracker(services.tracking_links, services.config),
        Expander(services.store, services.domains, services.lists.subscribed_after,
                 services.config.lists),
        services.metrics.timings,
    )
