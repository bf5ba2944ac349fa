"""`mta queue ...` (issue 14): queue inspection and control from the command line, on the
server's store (mta.queue.control; counts are every node's, a pause reaches every node's
scheduler through admin_version). What only a running scheduler knows (throttling, the last
reply) is the API's."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable

from mta.dates import rfc2822
from mta.queue import control
from mta.services import Services

NAME = "queue"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `mta queue` and its actions to the CLI."""
    queue = sub.add_parser(NAME, parents=[common], help="inspect and steer the outbound queue")
    actions = queue.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[common],
                                 help="destinations with queued mail, most first")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (<= 1000)")
    show = actions.add_parser("show", parents=[common],
                              help="a message's recipients and their next attempt")
    show.add_argument("message", help="its Message-Id or storage key")
    retry = actions.add_parser("retry", parents=[common], help="try again now")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--destination", help="every recipient of this domain waiting to retry")
    which.add_argument("--message", help="a message's queued recipients (Message-Id or key)")
    retry.add_argument("--recipient", help="with --message: only this recipient")
    pause = actions.add_parser("pause", parents=[common],
                               help="stop deliveries to a destination (every node)")
    pause.add_argument("destination")
    pause.add_argument("--reason", default="", help="a note shown with the pause")
    resume = actions.add_parser("resume", parents=[common],
                                help="deliver to a paused destination again")
    resume.add_argument("destination")


def _fail(message: str) -> int:
    print(f"mta: {message}", file=sys.stderr)
    return 1


def _when(ts: float | None, now: float) -> str:
    """A time relative to now, short: 'now', 'in 5m', '3h ago'."""
    if ts is None:
        return "-"
    delta = ts - now
    if abs(delta) < 1:
        return "now"
    amount = _span(abs(delta))
    return f"in {amount}" if delta > 0 else f"{amount} ago"


def _span(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


async def _list(s: Services, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= control.MAX_LIMIT:
        return _fail(f"--limit must be from 1 to {control.MAX_LIMIT}")
    now = time.time()
    found = await control.destinations(s.store, now, args.limit)
    if not found:
        print("the queue is empty")
        return 0
    rows = [
        (
            d.name,
            "paused" if d.pause else "",
            str(d.queued),
            str(d.in_flight),
            str(d.deferred),
            _span(now - d.oldest_at) if d.oldest_at is not None else "-",
            _when(d.next_due, now),
        )
        for d in found
    ]
    _table(("DESTINATION", "STATE", "QUEUED", "IN-FLIGHT", "DEFERRED", "OLDEST", "NEXT"), rows)
    return 0


async def _show(s: Services, args: argparse.Namespace) -> int:
    now = time.time()
    found = await control.messages(s.store, args.message, now)
    if not found:
        return _fail(f"no such message: {args.message}")
    paused = {p.destination for p in await control.all_pauses(s.store)}
    for m in found:
        print(f"Message <{m.message_id}> from {m.domain}, storage key {m.key}")
        print(f"accepted {rfc2822(m.created_at)}")
        rows = []
        for r in m.recipients:
            state = control.recipient_state(r, paused)
            last = "-"
            if r.last is not None:
                last = f"{r.last.event} {r.last.code} {r.last.message}"[:80]
            next_attempt = _when(r.due_at, now) if r.state == "queued" else "-"
            rows.append((r.address, state, str(r.attempts), next_attempt, last))
        _table(("RECIPIENT", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "LAST"), rows)
        if m.more:
            print(f"(only the first {control.MAX_LIMIT} recipients are shown)")
    return 0


async def _retry(s: Services, args: argparse.Namespace) -> int:
    now = time.time()
    if args.destination is not None:
        if args.recipient is not None:
            return _fail("--recipient goes with --message")
        name = control.clean_name(args.destination)
        if name is None or await control.destination(s.store, name, now) is None:
            return _fail(f"nothing queued for {args.destination}")
        done = await control.retry_destination(s.store, name, now)
        print(f"{name}: {done.retried} recipient(s) retried now, {done.in_flight} in flight,"
              f" {done.waiting} not tried yet (they keep their time)")
        return 0
    found = await control.messages(s.store, args.message, now)
    if not found:
        return _fail(f"no such message: {args.message}")
    retried = await control.retry_messages(s.store, found, now, args.recipient)
    if retried is None:
        return _fail(f"{args.recipient} is not a recipient of {args.message}")
    print(f"{retried.retried} recipient(s) retried now, {retried.in_flight} in flight")
    return 0


async def _pause(s: Services, args: argparse.Namespace) -> int:
    name = control.clean_name(args.destination)
    if name is None:
        return _fail(f"not a destination domain: {args.destination!r}")
    if args.action == "pause":
        paused = await control.pause(s.store, name, time.time(), args.reason)
        print(f"{name}: paused since {rfc2822(paused.paused_at)}")
        return 0
    if not await control.resume(s.store, name, time.time()):
        return _fail(f"{name} is not paused")
    print(f"{name}: resumed")
    return 0


def work(args: argparse.Namespace) -> Callable[[Services], Awaitable[int]]:
    actions = {"list": _list, "show": _show, "retry": _retry, "pause": _pause, "resume": _pause}
    action = actions[args.action]

    async def run(s: Services) -> int:
        return await action(s, args)

    return run
