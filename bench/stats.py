"""Stats: a month of 10 million events counted into a SQLite store, and how fast it reads back.

Issue 12's figures. The bench makes a fresh data directory the normal way (`mta domain add`
migrates the store and adds the domains, `mta key create` the key), then writes `--events`
events (default 10,000,000) spread over the 30 days before today (UTC) into it: a month of
mail for three domains (80 / 12 / 8 %). The main domain's sends carry one or two of 20 tags
(most of them) and one of 2 campaigns (a tenth of them), the second domain's 5 tags, the third
none. Each recipient gets its `accepted` event; then `delivered` a few seconds later, or a
temporary failure (some of them `espblock`) retried up to an hour later, or a permanent
failure (bounce, suppress-bounce / -unsubscribe / -complaint, old; a few delayed bounces after
a delivery); a quarter of the delivered copies are opened, some again and again, a fifth of those
clicked, a few unsubscribed or complained; 1.5 % of the main domain's mail is inbound
(`accepted` incoming, then `stored` or forwarded over HTTP). Every event is a real
`mta.events.model.Event` written through `mta.events.event_statements` (the events INSERT plus
the statements of `mta.stats.counting` that count it), with the tags noted first through
`mta.stats.tags.seen_statements` as accept does, by sqlite3 straight into the store file in
transactions of `--batch` events (default 10,000, in time order, an hour's events at a time;
bench/webhooks.py writes the same way). Payloads are small (a few fields each) to keep the
file a few GB. What was generated is noted beside the store (`bench-stats.json`) and checked
against the counters.

Then it starts `python -m mta serve` on that store (delivery and SMTP off, events kept:
`MTA_EVENTS_RETENTION_DAYS`, so a kept store is not purged) and, with an aiohttp client and
the API key, times requests one after another (`--requests`, default 200, after 10 warm-up
ones): the whole month of the main domain at hour resolution with all 8 events (the
headline, `stats_total_month_hourly_p99_ms`, target < 50), the same at day resolution, the
account (`/v3/stats/total`, every domain summed) hourly, and a tag's
`/v3/<domain>/tags/<tag>/stats` hourly (skipped with a note while the API has no such route).
Timing starts once the server is idle after its start (migrations, the periodic purges it
runs when due: `server_settle_s`). Every answer is checked against what was generated.
Before the server starts, the same
query is timed in this process (`totals.series` + `totals.render` + the JSON encoding), so
the server's own share shows. If `mta.api.stats` has no routes yet, it waits for them
(`--wait-api`, checking every `--poll` s) after the in-process figures.

    python bench/stats.py [--events 10000000] [--batch 10000] [--requests 200]
                          [--store DIR] [--keep] [--wait-api 3600] [--poll 180]

`--store DIR` makes the store in DIR, or reuses the one there (no regeneration) when it holds
as many events; a store in DIR is never deleted. Without it the store is made in $TMPDIR and
deleted at the end unless `--keep`. The figures are printed last, one `name: value` per line,
after a `---` line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import calendar
import email.utils
import heapq
import json
import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import DOMAIN, BenchServer, cpu_seconds, free_port, wait_for_port
from http_accept import machine_cpu

from mta.events import (
    Campaign,
    ClientInfo,
    DeliveryStatus,
    Envelope,
    Event,
    Flags,
    Geolocation,
    MessageHeaders,
    MessageSummary,
    event_statements,
    new_event_ids,
)
from mta.stats import totals
from mta.stats.counting import COUNTERS
from mta.stats.tags import seen_statements
from mta.store.sqlite import SqliteStore

DAYS = 30
HOUR = 3600
META = "bench-stats.json"
EVENTS = ("accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained",
          "stored")
WARMUP_REQUESTS = 10
# (domain, share of the events, tags, campaigns)
DOMAINS = (
    (DOMAIN, 0.80,
     ("newsletter", "weekly-digest", "receipt", "invoice", "password-reset", "welcome",
      "onboarding-1", "onboarding-2", "onboarding-3", "promo-spring", "promo-summer",
      "abandoned-cart", "shipping", "delivery-update", "review-request", "reactivation",
      "alert", "security", "survey", "product-update"),
     ("spring-sale", "summer-launch")),
    ("news.bench.test", 0.12, ("daily", "weekly", "breaking", "sports", "culture"), ()),
    ("tx.bench.test", 0.08, (), ()),
)
PROVIDERS = (("gmail.com", 40), ("yahoo.com", 12), ("outlook.com", 12), ("hotmail.com", 6),
             ("icloud.com", 8), ("aol.com", 2), *((f"corp{i}.example", 1) for i in range(20)))
COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "CA", "NL")
DEVICES = (("desktop", "Windows", "Outlook"), ("mobile", "iOS", "Apple Mail"),
           ("mobile", "Android", "Gmail"), ("tablet", "iOS", "Apple Mail"))
LINKS = tuple(f"https://shop.bench.test/p/{i}" for i in range(5))
PERMANENT = (("bounce", 60), ("suppress-bounce", 25), ("suppress-unsubscribe", 8),
             ("suppress-complaint", 3), ("old", 4))
# the funnel (per outbound recipient)
P_TEMPORARY, P_PERMANENT, P_DELAYED_BOUNCE = 0.06, 0.025, 0.004
P_OPEN, REOPENS, P_CLICK, RECLICKS = 0.25, 0.6, 0.2, 0.3
P_UNSUBSCRIBE, P_COMPLAIN, P_INBOUND = 0.01, 0.001, 0.015


# -- what happens (plain tuples, turned into Events when their hour is written) ----------------


@dataclass
class Send:
    """What every event about one message shares (built once, as the producers do)."""

    domain: str
    message_id: str
    tags: tuple[str, ...]
    campaigns: tuple[str, ...]
    parts: dict[str, Any] = field(default_factory=dict)


# kinds of happening (the first open or click of a copy is told apart when it is planned)
ACCEPTED, INBOUND, DELIVERED, DELIVERED_HTTP, STORED, TEMPORARY, PERMANENT_FAIL = range(7)
DELAYED_BOUNCE, OPENED, CLICKED, UNSUBSCRIBED, COMPLAINED = range(7, 12)
FIRST_OPEN, FIRST_CLICK = range(12, 14)
HITS = {OPENED: "opened", FIRST_OPEN: "opened", CLICKED: "clicked", FIRST_CLICK: "clicked",
        UNSUBSCRIBED: "unsubscribed", COMPLAINED: "complained"}


class Month:
    """Generates the month hour by hour, in time order, and keeps the true counts."""

    def __init__(self, events: int, start: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.start, self.end = start, start + DAYS * 86400
        self.target = events
        weights = []
        for h in range(DAYS * 24):
            day = time.gmtime(start + h * HOUR)
            diurnal = 1 + 0.7 * math.sin((day.tm_hour - 8) / 24 * 2 * math.pi)
            weights.append(max(0.15, diurnal) * (0.6 if day.tm_wday >= 5 else 1.0))
        total = sum(weights)
        running, self.cumulative = 0.0, []
        for w in weights:
            running += w
            self.cumulative.append(events * running / total)
        self.pending: list[tuple[float, int, int, Send, str]] = []  # heap by time
        self.scheduled = 0
        self.serial = 0
        self.recipients = 0
        # true counts: (domain, scope) -> Mailgun sub-total -> n
        self.truth: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self.kinds: Counter[str] = Counter()
        self.providers = [p for p, _ in PROVIDERS]
        self.provider_weights = list(_cumulative([w for _, w in PROVIDERS]))
        # a few tags much more used than the rest
        self.tag_weights = {d: list(_cumulative([1 / (n + 1) for n in range(len(tags))]))
                            for d, _s, tags, _c in DOMAINS}

    def _at(self, ts: float, code: int, send: Send, recipient: str) -> None:
        if ts < self.end:
            self.serial += 1
            heapq.heappush(self.pending, (ts, self.serial, code, send, recipient))
            self.scheduled += 1

    def _recipient(self) -> str:
        provider = self.rng.choices(self.providers, cum_weights=self.provider_weights)[0]
        return f"u{self.rng.randrange(2_000_000)}@{provider}"

    def _send(self, t0: float) -> None:
        rng = self.rng
        pick = rng.random()
        domain, _share, tags, campaigns = DOMAINS[0 if pick < 0.8 else 1 if pick < 0.92 else 2]
        if domain == DOMAIN and rng.random() < P_INBOUND:
            send = Send(domain, self._message_id(t0, domain), (), ())
            recipient = f"inbox{rng.randrange(50)}@{domain}"
            self._at(t0, INBOUND, send, recipient)
            self._at(t0 + rng.uniform(0.5, 3), STORED if rng.random() < 0.7 else DELIVERED_HTTP,
                     send, recipient)
            return
        chosen: tuple[str, ...] = ()
        if tags and (roll := rng.random()) < 0.9:
            chosen = tuple(dict.fromkeys(rng.choices(
                tags, cum_weights=self.tag_weights[domain], k=1 if roll < 0.75 else 2)))
        campaign = (rng.choice(campaigns),) if campaigns and rng.random() < 0.1 else ()
        send = Send(domain, self._message_id(t0, domain), chosen, campaign)
        count = 1 if rng.random() < 0.85 else rng.randint(20, 300)
        # distinct recipients: each (message, recipient) has one first open and one first click
        for rcpt in dict.fromkeys(self._recipient() for _ in range(count)):
            self._recipient_funnel(t0, send, rcpt)

    def _message_id(self, t0: float, domain: str) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(t0))
        return f"{stamp}.{self.rng.getrandbits(64):016x}@{domain}"

    def _recipient_funnel(self, t0: float, send: Send, rcpt: str) -> None:
        rng = self.rng
        self.recipients += 1
        self._at(t0, ACCEPTED, send, rcpt)
        t = t0 + rng.uniform(0.5, 8)
        roll = rng.random()
        delivered_at: float | None = t
        if roll < P_TEMPORARY:
            self._at(t, TEMPORARY, send, rcpt)
            t += rng.uniform(300, 3600)
            again = rng.random()
            if again < 0.10:
                self._at(t, TEMPORARY, send, rcpt)
                t += rng.uniform(3600, 4 * 3600)
            if again > 0.95:
                self._at(t + 8 * 3600, PERMANENT_FAIL, send, rcpt)  # given up: old
                delivered_at = None
            else:
                delivered_at = t
        elif roll < P_TEMPORARY + P_PERMANENT:
            self._at(t, PERMANENT_FAIL, send, rcpt)
            delivered_at = None
        if delivered_at is None:
            return
        self._at(delivered_at, DELIVERED, send, rcpt)
        if rng.random() < P_DELAYED_BOUNCE:
            self._at(delivered_at + rng.uniform(60, 3600), DELAYED_BOUNCE, send, rcpt)
        if rng.random() < P_COMPLAIN:
            self._at(delivered_at + rng.expovariate(1 / (12 * 3600)), COMPLAINED, send, rcpt)
        if rng.random() >= P_OPEN:
            return
        first_open = t = delivered_at + rng.expovariate(1 / (3 * 3600))
        self._at(t, FIRST_OPEN, send, rcpt)
        while rng.random() < REOPENS / (1 + REOPENS):  # geometric: REOPENS more on average
            t += rng.expovariate(1 / (6 * 3600))
            self._at(t, OPENED, send, rcpt)
        if rng.random() < P_UNSUBSCRIBE:
            self._at(first_open + rng.uniform(10, 900), UNSUBSCRIBED, send, rcpt)
        if rng.random() < P_CLICK:
            t = first_open + rng.uniform(5, 600)
            self._at(t, FIRST_CLICK, send, rcpt)
            while rng.random() < RECLICKS / (1 + RECLICKS):
                t += rng.expovariate(1 / (2 * 3600))
                self._at(t, CLICKED, send, rcpt)

    def hours(self) -> Iterator[list[tuple[float, int, int, Send, str]]]:
        """Each hour's happenings in time order (new sends keep the events scheduled so far,
        follow-ups included, on the diurnal curve that adds up to `target`)."""
        for h, wanted in enumerate(self.cumulative):
            hour = self.start + h * HOUR
            per_recipient = self.scheduled / self.recipients if self.recipients else 2.5
            while self.scheduled < wanted - per_recipient / 2:
                self._send(hour + self.rng.uniform(0, HOUR))
            due = []
            while self.pending and self.pending[0][0] < hour + HOUR:
                due.append(heapq.heappop(self.pending))
            yield due

    def count(self, domain: str, send: Send, columns: tuple[str, ...]) -> None:
        scopes = ["", *(f"t:{t}" for t in send.tags), *(f"c:{c}" for c in send.campaigns)]
        for scope in scopes:
            truth = self.truth[(domain, scope)]
            for column in columns:
                truth[column] += 1


class Builder:
    """Turns happenings into the Events the producers would write (shared parts once)."""

    def __init__(self, month: Month) -> None:
        self.month = month
        self.campaign = {c: Campaign(c, c) for *_r, camps in DOMAINS for c in camps}
        # the parts are cut down to a few fields (the file stays a few GB); what is counted
        # (kind, severity, reason, flags, transport, tags, campaigns, ids) is all there
        self.outgoing = Flags(is_authenticated=True)
        self.incoming = Flags(is_authenticated=False, is_routed=True)
        self.delayed = Flags(is_delayed_bounce=True)
        self.ok = DeliveryStatus(code=250, message="OK")
        self.temporary = {
            "generic": DeliveryStatus(code=421, message="Try again later"),
            "greylisted": DeliveryStatus(code=451, message="Greylisted"),
            "espblock": DeliveryStatus(code=421, message="Blocked"),
        }
        self.permanent = {
            "bounce": DeliveryStatus(code=550, message="No such user"),
            "suppress-bounce": DeliveryStatus(code=605, message="Bounced before"),
            "suppress-unsubscribe": DeliveryStatus(code=606, message="Unsubscribed"),
            "suppress-complaint": DeliveryStatus(code=607, message="Complained"),
            "old": DeliveryStatus(code=421, message="Too old"),
        }
        self.forward = Envelope(sender="inbox@" + DOMAIN, transport="http",
                                targets="http://app.bench.test/inbound")
        self.geo = [Geolocation(country=c, region="unknown", city="unknown") for c in COUNTRIES]
        self.clients = [ClientInfo(client_type="email client", client_os=o, device_type=d,
                                   client_name=n) for d, o, n in DEVICES]
        self.reasons = [r for r, _ in PERMANENT]
        self.reason_weights = [w for _, w in PERMANENT]

    def _message(self, send: Send, full: bool) -> MessageSummary:
        key = "full" if full else "id"
        found = send.parts.get(key)
        if found is None:
            headers = (MessageHeaders(message_id=send.message_id, subject="Hello")
                       if full else MessageHeaders(message_id=send.message_id))
            found = send.parts[key] = MessageSummary(headers=headers, size=2048 if full else 0)
        return found

    def event(self, ts: float, code: int, send: Send, rcpt: str, event_id: str) -> Event:
        """The Event of one happening; its true counts are noted as it is made."""
        rng, month = self.month.rng, self.month
        common: dict[str, Any] = {"id": event_id, "timestamp": ts, "recipient": rcpt}
        if send.tags:
            common["tags"] = send.tags
        if send.campaigns:
            common["campaigns"] = tuple(self.campaign[c] for c in send.campaigns)
        domain = send.domain
        if code == ACCEPTED:
            month.count(domain, send, ("accepted_outgoing",))
            return Event("accepted", method="http", flags=self.outgoing,
                         message=self._message(send, True), **common)
        if code == INBOUND:
            month.count(domain, send, ("accepted_incoming",))
            return Event("accepted", method="smtp", flags=self.incoming,
                         message=self._message(send, True), **common)
        if code == DELIVERED:
            month.count(domain, send, ("delivered_smtp",))
            return Event("delivered", delivery_status=self.ok, message=self._message(send, True),
                         **common)
        if code == DELIVERED_HTTP:
            month.count(domain, send, ("delivered_http",))
            return Event("delivered", envelope=self.forward, delivery_status=self.ok,
                         message=self._message(send, True), **common)
        if code == STORED:
            month.count(domain, send, ("stored",))
            return Event("stored", message=self._message(send, True), **common)
        if code == TEMPORARY:
            reason = rng.choices(("generic", "greylisted", "espblock"), (75, 15, 10))[0]
            month.count(domain, send, ("failed_temporary",) + (
                ("failed_temporary_espblock",) if reason == "espblock" else ()))
            return Event("failed", severity="temporary", reason=reason,
                         delivery_status=self.temporary[reason],
                         message=self._message(send, True), **common)
        if code in (PERMANENT_FAIL, DELAYED_BOUNCE):
            reason = ("bounce" if code == DELAYED_BOUNCE
                      else rng.choices(self.reasons, self.reason_weights)[0])
            detail = ("failed_permanent_delayed_bounce" if code == DELAYED_BOUNCE
                      else f"failed_permanent_{reason.replace('-', '_')}")
            month.count(domain, send, ("failed_permanent", detail))
            return Event("failed", severity="permanent", reason=reason,
                         delivery_status=self.permanent[reason],
                         flags=self.delayed if code == DELAYED_BOUNCE else None,
                         message=self._message(send, True), **common)
        kind = HITS[code]
        first = code in (FIRST_OPEN, FIRST_CLICK)
        month.count(domain, send, (kind, f"{kind}_unique") if first else (kind,))
        if code == COMPLAINED:
            return Event(kind, message=self._message(send, False), **common)
        return Event(kind, message=self._message(send, False), geolocation=rng.choice(self.geo),
                     client_info=rng.choice(self.clients),
                     url=rng.choice(LINKS) if kind == "clicked" else None, **common)


def _cumulative(weights: list[float]) -> Iterator[float]:
    running = 0.0
    for w in weights:
        running += w
        yield running


# -- writing the store -------------------------------------------------------------------------


def write_month(db: Path, month: Month, batch: int) -> dict[str, str]:
    """Every hour's events through event_statements, `batch` events a transaction."""
    builder = Builder(month)
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")  # as the server writes
    conn.execute("PRAGMA cache_size=-262144")
    written = transactions = 0
    build_s = write_s = 0.0
    began = time.monotonic()
    last_report = began
    buffer: list[tuple[float, int, int, Send, str]] = []

    def flush() -> None:
        nonlocal written, transactions, build_s, write_s
        t0 = time.perf_counter()
        ids = new_event_ids(len(buffer))
        by_domain: dict[str, list[Event]] = defaultdict(list)
        tags_seen: dict[str, dict[str, None]] = defaultdict(dict)
        for (ts, _serial, code, send, rcpt), event_id in zip(buffer, ids, strict=True):
            by_domain[send.domain].append(builder.event(ts, code, send, rcpt, event_id))
            if code == ACCEPTED and send.tags:
                tags_seen[send.domain].update(dict.fromkeys(send.tags))
        statements = []
        for domain, events in sorted(by_domain.items()):
            if tags_seen[domain]:
                # as accept does: the send's tags noted before its events are counted
                statements += seen_statements(domain, list(tags_seen[domain]),
                                              events[0].timestamp, 4000)
            statements += event_statements(domain, events)
            month.kinds.update(e.kind for e in events)
        t1 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for statement in statements:
            if statement.rows:
                conn.executemany(statement.sql, statement.rows)
        conn.execute("COMMIT")
        t2 = time.perf_counter()
        build_s += t1 - t0
        write_s += t2 - t1
        written += len(buffer)
        transactions += 1
        buffer.clear()

    for due in month.hours():
        for item in due:
            buffer.append(item)
            if len(buffer) >= batch:
                flush()
        now = time.monotonic()
        if now - last_report >= 30:
            last_report = now
            print(f"[generate] {written:,} events, {written / (now - began):,.0f}/s"
                  f" (build {build_s:.0f} s, write {write_s:.0f} s)", flush=True)
    if buffer:
        flush()
    elapsed = time.monotonic() - began
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"[generate] {written:,} events in {elapsed:.0f} s: {written / elapsed:,.0f}/s",
          flush=True)
    return {
        "generate_events_per_s": f"{written / elapsed:.0f}",
        "generate_s": f"{elapsed:.0f}",
        "generate_build_s": f"{build_s:.0f}",
        "generate_write_s": f"{write_s:.0f}",
        "generate_transactions": str(transactions),
        "generate_events_per_transaction": f"{written / max(1, transactions):.0f}",
        "generate_recipients": str(month.recipients),
    }


# -- the server --------------------------------------------------------------------------------


def server_env(data_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "MTA_SERVER_DATA_DIR": str(data_dir),
        "MTA_API_LISTEN": f"127.0.0.1:{port}",
        "MTA_SERVER_LOG_LEVEL": "warning",
        "MTA_DNS_ONLY_ANSWERS": "true",
        "MTA_OUTBOUND_ENABLED": "false",
        "MTA_SMTP_SUBMISSION": "", "MTA_SMTP_SUBMISSION_TLS": "",
        "MTA_SMTP_SUBMISSION_ALT": "", "MTA_SMTP_MX": "",
        # a kept store stays whole: no event falls out of retention between runs
        "MTA_EVENTS_RETENTION_DAYS": "36500",
    })
    return env


@contextmanager
def serve(root: Path) -> Iterator[BenchServer]:
    """`python -m mta serve` on the store in root/var (run from root: the installed mta)."""
    port = free_port()
    env = server_env(root / "var", port)
    log_path = root / "serve.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mta", "serve"], env=env, cwd=root,
                                stdout=log, stderr=subprocess.STDOUT)
    server = BenchServer(proc, port, env, root / "var", log_path)
    try:
        wait_for_port(port, proc, timeout=120)
        yield server
    finally:
        server.stop()


def make_store(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh data directory (migrated, the domains and a key made by the CLI), the month
    written into it; returns what is noted in META."""
    root.mkdir(parents=True, exist_ok=True)
    env = server_env(root / "var", 0)

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "mta", *args], env=env, cwd=root,
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"mta {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    for domain, *_rest in DOMAINS:
        cli("domain", "add", domain)
    key = cli("key", "create", "--description", "bench").strip().splitlines()[-1]
    db = root / "var" / "mta.db"
    today = calendar.timegm((*time.gmtime()[:3], 0, 0, 0))
    start = today - DAYS * 86400
    month = Month(args.events, start, args.seed)
    print(f"[generate] {args.events:,} events over {DAYS} days from"
          f" {time.strftime('%Y-%m-%d', time.gmtime(start))} into {db}", flush=True)
    figures = write_month(db, month, args.batch)
    meta = {
        "events": sum(month.kinds.values()),
        "target_events": args.events,
        "start": start,
        "end": month.end,
        "key": key,
        "kinds": dict(month.kinds),
        "truth": {f"{d}|{s}": dict(c) for (d, s), c in month.truth.items()},
        "generated": figures,
        "generated_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (root / META).write_text(json.dumps(meta, indent=1))
    return meta


def store_figures(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        fig = {}
        for table in ("events", "stats_counters", "stats_uniques", "tag_aggregates",
                      "campaign_events", "tags"):
            (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            fig[f"rows_{table}"] = str(n)
        for resolution, n in conn.execute(
                "SELECT resolution, count(*) FROM stats_counters GROUP BY resolution"):
            fig[f"rows_stats_counters_{resolution}"] = str(n)
        (scopes,) = conn.execute("SELECT count(DISTINCT domain || scope) FROM stats_counters"
                                 ).fetchone()
        fig["counter_scopes"] = str(scopes)
        (avg,) = conn.execute("SELECT avg(length(payload)) FROM (SELECT payload FROM events"
                              " LIMIT 100000)").fetchone()
        fig["event_payload_avg_bytes"] = f"{avg:.0f}"
    finally:
        conn.close()
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())
    fig["store_file_mib"] = f"{size / 2**20:.0f}"
    return fig


def check_counters(db: Path, meta: dict[str, Any]) -> list[str]:
    """Each scope's month, day and hour counters add up to what was generated."""
    problems = []
    sums = ", ".join(f"sum({c})" for c in COUNTERS)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for key, truth in meta["truth"].items():
            domain, scope = key.split("|", 1)
            want = tuple(truth.get(c, 0) for c in COUNTERS)
            for resolution in ("hour", "day", "month"):
                got = conn.execute(
                    f"SELECT {sums} FROM stats_counters WHERE domain = ? AND scope = ?"
                    " AND resolution = ?", (domain, scope, resolution)).fetchone()
                got = tuple(v or 0 for v in got)
                if got != want:
                    diff = {c: (g, w) for c, g, w in zip(COUNTERS, got, want, strict=True)
                            if g != w}
                    problems.append(f"{domain} {scope or 'domain'} {resolution}: {diff}")
    finally:
        conn.close()
    return problems


# -- timing the reads --------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def expected_totals(truth: dict[str, int]) -> dict[str, int]:
    """What the rendered answer's totals must sum to, by event."""
    return {
        "accepted": truth.get("accepted_incoming", 0) + truth.get("accepted_outgoing", 0),
        "delivered": truth.get("delivered_smtp", 0) + truth.get("delivered_http", 0),
        "failed": truth.get("failed_temporary", 0) + truth.get("failed_permanent", 0),
        **{k: truth.get(k, 0) for k in ("opened", "clicked", "unsubscribed", "complained",
                                         "stored", "opened_unique", "clicked_unique")},
    }


def answer_totals(body: dict[str, Any]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for item in body["stats"]:
        for event in EVENTS:
            part = item.get(event, {})
            if event == "failed":
                out[event] += (part.get("temporary", {}).get("total", 0)
                               + part.get("permanent", {}).get("total", 0))
            else:
                out[event] += part.get("total", 0)
            if event in ("opened", "clicked"):
                out[f"{event}_unique"] += part.get("unique", 0)
    return dict(out)


def summed(meta: dict[str, Any], scope: str, domain: str | None) -> dict[str, int]:
    total: Counter[str] = Counter()
    for key, truth in meta["truth"].items():
        d, s = key.split("|", 1)
        if s == scope and (domain is None or d == domain):
            total.update(truth)
    return dict(total)


async def in_process(db: Path, meta: dict[str, Any], requests: int) -> dict[str, str]:
    """The hourly month query in this process: the read, the rendering, the JSON."""
    store = await SqliteStore.open(db)
    fig: dict[str, str] = {}
    try:
        series_ms, render_ms, total_ms = [], [], []
        for n in range(WARMUP_REQUESTS + requests):
            t0 = time.perf_counter()
            period = totals.Period.of(start=meta["start"], end=meta["end"] - 1,
                                      resolution="hour", duration=None)
            counts = await totals.series(store, period, domain=DOMAIN)
            t1 = time.perf_counter()
            body = orjson.dumps(totals.render(period, counts, EVENTS))
            t2 = time.perf_counter()
            if n >= WARMUP_REQUESTS:
                series_ms.append(1000 * (t1 - t0))
                render_ms.append(1000 * (t2 - t1))
                total_ms.append(1000 * (t2 - t0))
        got = answer_totals(orjson.loads(body))
        want = expected_totals(summed(meta, "", DOMAIN))
        fig["inprocess_check"] = "ok" if got == want else f"FAILED: {got} != {want}"
        fig["inprocess_month_hourly_buckets"] = str(len(orjson.loads(body)["stats"]))
    finally:
        await store.close()
    for name, values in (("series", series_ms), ("render_json", render_ms), ("", total_ms)):
        prefix = f"inprocess_month_hourly{'_' + name if name else ''}"
        fig[f"{prefix}_p50_ms"] = f"{pct(values, 0.5):.2f}"
        fig[f"{prefix}_p99_ms"] = f"{pct(values, 0.99):.2f}"
        fig[f"{prefix}_max_ms"] = f"{max(values):.2f}"
    return fig


def api_routes() -> int:
    """How many routes mta.api.stats has now, asked of a fresh interpreter (the file may be
    being written while this runs); -1 if it does not import."""
    done = subprocess.run(
        [sys.executable, "-c", "from mta.api import stats; print(len(stats.ROUTES))"],
        capture_output=True, text=True, cwd=tempfile.gettempdir(), check=False)
    return int(done.stdout) if done.returncode == 0 else -1


async def over_http(server: BenchServer, meta: dict[str, Any], requests: int) -> dict[str, str]:
    auth = "Basic " + base64.b64encode(f"api:{meta['key']}".encode()).decode()
    start, end = meta["start"], meta["end"] - 1
    # the main domain's most used tag
    tag = max((key.split("|", 1)[1] for key in meta["truth"] if key.startswith(f"{DOMAIN}|t:")),
              key=lambda s: meta["truth"][f"{DOMAIN}|{s}"].get("accepted_outgoing", 0))
    queries = [
        ("stats_total_month_hourly", f"/v3/{DOMAIN}/stats/total", "hour", "", DOMAIN),
        ("stats_total_month_daily", f"/v3/{DOMAIN}/stats/total", "day", "", DOMAIN),
        ("account_stats_total_month_hourly", "/v3/stats/total", "hour", "", None),
        ("tag_stats_month_hourly", f"/v3/{DOMAIN}/tags/{tag[2:]}/stats", "hour", tag, DOMAIN),
    ]
    fig: dict[str, str] = {"tag_measured": tag[2:]}
    problems: list[str] = []
    async with aiohttp.ClientSession(headers={"Authorization": auth}) as session:
        for name, path, resolution, scope, domain in queries:
            times: list[float] = []
            dates: tuple[str, str] | tuple[int, int] = (
                email.utils.formatdate(start, usegmt=True),
                email.utils.formatdate(end, usegmt=True),
            )
            params: list[tuple[str, str]] = []
            status, body, size, answered = 0, b"", 0, 0
            for n in range(WARMUP_REQUESTS + requests):
                params = [*(("event", e) for e in EVENTS), ("resolution", resolution),
                          ("start", str(dates[0])), ("end", str(dates[1]))]
                t0 = time.perf_counter()
                async with session.get(server.url + path, params=params) as resp:
                    body = await resp.read()
                    status = resp.status
                elapsed = 1000 * (time.perf_counter() - t0)
                if n == 0 and status == 400 and isinstance(dates[0], str):
                    dates = (start, end)  # RFC 2822 refused: Mailgun takes epoch seconds too
                    continue
                if status != 200:
                    break
                size = len(body)
                answered += 1
                if answered == 1:  # the first read of these rows since the server started
                    fig[f"{name}_first_ms"] = f"{elapsed:.1f}"
                if n >= WARMUP_REQUESTS:
                    times.append(elapsed)
            if status in (404, 405) and not answered:
                said = json.loads(body).get("message", "") if body.startswith(b"{") else ""
                fig[name] = (f"skipped ({path.replace(DOMAIN, '<domain>')} answered {status}"
                             f" {said!r}: no such route yet)")
                continue
            if status != 200:
                problems.append(f"{name}: {status} {body[:200]!r}")
                continue
            answer = json.loads(body)
            buckets = len(answer["stats"])
            fig[f"{name}_buckets"] = str(buckets)
            fig[f"{name}_response_bytes"] = str(size)
            fig[f"{name}_p50_ms"] = f"{pct(times, 0.5):.1f}"
            fig[f"{name}_p99_ms"] = f"{pct(times, 0.99):.1f}"
            fig[f"{name}_max_ms"] = f"{max(times):.1f}"
            fig[f"{name}_over_20ms"] = str(sum(t > 20 for t in times))
            fig[f"{name}_dates"] = "rfc2822" if isinstance(dates[0], str) else "epoch"
            want = expected_totals(summed(meta, scope, domain))
            got = answer_totals(answer)
            if got != want:
                problems.append(f"{name}: totals {got} != generated {want}")
            if buckets != (DAYS * 24 if resolution == "hour" else DAYS):
                problems.append(f"{name}: {buckets} buckets")
    fig["http_check"] = "FAILED: " + "; ".join(problems) if problems else "ok"
    return fig


def measure_http(root: Path, meta: dict[str, Any], requests: int) -> dict[str, str]:
    with serve(root) as server:
        # the store's start-up work first (migrations, the periodic purges): wait until the
        # server is idle, so that the requests are timed alone
        started = time.monotonic()
        before = cpu_seconds(server.pid)
        while time.monotonic() - started < 300:
            time.sleep(1)
            now = cpu_seconds(server.pid)
            if now - before < 0.02:
                break
            before = now
        fig = {"server_settle_s": f"{time.monotonic() - started:.0f}"}
        cpu0, machine0, wall0 = cpu_seconds(server.pid), machine_cpu(), time.monotonic()
        self0 = time.process_time()
        fig |= asyncio.run(over_http(server, meta, requests))
        wall = time.monotonic() - wall0
        server_cpu = cpu_seconds(server.pid) - cpu0
        machine = [b - a for a, b in zip(machine0, machine_cpu(), strict=True)]
        mine = time.process_time() - self0
        cores = os.cpu_count() or 1
        busy = 100 * cores * (sum(machine) - machine[3] - machine[4]) / max(1, sum(machine))
        fig["server_cpu_pct_while_timed"] = f"{100 * server_cpu / wall:.0f}"
        fig["other_processes_cpu_pct"] = f"{max(0.0, busy - 100 * (server_cpu + mine) / wall):.0f}"
        fig["server_peak_rss_mib"] = f"{server.peak_rss_kb() / 1024:.0f}"
        code = server.stop()
    log = server.log_path.read_text(errors="replace")
    bad = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    fig["server_exit"] = str(code)
    fig["server_log_errors"] = str(len(bad))
    return fig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="events per transaction")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per query")
    parser.add_argument("--store", type=Path, help="make the store here, or reuse it")
    parser.add_argument("--keep", action="store_true", help="keep a store made in $TMPDIR")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--wait-api", type=float, default=3600,
                        help="seconds to wait for the stats API routes to exist")
    parser.add_argument("--poll", type=float, default=180, help="seconds between checks")
    args = parser.parse_args()

    root = args.store.resolve() if args.store else Path(tempfile.mkdtemp(prefix="mta-stats-"))
    figures: dict[str, str] = {}
    try:
        meta_path = root / META
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        if meta is not None and meta["target_events"] != args.events:
            parser.error(f"{root} holds a store of {meta['target_events']} events, not"
                         f" {args.events}: use another --store")
        if meta is None:
            if (root / "var").exists():
                parser.error(f"{root}/var exists but has no {META}: not a store of this bench")
            meta = make_store(root, args)
        else:
            print(f"[generate] reusing {root} ({meta['events']:,} events, generated"
                  f" {meta['generated_at']})", flush=True)
        db = root / "var" / "mta.db"
        figures |= meta["generated"]
        figures["events"] = str(meta["events"])
        figures |= {f"events_{k}": str(v) for k, v in sorted(meta["kinds"].items())}
        figures["month"] = (f"{time.strftime('%Y-%m-%d', time.gmtime(meta['start']))} to"
                            f" {time.strftime('%Y-%m-%d', time.gmtime(meta['end'] - 1))}")
        figures |= store_figures(db)
        problems = check_counters(db, meta)
        figures["counter_check"] = "FAILED: " + "; ".join(problems[:5]) if problems else "ok"
        figures |= asyncio.run(in_process(db, meta, args.requests))
        deadline = time.monotonic() + args.wait_api
        while api_routes() <= 0:
            if time.monotonic() >= deadline:
                break
            print(f"[http] mta.api.stats has no routes yet; checking again in {args.poll:.0f} s",
                  flush=True)
            time.sleep(min(args.poll, max(1.0, deadline - time.monotonic())))
        if api_routes() > 0:
            figures |= measure_http(root, meta, args.requests)
        else:
            figures["stats_total_month_hourly"] = "skipped (mta.api.stats has no routes)"
    finally:
        if args.store is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"store kept in {root}", file=sys.stderr)
    print("---")
    print(f"cpus: {os.cpu_count()}")
    for name, value in figures.items():
        print(f"{name}: {value}")
    checks = [v for k, v in figures.items() if k.endswith("check")]
    return 0 if all(v == "ok" for v in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
