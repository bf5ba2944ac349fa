"""The outbound scheduler: takes due recipients from the queue, sorts them into sites (one
receiving destination each, shaped by its profile), and runs delivery connections per site.

A site is paced on its own: its connection limit, messages per connection, per-minute and
per-hour rates, and its back-off when it throttles us. A slow, throttling or unreachable site
holds at most its own share of memory (the rest waits in the store), so it never holds up
another site.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from mta.config import Config
from mta.domains import Domain, Domains
from mta.events import DeliveryStatus, Event, EventKind
from mta.outbound.client import (
    NO_CONNECTION,
    Connector,
    Reply,
    Session,
    SessionFailed,
    TlsPolicy,
)
from mta.outbound.dkim import SigningError, signature_header
from mta.outbound.limits import site_limits
from mta.outbound.mx import MxResolver, Route, Unroutable
from mta.outbound.policy import Classifier, Profile, Shaping, Verdict
from mta.outbound.returnpath import ReturnPaths
from mta.queue import (
    DOMAIN_REMOVED,
    SUPPRESSION_CODES,
    Delivery,
    Queue,
    delivery_event,
    dropped_event,
)
from mta.queue.control import Pauses, hold_statement
from mta.store import Store
from mta.suppressions import bounce_statement, suppressed
from mta.tracking.copies import ListPost, Tracker
from mta.tracking.rewrite import Choice

log = logging.getLogger("mta.outbound")

MESSAGES_PER_NEW_CONNECTION = 10
EXPECTED_TRANSACTION_S = 1.0  # a remote MX's time per message (generous), to size paced sites
SITE_SWEEP_S = 60.0  # how often sites with nothing left to do are dropped from memory
STRAY_DEFER_S = 60.0  # recipients that could not be sorted to a site are tried again after
SITE_DOWN_S = 60.0  # after no host of a site answered, fail its mail at once for this long
# a full site's surplus waits in the store about as long as the site takes to drain, within:
OVERFLOW_DEFER_MIN_S = 0.2
OVERFLOW_DEFER_MAX_S = 300.0
DRAIN_SAMPLE = 200  # recent completions the drain rate is measured over
CLEAN_MINUTE_S = 60.0
SLOT_RETRY_S = 0.5  # with several nodes: when all of a site's connections are open elsewhere
SIGNING_THREADS = 2
RENDER_ON_LOOP_BYTES = 256 * 1024  # batch copies bigger than this are rendered in a thread
LAST_REPLIES = 10_000  # destinations whose last reply is remembered (the most recent ones)
Write = Coroutine[Any, Any, None]  # an outcome's write, awaited by whoever decided it

_SUPPRESSION = {
    "suppress-bounce": (605, "Not delivering to previously bounced address"),
    "suppress-unsubscribe": (606, "Not delivering to unsubscribed address"),
    "suppress-complaint": (607, "Not delivering to a user who marked your messages as spam"),
}
_SENDER_CODES = ("5.1.7", "5.1.8")  # bad / unroutable sender address (RFC 3463)
# Mailgun's pseudo-code when no MX could be used
NO_ROUTE = 498


@dataclass(frozen=True)
class LastReply:
    at: float
    code: int
    message: str


@dataclass(frozen=True)
class SiteView:
    """What this node's scheduler knows of one destination (recipient domain) that the store
    does not: its site (MX host group), throttling, reachability and the last reply."""

    site: str | None
    throttled_until: float | None
    down_until: float | None
    waiting: int  # in this node's memory, for the destination's site
    last_reply: LastReply | None


class DeliveryTimings(Protocol):
    """What metrics (mta.metrics) are told by the scheduler: times only it knows."""

    def delivered(self, seconds: float) -> None:
        """From a message's acceptance (or its scheduled time) to a recipient's delivery."""

    def session_closed(self, seconds: float) -> None:
        """How long a delivery connection was open."""


# the scheduler running on each open store (the API asks it what only it knows)
_RUNNING: weakref.WeakKeyDictionary[Store, Scheduler] = weakref.WeakKeyDictionary()


def running(store: Store) -> Scheduler | None:
    """The scheduler this process runs on `store`, if outbound delivery is on."""
    return _RUNNING.get(store)


class DomainRemoved(Exception):
    """The message's sending domain was deleted after it was queued: it is not sent (nor
    sent unsigned)."""


@dataclass(eq=False)
class Lane:
    """A site's deliveries that share a TLS policy (a connection serves one policy)."""

    policy: TlsPolicy
    queue: deque[Delivery] = field(default_factory=deque)
    workers: int = 0  # connections serving this lane
    idle: int = 0  # of which waiting for the next delivery
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class Site:
    """One receiving destination (its MX hosts under one profile) and its shaping state:
    connections, pacing, throttle pause, and whether it is reachable."""

    def __init__(self, key: str, profile: Profile, route: Route) -> None:
        self.key = key
        self.profile = profile
        self.route = route
        self.domains: set[str] = set()  # recipient domains sorted here
        self.lanes: dict[TlsPolicy, Lane] = {}
        self.active = 0
        self.limit = profile.connections
        self.paused_until = 0.0
        self.pause_s = profile.throttle_pause_s
        self.down_until = 0.0
        self.down_reply: Reply | None = None
        self.down_host = ""
        self.open_sessions = 0
        self.connecting = 0
        self.clean_since = time.monotonic()
        self.next_slot = 0.0
        self.no_slot_until = 0.0  # monotonic: no site-wide connection slot was free
        rates = [60 / profile.per_minute] if profile.per_minute else []
        rates += [3600 / profile.per_hour] if profile.per_hour else []
        self.interval = max(rates, default=0.0)
        # what may wait in memory: about two minutes' worth when paced, else a full round of
        # every connection
        if self.interval:
            self.capacity = max(10, math.ceil(120 / self.interval))
        else:
            self.capacity = max(200, profile.connections * profile.messages_per_connection)
        self._completions: deque[float] = deque(maxlen=DRAIN_SAMPLE)

    def lane(self, policy: TlsPolicy) -> Lane:
        lane = self.lanes.get(policy)
        if lane is None:
            lane = self.lanes[policy] = Lane(policy)
        return lane

    @property
    def waiting(self) -> int:
        return sum(len(lane.queue) for lane in self.lanes.values())

    def completed(self) -> None:
        self._completions.append(time.monotonic())

    def drain_time(self, backlog: int) -> float:
        """About how long this site takes to work through `backlog` more messages."""
        samples = self._completions
        elapsed = time.monotonic() - samples[0] if samples else 0.0
        if len(samples) >= 10 and elapsed > 0:
            estimate = backlog * elapsed / len(samples)
        else:
            estimate = backlog * (self.interval or 0.01)
        return min(max(estimate, OVERFLOW_DEFER_MIN_S), OVERFLOW_DEFER_MAX_S)

    def slot_wait(self) -> float:
        """Seconds until this site may take the next message (even pacing, no bursts)."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        slot = max(now, self.next_slot)
        self.next_slot = slot + self.interval
        return slot - now

    def throttle(self, now: float) -> None:
        """Pause the site and give it fewer connections. Replies that come back from one burst
        (the site is paused already) count once."""
        if self.paused_until > now:
            return
        self.paused_until = now + self.pause_s
        log.warning(
            "site %s throttles us: paused %.0f s, connections %d -> %d", self.key, self.pause_s,
            self.limit, max(1, int(self.limit * self.profile.throttle_connections)),
        )
        self.pause_s = min(self.pause_s * 2, self.profile.throttle_max_pause_s)
        self.limit = max(1, int(self.limit * self.profile.throttle_connections))
        self.clean_since = time.monotonic() + (self.paused_until - now)

    def went_well(self) -> None:
        """A delivery succeeded: after each clean minute regain a connection and calm down."""
        now = time.monotonic()
        if now - self.clean_since >= CLEAN_MINUTE_S:
            self.clean_since = now
            self.limit = min(self.profile.connections, self.limit + 1)
            self.pause_s = self.profile.throttle_pause_s


class Scheduler:
    """Takes due recipients, sorts them into sites, and runs the sites' connections. Every
    recipient taken ends in an outcome written with its event, or goes back to the store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        domains: Domains,
        resolver: MxResolver,
        connector: Connector,
        shaping: Shaping,
        classifier: Classifier,
        return_paths: ReturnPaths,
        tracker: Tracker,
        timings: DeliveryTimings | None = None,
    ) -> None:
        self._config = config.outbound
        self._tracker = tracker
        self._timings = timings
        self._store = store
        self._domains = domains
        self._resolver = resolver
        self._connector = connector
        self._shaping = shaping
        self._classifier = classifier
        self._return_paths = return_paths
        self._queue = Queue(store)
        self._limits = site_limits(store, config.outbound.site_slot_lease_s)
        self._sites: dict[str, Site] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._writes: set[asyncio.Future[None]] = set()  # outcome writes not yet committed
        self._held: dict[int, Delivery] = {}  # leased and in memory, by recipient id
        self._pauses = Pauses(store)  # destinations an operator paused (mta.queue.control)
        self._last_replies: OrderedDict[str, LastReply] = OrderedDict()
        self._stopping = False
        self._claimer: asyncio.Task[None] | None = None
        self._signer = ThreadPoolExecutor(SIGNING_THREADS, thread_name_prefix="dkim")

    async def start(self) -> None:
        released = await self._queue.release_own(time.time())
        if released:
            log.info("outbound: %d recipient(s) left leased by the previous run are due again",
                     released)
        slots = await self._limits.release_own()
        if slots:
            log.info("outbound: %d connection slot(s) held by the previous run are free", slots)
        await self._pauses.refresh()
        self._claimer = asyncio.create_task(self._claim_loop(), name="outbound-claim")
        _RUNNING[self._store] = self

    async def stop(self) -> None:
        """Take nothing new; let each connection finish the message it is sending and every
        outcome commit. What waits in memory keeps its lease: the next start frees it."""
        self._stopping = True
        if _RUNNING.get(self._store) is self:
            del _RUNNING[self._store]
        if self._claimer is not None:
            self._claimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._claimer
        for site in self._sites.values():
            for lane in site.lanes.values():
                lane.arrived.set()
        if self._workers:
            grace = self._config.stop_grace_s
            _done, pending = await asyncio.wait(set(self._workers), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self._signer.shutdown(wait=False, cancel_futures=True)

    async def purge_finished(self) -> None:
        days = self._config.message_retention_days
        await self._queue.purge_finished(time.time() - days * 86400)

    # -- taking due recipients ---------------------------------------------------------------

    async def _claim_loop(self) -> None:
        cfg = self._config
        swept_at = renewed_at = time.monotonic()
        while True:
            try:
                clock = time.monotonic()
                if clock - swept_at > SITE_SWEEP_S:
                    swept_at = clock
                    self._forget_idle_sites()
                    self._resolver.prune()
                    self._connector.prune()
                if clock - renewed_at > cfg.lease_s / 3:
                    renewed_at = clock
                    await self._queue.renew(list(self._held), time.time() + cfg.lease_s)
                if await self._pauses.refresh():
                    await self._hold_paused_in_memory()
                room = min(cfg.claim_batch, cfg.max_in_flight - len(self._held))
                now = time.time()
                if room <= 0 or not await self._queue.anything_due(now):
                    await asyncio.sleep(cfg.poll_interval_s)
                    continue
                deliveries = await self._queue.claim(now, cfg.lease_s, room)
                for d in deliveries:
                    self._held[d.id] = d
                try:
                    await self._dispatch(deliveries)
                except Exception:
                    # whatever was not placed goes back to the store for a later try
                    log.exception("outbound: sorting %d recipient(s) failed", len(deliveries))
                    placed = {id(d) for s in self._sites.values() for ln in s.lanes.values()
                              for d in ln.queue}
                    stray = [d for d in deliveries if d.id in self._held and id(d) not in placed]
                    await self._queue.defer(stray, time.time() + STRAY_DEFER_S)
                    for d in stray:
                        self._forget(d)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbound: taking due recipients failed; trying again")
                await asyncio.sleep(1.0)

    def _forget_idle_sites(self) -> None:
        """Sites with no connection, no mail and nothing to remember (pause, pacing) go."""
        now, clock = time.time(), time.monotonic()
        for key, site in list(self._sites.items()):
            if (
                site.active == 0
                and site.waiting == 0
                and site.paused_until < now
                and site.down_until < now
                and site.next_slot < clock
            ):
                del self._sites[key]

    async def _dispatch(self, deliveries: list[Delivery]) -> None:
        """Drop suppressed and test-mode recipients, sort the rest into their sites. What can
        fail (store, DNS) is asked first; only then is anything decided or queued. A paused
        destination's recipients go back untouched."""
        paused = self._pauses.paused
        if paused:
            held = [d for d in deliveries if d.recipient_domain in paused]
            if held:
                deliveries = [d for d in deliveries if d.recipient_domain not in paused]
                await self._hold(held)
        groups: dict[tuple[str, tuple[str, ...]], list[Delivery]] = {}
        for d in deliveries:
            groups.setdefault((d.message.domain, tuple(d.message.tags)), []).append(d)
        blocked: dict[int, str] = {}
        for (domain, tags), group in groups.items():
            if await self._domains.get(domain) is None:  # removed since it was queued
                blocked.update((d.id, DOMAIN_REMOVED) for d in group)
                continue
            reasons = await suppressed(self._store, domain, [d.address for d in group], list(tags))
            for d in group:
                if d.address.lower() in reasons:
                    blocked[d.id] = reasons[d.address.lower()]
        routable = [d for d in deliveries if d.id not in blocked and not d.message.test_mode]
        domains = {d.recipient_domain for d in routable}
        routes = dict(zip(domains, await asyncio.gather(
            *(self._route(domain) for domain in domains)), strict=True))
        policies = [await self._tls_policy(d) for d in routable]

        finishing = [
            self._blocked(d, blocked[d.id]) if d.id in blocked else self._test_mode(d)
            for d in deliveries
            if d.id in blocked or d.message.test_mode
        ]
        later: list[Delivery] = []
        touched: dict[str, Site] = {}
        for d, policy in zip(routable, policies, strict=True):
            route = routes[d.recipient_domain]
            if isinstance(route, Unroutable):
                finishing.append(self._unroutable(d, route))
                continue
            site = self._site(d.recipient_domain, route)
            touched[site.key] = site
            d.site = site
            now = time.time()
            if site.paused_until > now or site.waiting >= site.capacity:
                later.append(d)
            elif site.down_until > now and site.down_reply is not None:
                finishing.append(
                    self._failed(d, site.down_reply, None, site, verdict=None,
                                 mx_host=site.down_host)
                )
            else:
                site.lane(policy).queue.append(d)
        if later:
            finishing.append(self._defer(later))
        for site in touched.values():
            self._kick(site)
        if finishing:
            await asyncio.gather(*finishing)

    async def _route(self, domain: str) -> Route | Unroutable:
        try:
            return await self._resolver.route(domain)
        except Unroutable as exc:
            return exc
        except Exception as exc:  # e.g. a name DNS cannot even ask for (a label too long)
            return Unroutable(f"{domain}: {exc or exc.__class__.__name__}", permanent=True)

    def _site(self, recipient_domain: str, route: Route) -> Site:
        profile = self._shaping.for_domain(recipient_domain) or self._shaping.for_mx(
            [h.name for h in route.hops]
        )
        key = f"{profile.name}/{route.key}"
        site = self._sites.get(key)
        if site is None:
            site = self._sites[key] = Site(key, profile, route)
        site.domains.add(recipient_domain)
        return site

    async def _tls_policy(self, d: Delivery) -> TlsPolicy:
        opts = d.message.options
        domain = await self._domains.get(d.message.domain)
        require = opts.get("require_tls")
        skip = opts.get("skip_verification")
        if require is None:
            require = domain.require_tls if domain else False
        if skip is None:
            skip = domain.skip_verification if domain else False
        return TlsPolicy(bool(require), bool(skip))

    async def _hold(self, deliveries: list[Delivery]) -> None:
        """Recipients of destinations an operator paused: back to the store without an
        attempt, looked at again after a while (a resume makes them due at once)."""
        try:
            await self._store.write(
                hold_statement(((d.id, d.recipient_domain) for d in deliveries), time.time())
            )
        except Exception:
            log.exception("outbound: could not put back %d recipient(s)", len(deliveries))
        finally:
            for d in deliveries:
                self._forget(d)

    async def _hold_paused_in_memory(self) -> None:
        """A destination was paused: what waits for it in memory goes back to the store."""
        paused = self._pauses.paused
        held: list[Delivery] = []
        for site in self._sites.values():
            for lane in site.lanes.values():
                if any(d.recipient_domain in paused for d in lane.queue):
                    held += [d for d in lane.queue if d.recipient_domain in paused]
                    kept = [d for d in lane.queue if d.recipient_domain not in paused]
                    lane.queue.clear()
                    lane.queue.extend(kept)
        if held:
            await self._hold(held)

    def destinations(self) -> dict[str, SiteView]:
        """This node's in-memory view of each recipient domain it knows of: its site's
        throttling and reachability, and the last reply (for the queue's API and panel)."""
        now = time.time()
        views: dict[str, SiteView] = {}
        for site in self._sites.values():
            for domain in site.domains:
                views[domain] = SiteView(
                    site=site.key,
                    throttled_until=site.paused_until if site.paused_until > now else None,
                    down_until=site.down_until if site.down_until > now else None,
                    waiting=site.waiting,
                    last_reply=self._last_replies.get(domain),
                )
        for domain, reply in self._last_replies.items():
            if domain not in views:
                views[domain] = SiteView(None, None, None, 0, reply)
        return views

    async def _defer(self, deliveries: list[Delivery]) -> None:
        """Paused or full sites: back to the store until the site can take them."""
        now = time.time()
        by_time: dict[float, list[Delivery]] = {}
        place: dict[str, int] = {}
        for d in deliveries:
            site: Site = d.site
            if site.paused_until > now:
                due = site.paused_until
            else:
                place[site.key] = place.get(site.key, site.waiting) + 1
                due = round(now + site.drain_time(place[site.key]), 1)
            by_time.setdefault(due, []).append(d)
        try:
            for due, group in by_time.items():
                await self._queue.defer(group, due)
        except Exception:
            log.exception("outbound: could not put back %d recipient(s)", len(deliveries))
        finally:
            for d in deliveries:
                self._forget(d)

    # -- connections ---------------------------------------------------------------------------

    def _kick(self, site: Site) -> None:
        """Open connections while the site has waiting mail, room, and no pause: one for every
        MESSAGES_PER_NEW_CONNECTION waiting (a burst shares connections instead of opening one
        per message), and for a paced site no more than its pace keeps busy."""
        if (self._stopping or site.paused_until > time.time()
                or site.no_slot_until > time.monotonic()):
            return
        for lane in site.lanes.values():
            wanted = math.ceil(len(lane.queue) / MESSAGES_PER_NEW_CONNECTION)
            if site.interval:
                wanted = min(wanted, math.ceil(EXPECTED_TRANSACTION_S / site.interval))
            while lane.queue and site.active < site.limit and lane.workers < wanted:
                site.active += 1
                lane.workers += 1
                task = asyncio.create_task(self._work(site, lane), name=f"deliver {site.key}")
                self._workers.add(task)
                task.add_done_callback(self._workers.discard)
            if lane.queue and lane.idle:
                lane.arrived.set()

    async def _next(self, lane: Lane, keep_open: bool) -> Delivery | None:
        if lane.queue:
            return lane.queue.popleft()
        if not keep_open or self._stopping:
            return None
        deadline = time.monotonic() + self._config.idle_connection_s
        while not lane.queue and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            lane.arrived.clear()
            lane.idle += 1
            try:
                await asyncio.wait_for(lane.arrived.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                lane.idle -= 1
        return lane.queue.popleft() if lane.queue and not self._stopping else None

    async def _work(self, site: Site, lane: Lane) -> None:
        """One connection's life: messages of one lane until idle, its quota, or a problem."""
        session: Session | None = None
        slot: int | None = None  # the site-wide connection slot this connection holds
        sent = 0
        # the previous message's outcome commits while the next one is being sent (a crash in
        # between sends that message again: at-least-once, as always)
        writing: asyncio.Future[None] | None = None
        try:
            while not self._stopping:
                d = await self._next(lane, keep_open=session is not None)
                if d is None:
                    break
                if d.recipient_domain in self._pauses.paused:  # paused since it was sorted
                    await self._hold([d])
                    continue
                now = time.time()
                if site.paused_until > now:
                    lane.queue.appendleft(d)
                    break
                if session is None and site.down_until > now and site.down_reply is not None:
                    await self._failed(d, site.down_reply, None, site, verdict=None,
                                       mx_host=site.down_host)
                    continue
                if session is None:
                    slot = await self._limits.take_connection(site.key, site.limit)
                    if slot is None:  # the site's connections are all open, on other nodes
                        lane.queue.appendleft(d)
                        site.no_slot_until = time.monotonic() + SLOT_RETRY_S
                        asyncio.get_running_loop().call_later(
                            SLOT_RETRY_S * 1.01, self._kick, site)
                        break
                    if site.paused_until > time.time():  # throttled while the slot was asked
                        lane.queue.appendleft(d)
                        break
                else:
                    assert slot is not None
                    await self._limits.keep_connection(site.key, slot)
                wait = await self._limits.pace(site)
                if wait > 0:
                    await asyncio.sleep(wait)
                if session is None:
                    site.connecting += 1
                    try:
                        session = await self._connector.open(site.route, lane.policy)
                    except SessionFailed as exc:
                        site.connecting -= 1
                        slot = await self._free_slot(site, slot)
                        await self._session_failed(site, lane, d, exc)
                        continue
                    site.connecting -= 1
                    site.open_sessions += 1
                    site.down_until = 0.0
                    sent = 0
                try:
                    write = await self._attempt(site, session, d)
                except Exception as exc:  # a local fault with this message: retry it later
                    log.exception("outbound: sending <%s> failed here", d.address)
                    session.usable = False
                    write = self._failed(d, Reply(451, f"local error: {exc}", "4.3.0"), session,
                                         site, verdict=None)
                previous, writing = writing, self._track(write)
                if previous is not None:
                    await asyncio.shield(previous)
                site.completed()
                sent += 1
                if sent >= site.profile.messages_per_connection or not session.usable:
                    await self._close(site, session)
                    session = None
                    slot = await self._free_slot(site, slot)
            if writing is not None:
                await asyncio.shield(writing)
        except Exception:
            log.exception("outbound: a delivery connection to %s failed", site.key)
        finally:
            if session is not None:
                await self._close(site, session)
            await self._free_slot(site, slot)
            site.active -= 1
            lane.workers -= 1
            if site.paused_until > time.time() and any(ln.queue for ln in site.lanes.values()):
                await self._defer_site(site)
            self._kick(site)

    def _track(self, write: Write) -> asyncio.Future[None]:
        """Run an outcome write on its own, kept until it commits (stop() waits for it)."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    async def _close(self, site: Site, session: Session) -> None:
        site.open_sessions -= 1
        await session.close()
        if self._timings is not None:
            self._timings.session_closed(time.monotonic() - session.opened_at)

    async def _free_slot(self, site: Site, slot: int | None) -> None:
        """Give the site-wide connection slot back (a failure to do so only delays the next
        connection until the slot's lease runs out)."""
        if slot is None:
            return None
        try:
            await self._limits.free_connection(site.key, slot)
        except Exception:
            log.exception("outbound: freeing a connection slot to %s failed", site.key)
        return None

    async def _defer_site(self, site: Site) -> None:
        waiting = []
        for lane in site.lanes.values():
            waiting += lane.queue
            lane.queue.clear()
        await self._defer(waiting)

    async def _session_failed(
        self, site: Site, lane: Lane, d: Delivery, exc: SessionFailed
    ) -> None:
        """No host would take a session. TLS-policy problems concern this lane's mail only; a
        throttling greeting pauses the site; a failure while other connections to the site work
        concerns this message only; anything else means the site is unreachable: fail what
        waits for it, and for a while what comes (without a connection to try)."""
        reply = exc.reply
        if reply.code == NO_CONNECTION and reply.enhanced.startswith("4.7."):
            await self._failed(d, reply, None, site, verdict=None, mx_host=exc.mx_host)
            return
        if reply.code != NO_CONNECTION:
            verdict = self._classifier.classify(reply.code, reply.enhanced, reply.text[:1000])
            if verdict.throttle:
                site.throttle(time.time())
                await self._failed(d, reply, None, site, verdict=verdict, mx_host=exc.mx_host)
                return
        if site.open_sessions or site.connecting:  # others may work: only this one failed
            await self._failed(d, reply, None, site, verdict=None, mx_host=exc.mx_host)
            return
        log.warning("site %s unreachable: %s", site.key, exc.reply.message)
        site.down_until = time.time() + SITE_DOWN_S
        site.down_reply = exc.reply
        site.down_host = exc.mx_host
        casualties = [d]
        for other in site.lanes.values():
            casualties += other.queue
            other.queue.clear()
        await asyncio.gather(
            *(self._failed(c, exc.reply, None, site, verdict=None, mx_host=exc.mx_host)
              for c in casualties)
        )

    # -- one attempt -----------------------------------------------------------------------------

    async def _signed(self, d: Delivery) -> bytes:
        """What is sent to `d`: its copy (rendered per recipient for a batch, with its own
        tracking links when tracked), DKIM-signed unless the message says not to."""
        message = d.message
        domain = await self._domains.get(message.domain)
        choice = None
        if domain is not None:
            choice = self._tracker.choice(message.options, domain)
            if message.tracked is None:
                message.tracked = self._tracker.wanted(message.mime or b"", choice)
        # a list member's copy is their own: its list's headers and unsubscribe links
        personal = bool(message.tracked) or d.mailing_list is not None
        tracked = personal and domain is not None and choice is not None
        shared = d.shared and not tracked  # one copy (and signature) for every recipient
        if d.size > RENDER_ON_LOOP_BYTES and not shared:
            content = await asyncio.get_running_loop().run_in_executor(
                self._signer, self._copy, d, domain, choice)
        else:
            content = self._copy(d, domain, choice)
        if message.options.get("dkim") is False:
            return content
        if shared and message.dkim_header is not None:
            d.signed = True
            return message.dkim_header + content
        if domain is None:
            raise DomainRemoved(message.domain)
        try:
            # in the signing threads: OpenSSL's RSA step lets the event loop run meanwhile
            header = await asyncio.get_running_loop().run_in_executor(
                self._signer, signature_header, content, domain.name, domain.dkim_selector,
                domain.dkim_private_key,
            )
        except SigningError as exc:
            log.warning("not DKIM-signing %s for %s: %s", message.key, d.address, exc)
            return content
        if shared:
            message.dkim_header = header
        d.signed = True
        return header + content

    def _copy(self, d: Delivery, domain: Domain | None, choice: Choice | None) -> bytes:
        content = d.content()
        listed = _list_post(d)
        if not (d.message.tracked or listed) or domain is None or choice is None:
            return content
        return self._tracker.copy(content, choice, domain, d.message.message_id, d.address,
                                  d.message.tags, listed)

    async def _attempt(self, site: Site, session: Session, d: Delivery) -> Write:
        """Send one message; returns the write of its outcome."""
        try:
            data = await self._signed(d)
        except DomainRemoved:
            return self._blocked(d, DOMAIN_REMOVED)
        return_path = self._return_path(d)
        try:
            reply = await session.send(return_path, d.address, data)
        except SessionFailed as exc:
            return self._failed(d, exc.reply, session, site, verdict=None)
        if 200 <= reply.code < 300:
            site.went_well()
            return self._delivered(d, reply, session, site)
        verdict = self._classifier.classify(reply.code, reply.enhanced, reply.text[:1000])
        if verdict.suppress and (reply.stage == "mail" or reply.enhanced in _SENDER_CODES):
            # a refusal of our own envelope sender says nothing about the recipient's mailbox
            verdict = dataclasses.replace(verdict, suppress=False)
        if verdict.throttle:
            site.throttle(time.time())
        return self._failed(d, reply, session, site, verdict=verdict)

    def _return_path(self, d: Delivery) -> str:
        if d.message.sender == "":
            return ""  # a bounce or other null-sender message stays one
        return self._return_paths.address(d.id, d.message.key, d.message.domain)

    # -- outcomes --------------------------------------------------------------------------------

    def _status(self, d: Delivery, reply: Reply, session: Session | None, mx_host: str = "",
                description: str = "") -> dict[str, Any]:
        return {
            "code": reply.code,
            "message": reply.message,
            "description": description,
            "enhanced-code": reply.enhanced,
            "attempt-no": d.attempts + 1,
            "session-seconds": round(time.monotonic() - session.opened_at, 3) if session else 0.0,
            "tls": session.tls if session else False,
            "certificate-verified": session.certificate_verified if session else False,
            "mx-host": session.mx_host if session else mx_host,
            "utf8": session.utf8 if session else False,
        }

    def _event(self, d: Delivery, kind: EventKind, status: dict[str, Any], sending_ip: str = "",
               **fields: Any) -> Event:
        site: Site | None = d.site
        provider = None
        if site is not None:
            provider = "Other" if site.profile.name == "default" else site.profile.name.title()
        return delivery_event(
            d, kind, status,
            mail_from=None if status.get("code") in SUPPRESSION_CODES else self._return_path(d),
            sending_ip=sending_ip, provider=provider, **fields,
        )

    # Each outcome is decided and its event built at once (the session's state is read now);
    # what is returned is the write of it, which the caller awaits when it suits it.

    def _delivered(self, d: Delivery, reply: Reply, session: Session, site: Site) -> Write:
        status = self._status(d, reply, session)
        fields: dict[str, Any] = {"sending_ip": session.local_ip}
        if d.signed:
            fields["primary_dkim"] = d.message.domain
        return self._finish(d, "delivered", self._event(d, "delivered", status, **fields))

    def _test_mode(self, d: Delivery) -> Write:
        status = self._status(d, Reply(250, "OK", ""), None)
        return self._finish(d, "delivered", self._event(d, "delivered", status))

    def _blocked(self, d: Delivery, reason: str) -> Write:
        """Not sent at all: a suppressed address, or the sending domain was removed."""
        if reason == DOMAIN_REMOVED:
            event = dropped_event(d)
        else:
            code, description = _SUPPRESSION[reason]
            status = self._status(d, Reply(code, "", ""), None, description=description)
            status["message"] = ""
            event = self._event(d, "failed", status, severity="permanent", reason=reason)
        return self._finish(d, "failed", event)

    def _unroutable(self, d: Delivery, exc: Unroutable) -> Write:
        reply = Reply(NO_ROUTE, str(exc), "5.1.2" if exc.permanent else "4.4.3")
        if exc.permanent:
            status = self._status(d, reply, None, description=str(exc))
            event = self._event(d, "failed", status, severity="permanent", reason="generic")
            return self._finish(d, "failed", event)
        return self._failed(d, reply, None, None, verdict=None)

    def _failed(
        self,
        d: Delivery,
        reply: Reply,
        session: Session | None,
        site: Site | None,
        *,
        verdict: Verdict | None,
        mx_host: str = "",
    ) -> Write:
        """A failed attempt: permanent (maybe a hard bounce) or retried, unless it is too old."""
        status = self._status(d, reply, session, mx_host=mx_host)
        if verdict is not None and verdict.permanent:
            status["description"] = verdict.name
            event = self._event(d, "failed", status, severity="permanent", reason=verdict.reason)
            extra = []
            if verdict.suppress:
                extra.append(
                    bounce_statement(
                        d.message.domain, d.address, str(reply.code), reply.message, time.time()
                    )
                )
            return self._finish(d, "failed", event, *extra)
        now = time.time()
        intervals = self._config.retry_intervals_s
        wait = float(intervals[min(d.attempts, len(intervals) - 1)])
        due = now + wait
        if site is not None and site.paused_until > due:
            due = site.paused_until
        give_up_at = d.message.first_due + self._config.max_age_s
        if now >= give_up_at:
            status["description"] = "Too old"
            event = self._event(d, "failed", status, severity="permanent", reason="old")
            return self._finish(d, "failed", event)
        due = min(due, give_up_at)
        status["retry-seconds"] = round(due - now)
        reason = "generic"
        if verdict is not None:
            status["description"] = verdict.name
            reason = verdict.reason
        event = self._event(d, "failed", status, severity="temporary", reason=reason)
        return self._retry(d, due, event)

    async def _retry(self, d: Delivery, due: float, event: Event) -> None:
        await self._record(d, event, self._queue.retry(d, due, event))

    async def _finish(self, d: Delivery, state: str, event: Event, *extra: Any) -> None:
        await self._record(d, event, self._queue.finish(d, state, event, *extra))

    async def _record(self, d: Delivery, event: Event, write: Write) -> None:
        """Commit an outcome. If the store refuses it, the recipient keeps its lease and is
        tried again when the lease runs out (at-least-once); nothing is raised."""
        try:
            await write
            _log_outcome(d, event)
            if self._timings is not None and event.kind == "delivered":
                self._timings.delivered(event.timestamp - d.message.first_due)
            status = event.delivery_status
            if status is not None and status.code not in SUPPRESSION_CODES:
                self._remember_reply(d.recipient_domain, status)
        except Exception:
            log.exception("outbound: could not record the outcome for <%s>", d.address)
        finally:
            self._forget(d)

    def _remember_reply(self, domain: str, status: DeliveryStatus) -> None:
        replies = self._last_replies
        replies[domain] = LastReply(time.time(), status.code,
                                    status.message or status.description or "")
        replies.move_to_end(domain)
        if len(replies) > LAST_REPLIES:
            replies.popitem(last=False)

    def _forget(self, d: Delivery) -> None:
        if self._held.get(d.id) is d:
            del self._held[d.id]
            self._queue.forget(d)


def _list_post(d: Delivery) -> ListPost | None:
    """The list a member's copy goes out for, as accept kept it with the message."""
    if d.mailing_list is None:
        return None
    described = d.message.options.get("lists", {}).get(d.mailing_list, {})
    return ListPost(d.mailing_list, described.get("name", ""),
                    described.get("reply_preference", "list"))


def _log_outcome(d: Delivery, event: Event) -> None:
    """One line per attempt, Postfix-style: what happened, to whom, where, and the reply."""
    status = event.delivery_status or DeliveryStatus(code=0)
    if event.kind == "delivered":
        outcome = "delivered"
    elif event.severity == "permanent":
        outcome = f"failed ({event.reason})"
    else:
        outcome = f"deferred {status.retry_seconds or 0} s"
    log.info(
        "%s <%s> to <%s> via %s, attempt %d, tls %s: %s %s",
        outcome,
        event.message.headers.message_id if event.message else "",
        d.address,
        status.mx_host or "-",
        status.attempt_no or 0,
        "yes" if status.tls else "no",
        status.code,
        status.message or status.description,
    )
