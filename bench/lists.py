"""A big mailing list: import it, send to it once, and watch every member's copy arrive.

Starts Postfix's `smtp-sink` on a free loopback port and a fresh `python -m mta serve` with
outbound delivery on, whose destination domains d1..d5.bench.test go to the sink
(`dns.static_mx`, nothing looked up off this machine). Then, with N members (default 100,000,
addresses spread over the five domains, each with a name and vars):

1. `mta list import LIST FILE` of a CSV file of N members into list A (the CLI, beside the
   running server);
2. the same N members into list B over HTTP, `POST /v3/lists/<B>/members.json` with 1,000
   members per call, one call after another, as a client script would;
3. one `POST /v3/<domain>/messages` to list A (personalised: %recipient_fname%,
   %recipient.n%, %mailing_list_unsubscribe_url%), timed from the request until the sink has
   taken the last member's copy, and checked afterwards: one stored message for the send, a
   delivered recipient row per member.

    python bench/lists.py [--members 100000] [--size 2048] [--keep]

Peak RSS is the server's VmHWM over the whole run (imports and the send). Bytes stored for the
send: the stored message (one template) and its recipient rows. The figures are printed last,
one `name: value` per line, after a `---` line.
"""

from __future__ import annotations

import argparse
import base64
import csv
import http.client
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from common import DOMAIN, BenchServer, bench_server, cpu_seconds
from delivery import DEST_DOMAINS, Sink, routes, start_sink

LIST_A = f"big@{DOMAIN}"
LIST_B = f"big-json@{DOMAIN}"
CALL = 1000  # members per members.json call (the API's limit)
POLL_S = 0.2


def member(i: int) -> dict[str, object]:
    return {
        "address": f"member{i:07d}@d{i % DEST_DOMAINS + 1}.bench.test",
        "name": f"Member{i} Number{i}",
        "vars": {"n": i, "plan": "gold" if i % 7 == 0 else "basic"},
    }


def write_csv(path: Path, members: int) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["address", "name", "vars"])
        for i in range(members):
            m = member(i)
            writer.writerow([m["address"], m["name"], json.dumps(m["vars"])])


class Api:
    """One keep-alive HTTP/1.1 connection to the server, as a client script holds one."""

    def __init__(self, server: BenchServer, key: str) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        self._auth = "Basic " + base64.b64encode(f"api:{key}".encode()).decode()

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, dict[str, object]]:
        body = urlencode(fields).encode()
        self._conn.request("POST", path, body, {
            "Authorization": self._auth,
            "Content-Type": "application/x-www-form-urlencoded",
        })
        response = self._conn.getresponse()
        data = response.read()
        try:
            answer = json.loads(data)
        except ValueError:
            answer = {"message": data.decode(errors="replace")}
        return response.status, answer

    def close(self) -> None:
        self._conn.close()


def members_in(server: BenchServer, address: str) -> int:
    return server.query(
        "SELECT count(*) FROM list_members WHERE list_id ="
        f" (SELECT id FROM mailing_lists WHERE address = '{address}')"
    )


def import_by_cli(server: BenchServer, work: Path, members: int, fig: dict[str, str]) -> None:
    path = work / "members.csv"
    write_csv(path, members)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mta", "list", "import", LIST_A, str(path)],
        env=server.env, cwd=server.data_dir.parent, capture_output=True, text=True,
        timeout=3600, check=False,
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"mta list import failed: {done.stderr.strip()[-2000:]}")
    print(f"  cli: {done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ''}",
          flush=True)
    found = members_in(server, LIST_A)
    fig["import_cli_s"] = f"{elapsed:.1f}"
    fig["import_cli_members_per_s"] = f"{found / elapsed:.0f}"
    fig["import_cli_members_stored"] = str(found)


def import_by_json(api: Api, server: BenchServer, members: int, fig: dict[str, str]) -> None:
    path = f"/v3/lists/{quote(LIST_B)}/members.json"
    calls = 0
    started = time.monotonic()
    for start in range(0, members, CALL):
        batch = [member(i) for i in range(start, min(start + CALL, members))]
        status, answer = api.post(path, {"members": json.dumps(batch), "upsert": "yes"})
        if status != 200:
            raise SystemExit(f"members.json call {calls + 1} answered {status}: {answer}")
        calls += 1
    elapsed = time.monotonic() - started
    found = members_in(server, LIST_B)
    fig["import_json_s"] = f"{elapsed:.1f}"
    fig["import_json_calls"] = str(calls)
    fig["import_json_ms_per_call"] = f"{elapsed / calls * 1000:.1f}"
    fig["import_json_members_per_s"] = f"{found / elapsed:.0f}"
    fig["import_json_members_stored"] = str(found)


def send_once(api: Api, server: BenchServer, sink: Sink, members: int, size: int,
              fig: dict[str, str], problems: list[str]) -> None:
    filler = ("The quick brown fox jumps over the lazy dog, member %recipient.n%.\n"
              * (size // 64 + 1))[:size]
    before = sink.counters()["mesg"]
    cpu_before = cpu_seconds(server.pid)
    started = time.monotonic()
    status, answer = api.post(f"/v3/{DOMAIN}/messages", {
        "from": f"News <news@{DOMAIN}>",
        "to": LIST_A,
        "subject": "Hello %recipient_fname%, your %recipient.plan% plan",
        "text": filler + "\nLeave the list: %mailing_list_unsubscribe_url%\n",
    })
    answered = time.monotonic() - started
    if status != 200:
        raise SystemExit(f"the send answered {status}: {answer}")
    message_id = str(answer["id"]).strip("<>")
    print(f"  sent <{message_id}>: 200 after {answered * 1000:.0f} ms", flush=True)
    last_report = started
    stalled_since, last_count = time.monotonic(), before
    while True:
        count = sink.counters()["mesg"] - before
        now = time.monotonic()
        if count >= members:
            break
        if count != last_count:
            stalled_since, last_count = now, count
        elif now - stalled_since > 120:
            problems.append(f"the sink stalled at {count} of {members} copies")
            break
        if now - last_report > 10:
            print(f"  {count} copies at the sink after {now - started:.0f} s", flush=True)
            last_report = now
        time.sleep(POLL_S)
    last_copy = time.monotonic() - started
    cpu = cpu_seconds(server.pid) - cpu_before
    time.sleep(1)  # the last outcomes' commits
    conn = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        stored = conn.execute(
            "SELECT count(*), coalesce(sum(length(mime)), 0) FROM messages WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        rows = conn.execute(
            "SELECT count(*), sum(state = 'delivered'),"
            " sum(length(address) + coalesce(length(personal), 0)"
            " + coalesce(length(user_variables), 0) + coalesce(length(mailing_list), 0))"
            " FROM recipients WHERE message_key = (SELECT key FROM messages WHERE message_id = ?)",
            (message_id,),
        ).fetchone()
        per_recipient_copies = conn.execute(
            "SELECT count(*) FROM recipients WHERE mime IS NOT NULL AND message_key ="
            " (SELECT key FROM messages WHERE message_id = ?)", (message_id,),
        ).fetchone()[0]
    finally:
        conn.close()
    if stored[0] != 1:
        problems.append(f"{stored[0]} stored messages for the send (expected 1)")
    if rows[0] != members or rows[1] != members:
        problems.append(f"{rows[0]} recipient rows, {rows[1]} delivered (expected {members})")
    if per_recipient_copies:
        problems.append(f"{per_recipient_copies} recipient rows hold a copy of their own")
    fig["send_answer_ms"] = f"{answered * 1000:.0f}"
    fig["send_to_last_copy_s"] = f"{last_copy:.1f}"
    fig["send_copies_per_s"] = f"{members / last_copy:.0f}"
    fig["send_server_cpu_ms_per_copy"] = f"{cpu / members * 1000:.2f}"
    fig["send_copies_at_sink"] = str(sink.counters()["mesg"] - before)
    fig["send_stored_messages"] = str(stored[0])
    fig["send_stored_message_bytes"] = str(stored[1])
    fig["send_recipient_rows"] = str(rows[0])
    fig["send_recipient_row_bytes"] = str(rows[2] or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=2048, help="message text size in bytes")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    if not 1 <= args.members <= 2_500_000:
        parser.error("--members must be 1..2500000")
    work = Path(tempfile.mkdtemp(prefix="mta-bench-lists-"))
    fig: dict[str, str] = {}
    problems: list[str] = []
    sink = start_sink(work)
    try:
        with bench_server(extra_env=routes(sink.port, one_site=False), keep=args.keep) as server:
            key = server.setup_sending()
            api = Api(server, key)
            for address in (LIST_A, LIST_B):
                status, answer = api.post("/v3/lists", {"address": address, "name": "Big"})
                if status != 200:
                    raise SystemExit(f"creating {address} answered {status}: {answer}")
            print(f"server pid {server.pid}; {args.members} members; sink on {sink.port}",
                  flush=True)
            import_by_cli(server, work, args.members, fig)
            import_by_json(api, server, args.members, fig)
            send_once(api, server, sink, args.members, args.size, fig, problems)
            fig["peak_rss_mb"] = f"{server.peak_rss_kb() / 1024:.0f}"
            fig["store_file_mb"] = f"{server.db_path.stat().st_size / 1e6:.0f}"
            api.close()
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("---")
    print(f"members: {args.members}")
    print(f"message_text_bytes: {args.size}")
    for problem in problems:
        print(f"problem: {problem}")
    for name, value in fig.items():
        print(f"lists_{name}: {value}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
