"""Queue inspection and control (issue 14): what waits for each destination, a message's
recipients and their next attempt, retry now, and pausing a destination.

A destination is a recipient domain (what follows the address's first '@', lower case).
A pause is admin data (`queue_pauses`, bumping admin_version), so every node's scheduler sees it
at once: it puts a paused destination's recipients back for PAUSED_DEFER_S without an attempt,
and `resume` makes those due again at once. Counts come from the store, so they are the
cluster's; what only a scheduler knows (throttling, the last reply) is added by the caller from
the node's own scheduler (mta.outbound.scheduler.running).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from mta.events.lookup import LastAttempt, last_attempts
from mta.store import Statement, Store

MAX_LIMIT = 1000
MAX_NAME = 255  # a domain name is at most 253 characters; anything longer is not one
PAUSED_DEFER_S = 120.0  # a paused destination's recipients are looked at again after this
_DESTINATION = "lower(substr(address, instr(address, '@') + 1))"  # as the index of migration 12
_STATS = (
    f"SELECT {_DESTINATION} AS destination, count(*) AS queued,"
    " sum(CASE WHEN lease_until > ?1 THEN 1 ELSE 0 END) AS in_flight,"
    " sum(CASE WHEN lease_until <= ?1 AND due_at > ?1 THEN 1 ELSE 0 END) AS deferred,"
    " min(CASE WHEN lease_until <= ?1 THEN due_at END) AS next_due,"
    " min(id) AS oldest FROM recipients WHERE state = 'queued'"
)
_HOLD = (
    "UPDATE recipients SET lease_until = 0, due_at = CASE WHEN EXISTS"
    " (SELECT 1 FROM queue_pauses WHERE destination = ?)"
    " THEN CAST(? AS DOUBLE PRECISION) ELSE CAST(? AS DOUBLE PRECISION) END"
    " WHERE id = ? AND state = 'queued'"
)


def destination_of(address: str) -> str:
    """The destination of a recipient address, as the queries here compute it."""
    return address.partition("@")[2].lower()


def clean_name(name: str) -> str | None:
    """A destination named by an operator, lower case; None if it cannot be a domain."""
    name = name.strip().strip(".").lower()
    if not name or len(name) > MAX_NAME or any(c.isspace() or c in "@/" for c in name):
        return None
    return name


@dataclass(frozen=True)
class Pause:
    destination: str
    paused_at: float
    reason: str


class Pauses:
    """The paused destinations, read again whenever admin data moves (on any node)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._version = -1
        self.paused: dict[str, Pause] = {}

    async def refresh(self) -> bool:
        """Read the pauses again if admin data moved; whether any destination was newly
        paused (its recipients already in memory should go back)."""
        version = self._store.admin_version()
        if version == self._version:
            return False
        before = set(self.paused)
        self.paused = {p.destination: p for p in await all_pauses(self._store)}
        self._version = version
        return bool(set(self.paused) - before)


async def all_pauses(store: Store) -> list[Pause]:
    rows = await store.fetchall(
        "SELECT destination, paused_at, reason FROM queue_pauses ORDER BY destination"
    )
    return [Pause(r["destination"], r["paused_at"], r["reason"]) for r in rows]


async def pause_of(store: Store, destination: str) -> Pause | None:
    row = await store.fetchone(
        "SELECT destination, paused_at, reason FROM queue_pauses WHERE destination = ?",
        (destination,),
    )
    return None if row is None else Pause(row["destination"], row["paused_at"], row["reason"])


def hold_statement(held: Iterable[tuple[int, str]], now: float) -> Statement:
    """Recipients (id, destination) of paused destinations back to the store without an
    attempt: due after PAUSED_DEFER_S, or at once if the pause is gone by the time this
    commits (a resume that raced the scheduler)."""
    return Statement(
        _HOLD, [(destination, now + PAUSED_DEFER_S, now, rid) for rid, destination in held]
    )


# -- destinations -------------------------------------------------------------------------------


@dataclass
class Destination:
    """What waits for one destination, across every node."""

    name: str
    queued: int = 0  # recipients not yet delivered or failed for good
    in_flight: int = 0  # leased by a node's scheduler
    deferred: int = 0  # due later (a retry, a scheduled send, a pause)
    next_due: float | None = None  # the earliest time one not in flight is due
    oldest_at: float | None = None  # when the oldest queued message was accepted
    pause: Pause | None = None

    @property
    def due(self) -> int:
        return self.queued - self.in_flight - self.deferred


def destination_state(d: Destination, throttled: bool, unreachable: bool) -> str:
    """"paused" (by an operator), "throttled" (the site asked us to slow down), "unreachable",
    "deferred" (everything waits for a later time), else "active". Throttling and reachability
    are what a node's scheduler knows (mta.outbound.scheduler.SiteView)."""
    if d.pause is not None:
        return "paused"
    if throttled:
        return "throttled"
    if unreachable:
        return "unreachable"
    if d.queued and d.deferred == d.queued:
        return "deferred"
    return "active"


async def destinations(store: Store, now: float, limit: int) -> list[Destination]:
    """The `limit` destinations with the most queued recipients (most first), then paused
    destinations with nothing queued."""
    rows = await store.fetchall(
        f"{_STATS} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?2", (now, min(limit, MAX_LIMIT))
    )
    found = await _described(store, rows)
    pauses = {p.destination: p for p in await all_pauses(store)}
    for d in found:
        d.pause = pauses.pop(d.name, None)
    room = min(limit, MAX_LIMIT) - len(found)
    found += [Destination(name, pause=p) for name, p in list(pauses.items())[: max(room, 0)]]
    return found


async def destination(store: Store, name: str, now: float) -> Destination | None:
    """One destination; None if nothing is queued for it and it is not paused."""
    rows = await store.fetchall(f"{_STATS} AND {_DESTINATION} = ?2 GROUP BY 1", (now, name))
    pause = await pause_of(store, name)
    found = await _described(store, rows)
    if not found:
        return None if pause is None else Destination(name, pause=pause)
    found[0].pause = pause
    return found[0]


async def _described(store: Store, rows: list) -> list[Destination]:
    """Destinations from aggregate rows, with the age of each one's oldest queued message."""
    found = [
        Destination(
            name=r["destination"],
            queued=int(r["queued"]),
            in_flight=int(r["in_flight"] or 0),
            deferred=int(r["deferred"] or 0),
            next_due=r["next_due"],
        )
        for r in rows
    ]
    oldest = {int(r["oldest"]): d for r, d in zip(rows, found, strict=True)}
    if oldest:
        marks = ",".join("?" * len(oldest))
        for row in await store.fetchall(
            "SELECT r.id, m.created_at FROM recipients r JOIN messages m"
            f" ON m.key = r.message_key WHERE r.id IN ({marks})",
            list(oldest),
        ):
            oldest[int(row["id"])].oldest_at = row["created_at"]
    return found


# -- messages -----------------------------------------------------------------------------------


@dataclass
class QueuedRecipient:
    address: str
    state: str  # queued, delivered, failed
    attempts: int
    due_at: float | None  # the next attempt (queued and not in flight)
    in_flight: bool
    mailing_list: str | None
    last: LastAttempt | None = None


@dataclass
class QueuedMessage:
    key: str  # the storage key
    message_id: str
    domain: str  # the sending domain
    created_at: float
    recipients: list[QueuedRecipient] = field(default_factory=list)
    more: bool = False  # more recipients than were read


def recipient_state(r: QueuedRecipient, paused: Collection[str]) -> str:
    """delivered or failed; while queued: "in-flight", "paused" (its destination is, `paused`
    being the paused destinations), else "queued"."""
    if r.state != "queued":
        return r.state
    if r.in_flight:
        return "in-flight"
    if destination_of(r.address) in paused:
        return "paused"
    return "queued"


async def messages(
    store: Store, ident: str, now: float, domain: str | None = None, limit: int = MAX_LIMIT
) -> list[QueuedMessage]:
    """The messages a storage key or Message-Id (angle brackets or not) names, of `domain` if
    given, with up to `limit` recipients each (newest message first; a Message-Id may be
    reused by a client that sends again)."""
    ident = ident.strip().strip("<>")
    if not ident or len(ident) > 1000:
        return []
    sql = (
        "SELECT key, message_id, domain, created_at FROM messages"
        " WHERE (key = ? OR message_id = ?)"
    )
    params: list = [ident, ident]
    if domain is not None:
        sql += " AND domain = ?"
        params.append(domain)
    rows = await store.fetchall(sql + " ORDER BY created_at DESC LIMIT 10", params)
    found = []
    for row in rows:
        message = QueuedMessage(row["key"], row["message_id"], row["domain"], row["created_at"])
        recipients = await store.fetchall(
            "SELECT address, state, attempts, due_at, lease_until, mailing_list FROM recipients"
            " WHERE message_key = ? ORDER BY id LIMIT ?",
            (message.key, limit + 1),
        )
        message.more = len(recipients) > limit
        for r in recipients[:limit]:
            in_flight = r["state"] == "queued" and r["lease_until"] > now
            message.recipients.append(
                QueuedRecipient(
                    address=r["address"],
                    state=r["state"],
                    attempts=int(r["attempts"]),
                    due_at=r["due_at"] if r["state"] == "queued" and not in_flight else None,
                    in_flight=in_flight,
                    mailing_list=r["mailing_list"],
                )
            )
        last = await last_attempts(store, message.message_id,
                                   [r.address for r in message.recipients])
        for r in message.recipients:
            r.last = last.get(r.address.lower())
        found.append(message)
    return found


# -- control ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retried:
    retried: int  # made due now
    in_flight: int  # being delivered already (nothing to do)
    waiting: int = 0  # not tried yet: they keep their time (a scheduled send)


async def retry_destination(store: Store, name: str, now: float) -> Retried:
    """Every recipient of the destination that waits for a retry is due now. Rows never tried
    keep their time: a sender may have scheduled them for later."""
    changed = await store.write_returning(
        f"UPDATE recipients SET due_at = ?1 WHERE state = 'queued' AND {_DESTINATION} = ?2"
        " AND lease_until = 0 AND due_at > ?1 AND attempts > 0 RETURNING id",
        (now, name),
    )
    row = await store.fetchone(
        "SELECT sum(CASE WHEN lease_until > ?1 THEN 1 ELSE 0 END) AS in_flight,"
        " sum(CASE WHEN lease_until <= ?1 AND due_at > ?1 THEN 1 ELSE 0 END) AS waiting"
        f" FROM recipients WHERE state = 'queued' AND {_DESTINATION} = ?2",
        (now, name),
    )
    return Retried(len(changed), int(row["in_flight"] or 0), int(row["waiting"] or 0))


async def retry_recipients(
    store: Store, message_key: str, now: float, address: str | None = None
) -> Retried:
    """A message's queued recipients (or the one named) are due now, whatever their time: the
    operator named them."""
    sql = "UPDATE recipients SET due_at = ?1 WHERE message_key = ?2 AND state = 'queued'"
    sql += " AND lease_until = 0 AND due_at > ?1"
    params: list = [now, message_key]
    if address is not None:
        sql += " AND lower(address) = lower(?3)"
        params.append(address)
    changed = await store.write_returning(sql + " RETURNING id", params)
    count = "SELECT count(*) AS n FROM recipients WHERE message_key = ?2 AND state = 'queued'"
    count += " AND lease_until > ?1"
    if address is not None:
        count += " AND lower(address) = lower(?3)"
    row = await store.fetchone(count, params)
    return Retried(len(changed), int(row["n"]))


async def retry_messages(
    store: Store, found: Iterable[QueuedMessage], now: float, address: str | None = None
) -> Retried | None:
    """retry_recipients for each of the messages a lookup found (summed); None if `address`
    is named but is a recipient of none of them."""
    found = list(found)
    if address is not None and not any(
        r.address.lower() == address.lower() for m in found for r in m.recipients
    ):
        return None
    retried = in_flight = 0
    for m in found:
        done = await retry_recipients(store, m.key, now, address)
        retried += done.retried
        in_flight += done.in_flight
    return Retried(retried, in_flight)


async def pause(store: Store, name: str, now: float, reason: str = "") -> Pause:
    """Pause deliveries to a destination (again: its first pause stays)."""
    await store.write(
        Statement(
            "INSERT INTO queue_pauses (destination, paused_at, reason) VALUES (?, ?, ?)"
            " ON CONFLICT (destination) DO NOTHING",
            [(name, now, reason[:500])],
        )
    )
    found = await pause_of(store, name)
    assert found is not None
    return found


async def resume(store: Store, name: str, now: float) -> bool:
    """Deliveries to the destination go on; what its pause put back is due at once. False if
    it was not paused."""
    if await pause_of(store, name) is None:
        return False
    await store.write(
        Statement("DELETE FROM queue_pauses WHERE destination = ?", [(name,)]),
        Statement(
            f"UPDATE recipients SET due_at = ?1 WHERE state = 'queued' AND {_DESTINATION} = ?2"
            " AND lease_until = 0 AND due_at > ?1 AND due_at <= ?3",
            [(now, name, now + PAUSED_DEFER_S + 1)],
        ),
    )
    return True
