"""Time to accept one batch send: 1,000 `to` recipients with recipient-variables.

Starts `python -m mta serve` (default configuration, synchronous=FULL) in a temporary data
directory, creates a domain and a key with the CLI, then POSTs the same batch call (`to`
repeated 1,000 times, `recipient-variables` with first/id per address, subject and text using
%recipient.first%) once to warm up and REPEAT more times, timing each call from the first
byte sent to the 200 read (the server answers only after its commit). Checks that every call
left one stored message, 1,000 recipient rows (each renders its personal copy) and accepted
events, reads the peak RSS, stops.

    python bench/batch_accept.py [--repeat 5] [--recipients 1000] [--multipart] [--uvloop]
                                 [--profile FILE]

The figures are printed last, one `name: value` per line.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

from common import DOMAIN, BenchServer, bench_server, median

from mta.accept.template import Personal, Template


def batch_fields(count: int, joined: bool) -> list[tuple[str, str]]:
    addresses = [f"user{i:04d}@example{i % 7}.com" for i in range(count)]
    variables = {a: {"first": f"First{i}", "id": i} for i, a in enumerate(addresses)}
    to = [("to", ", ".join(addresses))] if joined else [("to", a) for a in addresses]
    return [
        ("from", f"Newsletter <news@{DOMAIN}>"),
        *to,
        ("recipient-variables", json.dumps(variables)),
        ("subject", "Hello %recipient.first%, your weekly digest"),
        (
            "text",
            "Hi %recipient.first%,\n\nHere is what happened this week. Your customer id is"
            " %recipient.id%.\n\nSee you next week!\n",
        ),
        ("o:tag", "digest"),
    ]


def encode(fields: list[tuple[str, str]], multipart: bool) -> tuple[bytes, str]:
    if not multipart:
        return urlencode(fields).encode(), "application/x-www-form-urlencoded"
    boundary = secrets.token_hex(16)
    chunks = []
    for name, value in fields:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        )
    chunks.append(f"--{boundary}--\r\n")
    return "".join(chunks).encode(), f"multipart/form-data; boundary={boundary}"


def post(conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    conn.request("POST", f"/v3/{DOMAIN}/messages", body=body, headers=headers)
    resp = conn.getresponse()
    answer = resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200 or b'"id"' not in answer:
        raise RuntimeError(f"batch call answered {resp.status}: {answer[:300]!r}")
    return elapsed


def check_database(server: BenchServer, calls: int, count: int) -> list[str]:
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        recipients = conn.execute("SELECT count(*) FROM recipients").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events WHERE event = 'accepted'").fetchone()[0]
        sample = conn.execute(
            "SELECT m.mime, r.personal FROM recipients r JOIN messages m ON m.key = r.message_key"
            " WHERE r.address = 'user0007@example0.com' LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    # a batch is stored once; a recipient's copy is rendered from it, as the queue renders it
    copy = Template.load(sample[0]).render(Personal.load(sample[1])) if sample else b""
    problems = []
    if messages != calls:
        problems.append(f"{messages} messages rows for {calls} calls")
    if recipients != calls * count or events != calls * count:
        problems.append(f"{recipients} recipients / {events} events, expected {calls * count}")
    if b"Hello First7, your weekly digest" not in copy:
        problems.append("recipient 7's copy is not personalised")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed calls (after one warm-up)")
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--multipart", action="store_true", help="multipart/form-data body")
    parser.add_argument(
        "--joined-to", action="store_true", help="one comma-separated `to` instead of repeated"
    )
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop (bench wrapper)")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the timed calls")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    if not 1 <= args.repeat <= 50 or not 1 <= args.recipients <= 1000:
        parser.error("repeat must be 1..50 and recipients 1..1000 (the server's default limit)")

    body, content_type = encode(batch_fields(args.recipients, args.joined_to), args.multipart)
    with bench_server(uvloop=args.uvloop, keep=args.keep) as server:
        key = server.setup_sending()
        headers = {
            "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode(),
            "Content-Type": content_type,
        }
        print(f"server pid {server.pid}, batch body {len(body)} bytes", flush=True)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        warm = post(conn, body, headers)
        print(f"warm-up call: {warm:.3f} s", flush=True)
        profiler = None
        if args.profile:
            profiler = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(server.pid),
                    "--rate",
                    "500",
                    "--format",
                    "raw",
                    "--threads",
                    "--output",
                    str(args.profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # let py-spy attach
        times = []
        for i in range(args.repeat):
            times.append(post(conn, body, headers))
            print(f"call {i + 1}: {times[-1]:.3f} s", flush=True)
        conn.close()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on interrupt
            profiler.wait(timeout=60)
        peak_rss_kb = server.peak_rss_kb()
        returncode = server.stop()
        problems = check_database(server, args.repeat + 1, args.recipients)
    if returncode != 0:
        problems.append(f"server exited with {returncode}")

    print("---")
    print(f"encoding: {'multipart/form-data' if args.multipart else 'urlencoded'}")
    print(f"event_loop: {'uvloop' if args.uvloop else 'asyncio'}")
    print(f"to_field: {'one comma-separated value' if args.joined_to else 'repeated'}")
    print(f"batch_recipients: {args.recipients}")
    print(f"batch_body_bytes: {len(body)}")
    print(f"batch_calls_timed: {args.repeat}")
    print(f"db_check: {'FAILED: ' + '; '.join(problems) if problems else 'ok'}")
    print(f"server_peak_rss_mib: {peak_rss_kb / 1024:.1f}")
    print(f"batch_accept_max_s: {max(times):.3f}")
    print(f"batch_accept_median_s: {median(times):.3f}")
    print(f"batch_accept_min_s: {min(times):.3f}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
