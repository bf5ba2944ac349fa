"""Route evaluation time per message, with 100 and 1,000 routes.

Runs in this process (evaluation does no I/O, so no server is needed): a store in a temporary
directory, `Routes` on it, routes created through `Routes.create` like the API does. The routes
are what Mailgun users write: mostly `match_recipient` (exact addresses, whole domains, plus
addressing, named captures fed to forward URLs), some `match_header` (subject keywords, the
spam flag) and `and` combinations, one `catch_all()` last. Each message has a recipient (60 % on
a routed domain, the rest elsewhere) and 14 ordinary headers. After one warm-up pass, each
message is timed alone around `await routes.evaluate(recipient, headers)`.

Then what one stranger's message costs the event loop when a route's pattern backtracks badly on
it: each recipient evaluated as `Inbound.receive` does, within the message's matching time
(ROUTES_BUDGET_S), timed from the first recipient to the last, by the clock and in CPU time
(what `regex`'s timeout counts; the clock shows more when other processes take the CPU). The
routes: the hostile one, then the 1,000 ordinary ones. The messages: Subject `a`*40 `b`*900 `c`
against `(a?){20}a{20}[ab]{900}$` (seconds per value in `re`, some ms in `regex`), once and 200
times; `a`*900 `!` against `(a|aa)+$` (exponential in `regex` too), to 1 and to 10 recipients.

    python bench/route_eval.py [--messages 5000] [--counts 100,1000] [--seed 1]
                               [--attack-rounds 20]

The figures are printed last, one `name: value` per line, after a `---` line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mta.config import Config
from mta.inbound import ROUTES_BUDGET_S
from mta.inbound.routes import MatchingTime, Routes, RoutesOutOfTime
from mta.store.sqlite import SqliteStore as Store

DOMAINS = 40


def route_specs(count: int, rng: random.Random) -> list[tuple[int, str, list[str]]]:
    """(priority, expression, actions) for `count` routes, the last a catch_all()."""
    specs: list[tuple[int, str, list[str]]] = []
    for i in range(count - 1):
        domain = f"d{i % DOMAINS}.example"
        esc = domain.replace(".", "\\.")
        kind = rng.random()
        priority = rng.randint(0, 100)
        if kind < 0.40:
            expression = f'match_recipient("user{i}@{domain}")'
            actions = [f'forward("http://app.example/in/{i}")']
        elif kind < 0.55:
            expression = f'match_recipient(".*@{domain}")'
            actions = ['store(notify="http://app.example/stored")']
        elif kind < 0.65:
            expression = f'match_recipient("^user{i}\\+(.*)@{esc}$")'
            actions = ['forward("http://app.example/plus?tag=\\1")', "stop()"]
        elif kind < 0.75:
            expression = f'match_recipient("(?P<user>.*?)@(?P<domain>{esc})")'
            actions = ['forward("http://app.example/\\g<domain>/\\g<user>")']
        elif kind < 0.85:
            expression = f'match_recipient("^(support|sales|info)-{i}@{esc}$")'
            actions = [f'forward("team{i}@corp.example")']
        elif kind < 0.92:
            expression = f'match_header("subject", ".*(urgent|help|asap) {i}")'
            actions = ['forward("http://app.example/urgent")']
        elif kind < 0.96:
            expression = "match_header('X-Mailgun-Sflag', 'Yes')"
            actions = ['store(notify="http://app.example/spam")', "stop()"]
        else:
            expression = (
                f"match_recipient('^(.*)@{esc}$') and "
                f'match_header("Content-Language", "^(.*)en-US(.*)$")'
            )
            actions = ['forward("http://app.example/en/\\1")']
        specs.append((priority, expression, actions))
    specs.append((1000, "catch_all()", ['forward("http://app.example/catchall")']))
    return specs


def messages(
    count: int, routes: int, rng: random.Random
) -> list[tuple[str, list[tuple[str, str]]]]:
    out = []
    for n in range(count):
        i = rng.randrange(routes)
        roll = rng.random()
        if roll < 0.30:
            rcpt = f"user{i}@d{i % DOMAINS}.example"
        elif roll < 0.40:
            rcpt = f"user{i}+news@d{i % DOMAINS}.example"
        elif roll < 0.60:
            rcpt = f"someone{n}@d{rng.randrange(DOMAINS)}.example"
        else:
            rcpt = f"person{n}@elsewhere{n % 97}.example.org"
        subject = rng.choice(["Hello", "Invoice 2231", f"urgent {i}", "Re: your order", "help me"])
        headers = [
            ("Received", f"from mx{n % 7}.sender.example (mx.sender.example [192.0.2.{n % 250}])"),
            ("Received", "from localhost (localhost [127.0.0.1]) by mx.sender.example"),
            ("DKIM-Signature", "v=1; a=rsa-sha256; d=sender.example; s=s1; h=from:to; b=abc"),
            ("From", f"Sender {n} <sender{n}@sender.example>"),
            ("To", rcpt),
            ("Subject", subject),
            ("Date", "Sun, 22 Nov 2026 06:00:00 +0000"),
            ("Message-Id", f"<{n}.{i}@sender.example>"),
            ("MIME-Version", "1.0"),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Language", rng.choice(["en-US", "fr-FR", "de"])),
            ("X-Mailgun-Incoming", "Yes"),
            ("X-Envelope-From", f"<sender{n}@sender.example>"),
            ("X-Mailgun-Sflag", "Yes" if rng.random() < 0.05 else "No"),
        ]
        out.append((rcpt, headers))
    return out


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(count: int, message_count: int, seed: int, figures: dict[str, str]) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="route-eval-") as tmp:
        store = await Store.open(Path(tmp) / "mta.db")
        try:
            routes = Routes(store, Config())
            specs = route_specs(count, rng)
            await asyncio.gather(*(routes.create(p, "", e, a) for p, e, a in specs))
            started = time.perf_counter()
            table = await routes.table()
            build_ms = (time.perf_counter() - started) * 1000
            assert len(table) == count, (len(table), count)
            batch = messages(message_count, count, rng)
            for rcpt, headers in batch[:200]:  # warm-up
                await routes.evaluate(rcpt, headers)
            times_us: list[float] = []
            matched = 0
            for rcpt, headers in batch:
                t0 = time.perf_counter_ns()
                result = await routes.evaluate(rcpt, headers)
                times_us.append((time.perf_counter_ns() - t0) / 1000)
                matched += len(result)
        finally:
            await store.close()
    prefix = f"route_eval_{count}"
    print(
        f"{count} routes: {message_count} messages, {matched / message_count:.2f} matched routes"
        f" per message, table built in {build_ms:.0f} ms",
        flush=True,
    )
    figures[f"{prefix}_p50_us"] = f"{percentile(times_us, 0.50):.1f}"
    figures[f"{prefix}_p99_us"] = f"{percentile(times_us, 0.99):.1f}"
    figures[f"{prefix}_max_us"] = f"{max(times_us):.1f}"
    figures[f"{prefix}_mean_us"] = f"{statistics.fmean(times_us):.1f}"
    figures[f"{prefix}_matches_per_msg"] = f"{matched / message_count:.2f}"
    figures[f"{prefix}_table_build_ms"] = f"{build_ms:.1f}"


STRANGER_SUBJECT = "a" * 40 + "b" * 900 + "c"
# name: (pattern of the hostile route, Subject values, recipients)
ATTACKS = {
    "costly_subject_once": ("(a?){20}a{20}[ab]{900}$", [STRANGER_SUBJECT], 1),
    "costly_subject_x200": ("(a?){20}a{20}[ab]{900}$", [STRANGER_SUBJECT] * 200, 1),
    "runaway_1_rcpt": ("(a|aa)+$", ["a" * 900 + "!"], 1),
    "runaway_10_rcpts": ("(a|aa)+$", ["a" * 900 + "!"], 10),
}


async def measure_attacks(rounds: int, figures: dict[str, str]) -> None:
    logging.getLogger("mta.inbound.routes").setLevel(logging.ERROR)  # one warning per message
    for name, (pattern, subjects, recipients) in ATTACKS.items():
        with tempfile.TemporaryDirectory(prefix="route-eval-") as tmp:
            store = await Store.open(Path(tmp) / "mta.db")
            try:
                routes = Routes(store, Config())
                await routes.create(-1, "", f'match_header("Subject", "{pattern}")', ["store()"])
                specs = route_specs(1000, random.Random(1))
                await asyncio.gather(*(routes.create(p, "", e, a) for p, e, a in specs))
                await routes.table()
                headers = [("From", "<stranger@elsewhere.example>")]
                headers += [("Subject", subject) for subject in subjects]
                times_ms: list[float] = []
                cpu_ms: list[float] = []
                for _ in range(rounds):
                    started, cpu = time.perf_counter(), time.process_time()
                    budget = MatchingTime(ROUTES_BUDGET_S)
                    for n in range(recipients):
                        with contextlib.suppress(RoutesOutOfTime):
                            await routes.evaluate(f"user{n}@d{n}.example", headers, budget)
                    times_ms.append((time.perf_counter() - started) * 1000)
                    cpu_ms.append((time.process_time() - cpu) * 1000)
            finally:
                await store.close()
        figures[f"route_eval_attack_{name}_median_ms"] = f"{statistics.median(times_ms):.1f}"
        figures[f"route_eval_attack_{name}_max_ms"] = f"{max(times_ms):.1f}"
        figures[f"route_eval_attack_{name}_cpu_max_ms"] = f"{max(cpu_ms):.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--counts", default="100,1000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--attack-rounds", type=int, default=20)
    args = parser.parse_args()
    figures: dict[str, str] = {}
    for count in (int(c) for c in args.counts.split(",")):
        await measure(count, args.messages, args.seed, figures)
    await measure_attacks(args.attack_rounds, figures)
    print("---")
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    asyncio.run(main())
