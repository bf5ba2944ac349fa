"""Prometheus metrics (issue 14): one registry per node, fed by commit observers and read at
scrape time.

- Counters of accepted, delivered and failed recipients come from committed events (a commit
  observer reading the Event's fields: it runs for every event on the event loop), so they
  count what is durable, labelled by sending domain (a bounded set: the hosted domains), and
  for failures by severity and reason.
- Times only a part knows are handed in through narrow hooks, so no part imports this module:
  the store's transaction timer (`CommitObservers.timer`), the scheduler's `DeliveryTimings`,
  each SMTP listener's `Guard.session_ended`, the webhooks' `failed`.
- Queue depth by destination, the webhook backlog and open SMTP sessions are read when
  scraped (`families`): the queue and jobs queries already exist for the queue API and are
  the cluster's, not the node's.

Each `Metrics` has its own `CollectorRegistry` (tests run several servers in one process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mta import jobs
from mta.config import Config
from mta.queue.control import MAX_LIMIT, destinations
from mta.smtp.guard import Guard
from mta.store import Store
from mta.webhooks import KINDS as WEBHOOK_KINDS

# seconds from acceptance to delivery: a loopback hop is milliseconds, a retried one hours
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600,
                   24 * 3600)
SESSION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


class _Scraped(Collector):
    """The registry's metrics followed by those read from the store for this scrape: what
    `generate_latest` renders (it only asks for `collect`)."""

    def __init__(self, registry: CollectorRegistry, read: Sequence[Metric]) -> None:
        self._registry = registry
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._read


class Metrics:
    def __init__(self, config: Config, store: Store) -> None:
        self._store = store
        self.enabled = config.metrics.enabled
        self._registry = CollectorRegistry(auto_describe=False)
        registry = self._registry
        self._accepted = Counter(
            "mta_accepted", "Recipients accepted for delivery (committed accepted events)",
            ["domain"], registry=registry,
        )
        self._delivered = Counter(
            "mta_delivered", "Recipients delivered (committed delivered events)",
            ["domain"], registry=registry,
        )
        self._failed = Counter(
            "mta_failed", "Failed delivery attempts (committed failed events); temporary ones"
            " are retried", ["domain", "severity", "reason"], registry=registry,
        )
        self._latency = Histogram(
            "mta_delivery_latency_seconds",
            "From a message's acceptance (or its scheduled delivery time) to a recipient's"
            " delivery", buckets=LATENCY_BUCKETS, registry=registry,
        )
        self._outbound_sessions = Histogram(
            "mta_outbound_session_seconds", "How long outbound delivery connections stay open",
            buckets=SESSION_BUCKETS, registry=registry,
        )
        self._smtp_sessions = Histogram(
            "mta_smtp_session_seconds", "How long SMTP sessions on our listeners last",
            ["listener"], buckets=SESSION_BUCKETS, registry=registry,
        )
        self._commits = Histogram(
            "mta_store_commit_seconds", "How long the store's write transactions take",
            buckets=COMMIT_BUCKETS, registry=registry,
        )
        self._webhook_failures = Counter(
            "mta_webhook_failures", "Webhook posts that failed, by what follows: retry (tried"
            " again, or given up when its retries are spent), stop (the receiver answered 406),"
            " fail (the hook or the event is gone)", ["outcome"], registry=registry,
        )
        self._guards: dict[str, Guard] = {}
        # label children by key: looked up once, not at every event
        self._children: dict[tuple[str, ...], Any] = {}
        if self.enabled:
            store.observers.add(self._committed)
            store.observers.timer = self._commits.observe

    # -- hooks ---------------------------------------------------------------------------------

    @property
    def timings(self) -> Metrics | None:
        """What the outbound scheduler reports its times to (a DeliveryTimings), if on."""
        return self if self.enabled else None

    def delivered(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def session_closed(self, seconds: float) -> None:
        self._outbound_sessions.observe(seconds)

    def webhook_failed(self, outcome: str) -> None:
        self._webhook_failures.labels(outcome).inc()

    def watch_listener(self, name: str, guard: Guard) -> None:
        """Count the open sessions and time the sessions of one kind of SMTP listener."""
        if self.enabled:
            self._guards[name] = guard
            guard.session_ended = self._smtp_sessions.labels(name).observe

    def _committed(self, observed: Sequence[Any]) -> None:
        children = self._children
        for domain, event in observed:
            kind = event.kind
            if kind == "failed":
                key: tuple[str, ...] = (kind, domain, event.severity or "", event.reason or "")
            elif kind in ("accepted", "delivered"):
                key = (kind, domain)
            else:
                continue
            child = children.get(key)
            if child is None:
                child = children[key] = self._child(key)
            child.inc()

    def _child(self, key: tuple[str, ...]) -> Any:
        kind, *labels = key
        counter = {"accepted": self._accepted, "delivered": self._delivered,
                   "failed": self._failed}[kind]
        return counter.labels(*labels)

    # -- scrape --------------------------------------------------------------------------------

    async def exposition(self) -> bytes:
        """The text a scrape answers: the registry, and what the store holds now."""
        return generate_latest(_Scraped(self._registry, await self.families()))

    async def families(self) -> list[Metric]:
        now = time.time()
        depth = GaugeMetricFamily(
            "mta_queue_recipients", "Recipients waiting for delivery by destination (recipient"
            " domain) and state: due, deferred (a retry, a scheduled send, a pause), in_flight",
            labels=["destination", "state"],
        )
        oldest = GaugeMetricFamily(
            "mta_queue_oldest_age_seconds",
            "Age of the oldest message waiting for each destination", labels=["destination"],
        )
        for d in await destinations(self._store, now, MAX_LIMIT):
            if not d.queued:
                continue  # a paused destination with nothing waiting
            depth.add_metric([d.name, "due"], d.due)
            depth.add_metric([d.name, "deferred"], d.deferred)
            depth.add_metric([d.name, "in_flight"], d.in_flight)
            if d.oldest_at is not None:
                oldest.add_metric([d.name], max(0.0, now - d.oldest_at))
        waiting = await jobs.backlog(self._store, WEBHOOK_KINDS)
        backlog = GaugeMetricFamily(
            "mta_webhook_backlog", "Webhook posts not yet done (due, waiting for a retry, or"
            " being posted)", value=waiting.queued,
        )
        backlog_age = GaugeMetricFamily(
            "mta_webhook_backlog_oldest_age_seconds", "Age of the oldest webhook post not yet"
            " done (0 when none waits)",
            value=0.0 if waiting.oldest_at is None else max(0.0, now - waiting.oldest_at),
        )
        connections = GaugeMetricFamily(
            "mta_smtp_open_sessions", "SMTP sessions open on this node, by listener",
            labels=["listener"],
        )
        for name, guard in self._guards.items():
            connections.add_metric([name], guard.open_sessions)
        return [depth, oldest, backlog, backlog_age, connections]
