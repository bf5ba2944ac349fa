"""Adversarial inputs (issue 9's figures): event-loop stalls, memory under a slow flood of big
messages, peak memory for one big message, disk for a big batch, and the parsers' worst times.

Each part starts its own `mta serve` (bench/serve.py with the loop-lag probe,
MTA_BENCH_LOOP_LAG) on free loopback ports, with the MX and the STARTTLS submission listeners
on, delivery off (nothing leaves; accepted mail stays queued), a domain, an API key, an SMTP
credential, and one route, `match_recipient(".*@mg\\.bench\\.test")` -> `stop()`: received
mail is routed (an `accepted` event) and its content is not kept.

- `lag`: the server's event-loop stall (the largest overshoot of a 1 ms sleep on its loop) while
  it handles, one at a time: a 1 MB `from` in POST /v3/<domain>/messages (urlencoded and
  multipart: 400), header blocks on the MX port (999 fields: 250; 50,000 fields in 250 KB:
  refused by the field cap; 50,000 `X-A: b` lines, 400 KB: refused by the byte cap), and a
  25 MB message of 500,000 empty MIME parts on the MX (refused by the part cap); idle first.
- `flood`: 200 MX connections (over 25 source addresses, 127.0.0.2-26: the MX allows 10 per
  address) each send a 25 MB message at 400 KB/s, all at once, from a client process of its
  own; meanwhile a small HTTP send and a small SMTP submission (STARTTLS + AUTH) every 2 s.
  The server's peak RSS, the small sends' latency, and what the 200 were answered.
- `big`: one 24 MB message over HTTP (a 17.5 MB attachment, multipart: base64 makes it 24 MB),
  over HTTP as /messages.mime, and over SMTP submission (aiosmtplib, STARTTLS + AUTH), each on
  a fresh server: its RSS before, peak (VmHWM), and (peak - before) / message size.
- `batch`: 1,000 recipients with recipient-variables and a 10 MB attachment over HTTP: the
  database + WAL growth (live, after a checkpoint, after the server stopped) and peak RSS.
- `parsers`: in this process, the worst time of `split_addresses` and `MessageHead.parse`
  over adversarial inputs of the sizes the server allows (256 KiB).

Every part ends with a check of the store (what was answered as accepted is there, nothing
else) and of the server's log (no errors).

    python bench/adversarial.py [--parts lag,flood,big,batch,parsers] [--flood-connections 200]
        [--flood-bytes 25000000] [--flood-rate 400000] [--env MTA_X=Y] [--keep]

The figures are printed last, one `name: value` per line, after a `---` line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import DOMAIN, BenchServer, bench_server, free_port, median, proc_status, wait_for_port
from http_accept import fs_type
from inbound_accept import STARTUP_NOTICES, api_post

LOGIN = f"bench@{DOMAIN}"
PASSWORD = "bench-adversarial-1"
INBOX = f"inbox@{DOMAIN}"
SENDER = "alice@sender.bench.test"
ROUTE_EXPRESSION = r'match_recipient(".*@mg\.bench\.test")'
RCPT_DOMAIN = "rcpt.bench.test"  # outbound recipients (delivery is off: they stay queued)
MB = 1_000_000
MiB = 1024 * 1024
PARTS = ("lag", "flood", "big", "batch", "parsers")
LAG_TARGET_MS = 50
LOG_NOTICES = (*STARTUP_NOTICES, "DATA spool full")  # expected warnings (the flood's 451s)


# -- figures -------------------------------------------------------------------------------------


@dataclass
class Figures:
    lines: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, value: object) -> None:
        if isinstance(value, float):
            value = f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
        self.lines.append((name, str(value)))
        print(f"  {name}: {value}", flush=True)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)
            print(f"  PROBLEM: {problem}", flush=True)


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Running:
    server: BenchServer
    key: str
    mx_port: int
    submission_port: int
    lag_path: Path
    lag_seq: int = 0

    @property
    def auth(self) -> str:
        return "Basic " + base64.b64encode(f"api:{self.key}".encode()).decode()

    def rss_kb(self) -> int:
        return proc_status(self.server.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return proc_status(self.server.pid, "VmHWM")

    def lag_clear(self) -> None:
        os.kill(self.server.pid, signal.SIGUSR1)
        time.sleep(0.05)

    def lag_read(self) -> dict[str, float]:
        """The probe's record since the last clear (SIGUSR2; the file is replaced whole)."""
        os.kill(self.server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                report = json.loads(self.lag_path.read_text())
                if report["seq"] > self.lag_seq:
                    self.lag_seq = report["seq"]
                    return report
            time.sleep(0.02)
        raise RuntimeError("the loop-lag probe did not answer (bench/serve.py)")


def server_env(args: argparse.Namespace, mx_port: int, submission_port: int,
               lag_path: Path) -> dict[str, str]:
    env = {
        "MTA_SMTP_MX": f"127.0.0.1:{mx_port}",
        "MTA_SMTP_SUBMISSION": f"127.0.0.1:{submission_port}",
        "MTA_SMTP_SUBMISSION_TLS": "",
        "MTA_SMTP_SUBMISSION_ALT": "",
        "MTA_OUTBOUND_ENABLED": "false",  # accept only: nothing is delivered anywhere
        "MTA_BENCH_LOOP_LAG": str(lag_path),
    }
    env.update(item.split("=", 1) for item in args.env)
    return env


@contextlib.contextmanager
def running_server(args: argparse.Namespace, name: str) -> Iterator[Running]:
    """A fresh server with the domain, key, credential and stop() route; retried once a minute
    later when it does not start (others may be editing mta/ half-way)."""
    for attempt in range(3):
        mx_port, submission_port = free_port(), free_port()
        lag_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"mta-bench-lag-{os.getpid()}-{name}"
        env = server_env(args, mx_port, submission_port, lag_path)
        try:
            context = bench_server(extra_env=env, keep=args.keep)
            server = context.__enter__()
        except (RuntimeError, TimeoutError) as exc:
            if attempt == 2:
                raise
            print(f"server did not start ({exc}); retrying in 60 s", flush=True)
            time.sleep(60)
            continue
        break
    try:
        wait_for_port(mx_port, server.proc)
        wait_for_port(submission_port, server.proc)
        key = server.setup_sending(DOMAIN)
        server.cli("credential", "add", DOMAIN, LOGIN, "--password", PASSWORD)
        api_post(server, key, "/v3/routes",
                 [("priority", "0"), ("expression", ROUTE_EXPRESSION), ("action", "stop()")])
        print(f"[{name}] server pid {server.pid}, API {server.url}, MX {mx_port}, submission"
              f" {submission_port}, data dir on {fs_type(server.data_dir)}", flush=True)
        yield Running(server, key, mx_port, submission_port, lag_path)
    except BaseException:
        context.__exit__(*sys.exc_info())
        lag_path.unlink(missing_ok=True)
        raise
    else:
        context.__exit__(None, None, None)
        lag_path.unlink(missing_ok=True)


def log_problems(run: Running, figures: Figures, part: str) -> None:
    """Errors in the server's log; warnings other than the expected ones."""
    lines = run.server.log_path.read_text(errors="replace").splitlines()
    errors = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln or " CRITICAL " in ln]
    warnings = [ln for ln in lines if " WARNING " in ln and not any(n in ln for n in LOG_NOTICES)]
    figures.check(not errors, f"{part}: server log has errors: {errors[:1]}")
    figures.check(not warnings, f"{part}: server log has warnings: {warnings[:1]}")


def stop_server(run: Running, figures: Figures, part: str) -> None:
    code = run.server.stop()
    figures.check(code == 0, f"{part}: server exited with {code}")
    log_problems(run, figures, part)


def db_rows(run: Running, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{run.server.db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def db_count(run: Running, sql: str, params: tuple[object, ...] = ()) -> int:
    return int(db_rows(run, sql, params)[0][0])


# -- clients -------------------------------------------------------------------------------------


async def read_reply(reader: asyncio.StreamReader) -> str:
    """One SMTP reply; its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("the server closed the connection")
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if len(text) < 4 or text[3] != "-":
            return text


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str,
                  want: str) -> str:
    writer.write(line.encode() + b"\r\n")
    reply = await read_reply(reader)
    if not reply.startswith(want):
        raise SmtpRefused(f"{line.split(':')[0]}: {reply}")
    return reply


class SmtpRefused(Exception):
    pass


async def mx_open(port: int, local: str = "127.0.0.1", message_id: str = "",
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain MX session up to the 354 (the MX offers no AUTH)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(local, 0), limit=1 << 20
    )
    greeting = await read_reply(reader)
    if not greeting.startswith("220"):
        writer.close()
        raise SmtpRefused(f"greeting: {greeting}")
    await command(reader, writer, "EHLO client.bench.test", "250")
    await command(reader, writer, f"MAIL FROM:<{SENDER}>", "250")
    await command(reader, writer, f"RCPT TO:<{INBOX}>", "250")
    await command(reader, writer, "DATA", "354")
    return reader, writer


async def mx_send(port: int, data: bytes) -> tuple[str, float]:
    """Send one message (already CRLF, nothing to dot-stuff) to the MX: (reply, seconds from
    the first DATA byte to the reply)."""
    reader, writer = await mx_open(port)
    began = time.perf_counter()
    writer.write(data)
    writer.write(b".\r\n")
    await writer.drain()
    reply = await read_reply(reader)
    elapsed = time.perf_counter() - began
    with contextlib.suppress(Exception):
        writer.write(b"QUIT\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    return reply, elapsed


async def http_post(run: Running, path: str, data: object, timeout: float = 300
                    ) -> tuple[int, dict[str, object], float]:
    """(status, JSON answer, seconds) of one POST on a fresh connection."""
    import aiohttp

    began = time.perf_counter()
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), headers={"Authorization": run.auth}
    ) as session, session.post(run.server.url + path, data=data) as response:
        text = await response.text()
        status = response.status
    elapsed = time.perf_counter() - began
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"text": text[:200]}
    return status, answer, elapsed


async def smtp_submit(run: Running, mime: bytes, rcpt: str) -> tuple[str, float]:
    """A submission as a mail client makes it (aiosmtplib: connect, STARTTLS, EHLO, AUTH,
    MAIL/RCPT/DATA): (the DATA reply, seconds from connecting to it)."""
    import aiosmtplib

    began = time.perf_counter()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=run.submission_port, start_tls=False,
                             validate_certs=False, timeout=300)
    await client.connect()
    try:
        await client.starttls()
        await client.ehlo()
        await client.login(LOGIN, PASSWORD)
        try:
            _, reply = await client.sendmail(LOGIN, [rcpt], mime)
        except aiosmtplib.SMTPResponseException as exc:
            reply = f"{exc.code} {exc.message}"
        elapsed = time.perf_counter() - began
        with contextlib.suppress(Exception):
            await client.quit()
    finally:
        client.close()
    return (reply if reply[:3].isdigit() else f"250 {reply}"), elapsed


def queued_id(reply: str) -> str:
    """The Message-Id in a submission's 250 ('... queued as <id>')."""
    return reply.rpartition("<")[2].rstrip(">").strip()


# -- messages ------------------------------------------------------------------------------------


def base64_lines(size: int, seed: int = 7) -> bytes:
    """`size` bytes of base64-looking 76-character lines (CRLF ends): what an attachment is."""
    rnd = random.Random(seed)
    block = base64.encodebytes(rnd.randbytes(57 * 1024)).replace(b"\n", b"\r\n")  # 78-byte lines
    body = block * (size // len(block) + 1)
    cut = body[:size]
    return cut[: cut.rfind(b"\r\n") + 2]


def small_mime(message_id: str, frm: str = LOGIN, to: str = f"friend@{RCPT_DOMAIN}") -> bytes:
    return (
        f"From: {frm}\r\nTo: {to}\r\nSubject: a normal message\r\n"
        f"Message-Id: <{message_id}>\r\n\r\nHello, this is a small message.\r\n"
    ).encode()


def head_lines(message_id: str, extra: str = "") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {INBOX}\r\nSubject: adversarial\r\n"
        f"Message-Id: <{message_id}>\r\n{extra}"
    ).encode()


def many_fields_message(message_id: str, fields: int, line: bytes) -> bytes:
    """A message whose header block has `fields` fields in all (4 ordinary ones)."""
    return head_lines(message_id) + line * (fields - 4) + b"\r\nbody\r\n"


def many_parts_message(message_id: str, parts: int, size: int) -> bytes:
    """A multipart message of `parts` empty parts, about `size` bytes (the boundary length)."""
    per_part = max(10, size // parts)
    boundary = b"b" * (per_part - 8)  # "\r\n--" + boundary + "\r\n" + "\r\n"
    head = head_lines(message_id, "MIME-Version: 1.0\r\n") + (
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
    )
    first = b"--" + boundary + b"\r\n\r\n"
    return head + first + (b"\r\n--" + boundary + b"\r\n\r\n") * (parts - 1) + (
        b"\r\n--" + boundary + b"--\r\n"
    )


def big_mime(message_id: str, size: int, frm: str = LOGIN) -> bytes:
    """A multipart message with one base64 attachment, `size` bytes in all."""
    head = (
        f"From: {frm}\r\nTo: friend@{RCPT_DOMAIN}\r\nSubject: a big message\r\n"
        f"Message-Id: <{message_id}>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="bench-boundary"\r\n\r\n'
        "--bench-boundary\r\nContent-Type: text/plain\r\n\r\nSee the file.\r\n"
        "--bench-boundary\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="big.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    tail = b"--bench-boundary--\r\n"
    return head + base64_lines(size - len(head) - len(tail)) + tail


def attachment_for(message_bytes: int) -> int:
    """Raw attachment size whose base64 (76 characters + CRLF a line) makes `message_bytes`."""
    return int(message_bytes * 57 / 78)


# -- part 1: event-loop stalls -------------------------------------------------------------------


ADVERSARIAL_ADDRESS_CHARS = '"(,:<\\'


def lag_cases() -> list[tuple[str, str, object, str]]:
    """(name, kind, payload, expected reply start)."""
    one_mb = (ADVERSARIAL_ADDRESS_CHARS * (MiB // len(ADVERSARIAL_ADDRESS_CHARS) + 1))[:MiB]
    return [
        ("http_from_1mb_urlencoded", "http_urlencoded", one_mb, "400"),
        ("http_from_1mb_multipart", "http_multipart", one_mb, "400"),
        ("mx_header_999_fields", "mx",
         many_fields_message("lag-999@sender.bench.test", 999, b"X-A: b\r\n"), "250"),
        ("mx_header_50000_fields_250kb", "mx",
         many_fields_message("lag-50k@sender.bench.test", 50_000, b"X:b\r\n"), "552"),
        ("mx_header_50000_lines_400kb", "mx",
         many_fields_message("lag-50k-long@sender.bench.test", 50_000, b"X-A: b\r\n"), "552"),
        ("mx_mime_500000_parts_25mb", "mx",
         many_parts_message("lag-parts@sender.bench.test", 500_000, 25 * MB), "552"),
    ]


async def run_lag_case(run: Running, kind: str, payload: object) -> tuple[str, float, int]:
    """(reply, seconds, bytes sent) of one case."""
    if kind == "mx":
        assert isinstance(payload, bytes)
        reply, elapsed = await mx_send(run.mx_port, payload)
        return reply, elapsed, len(payload)
    import aiohttp

    fields = [("from", payload), ("to", f"friend@{RCPT_DOMAIN}"), ("subject", "big from"),
              ("text", "hello")]
    if kind == "http_urlencoded":
        status, answer, elapsed = await http_post(
            run, f"/v3/{DOMAIN}/messages", aiohttp.FormData(fields)
        )
        wire = len(urllib.parse.urlencode(fields))
        return f"{status} {answer.get('message', '')}"[:120], elapsed, wire
    form = aiohttp.FormData()
    for name, value in fields:
        form.add_field(name, value, content_type="text/plain; charset=utf-8")  # multipart
    status, answer, elapsed = await http_post(run, f"/v3/{DOMAIN}/messages", form)
    return f"{status} {answer.get('message', '')}"[:120], elapsed, len(str(payload))


def part_lag(args: argparse.Namespace, figures: Figures) -> None:
    print("== lag: event-loop stalls, one adversarial input at a time", flush=True)
    with running_server(args, "lag") as run:
        time.sleep(1.0)  # start-up work settles
        run.lag_clear()
        time.sleep(args.idle_s)
        idle = run.lag_read()
        figures.add("lag_idle_max_ms", idle["max_ms"])
        figures.add("lag_idle_p99_ms", idle["p99_ms"])
        worst = 0.0
        answered: dict[str, str] = {}
        for name, kind, payload, want in lag_cases():
            run.lag_clear()
            reply, elapsed, sent = asyncio.run(run_lag_case(run, kind, payload))
            time.sleep(0.3)  # work after the reply (a commit, a thread finishing) counts too
            lag = run.lag_read()
            worst = max(worst, lag["max_ms"])
            answered[name] = reply
            print(f"[lag] {name}: {sent} bytes sent, reply {reply[:80]!r} in"
                  f" {elapsed * 1000:.0f} ms, loop lag max {lag['max_ms']} ms", flush=True)
            figures.add(f"lag_{name}_max_ms", lag["max_ms"])
            figures.add(f"lag_{name}_reply", reply[:60])
            figures.add(f"lag_{name}_answered_ms", round(elapsed * 1000))
            figures.check(reply.startswith(want), f"lag {name}: expected {want}, got {reply!r}")
        figures.add("lag_worst_max_ms", worst)
        figures.add("lag_target_met", "yes" if worst < LAG_TARGET_MS else "NO")
        stop_server(run, figures, "lag")
        # the store: the 999-field message routed (one accepted event, content not kept), the
        # two HTTP refusals recorded as rejected events, nothing else
        events = dict(db_rows(run, "SELECT event, count(*) FROM events GROUP BY event"))
        inbound_ids = [r[0] for r in db_rows(
            run, "SELECT message_id FROM events WHERE event = 'accepted'")]
        messages = db_count(run, "SELECT count(*) FROM messages")
        kept = db_count(run, "SELECT count(*) FROM inbound") + db_count(
            run, "SELECT count(*) FROM inbound_mime")
        ok = (events == {"accepted": 1, "rejected": 2}
              and inbound_ids == ["lag-999@sender.bench.test"] and messages == 0 and kept == 0)
        figures.check(ok, f"lag: store holds events {events}, accepted {inbound_ids},"
                          f" {messages} messages, {kept} inbound rows (expected 1 accepted,"
                          " 2 rejected, nothing else)")
        figures.add("lag_db_check", "ok" if ok else "FAILED")


# -- part 2: the slow flood ----------------------------------------------------------------------


async def flood_client(config: dict[str, object]) -> None:
    """The flood, in its own process: `connections` MX sessions, each sending `bytes` at
    `rate` bytes/s. Prints `ready N`, then `flowing`, then one JSON line per session at the end
    (`result {...}`)."""
    port = int(config["port"])  # type: ignore[arg-type]
    connections = int(config["connections"])  # type: ignore[arg-type]
    addresses = int(config["addresses"])  # type: ignore[arg-type]
    size = int(config["bytes"])  # type: ignore[arg-type]
    rate = float(config["rate"])  # type: ignore[arg-type]
    tick = float(config["tick"])  # type: ignore[arg-type]
    body = base64_lines(size)
    shared = memoryview(body)  # one copy for every session
    everyone_ready = asyncio.Event()
    settled = [0]
    results: list[dict[str, object]] = []

    def one_settled() -> None:
        settled[0] += 1
        if settled[0] == connections:
            print(f"ready {sum(1 for r in results if r.get('code') is None)}", flush=True)
            everyone_ready.set()

    async def session(i: int) -> None:
        result: dict[str, object] = {"i": i, "code": None}
        results.append(result)
        local = f"127.0.0.{2 + i % addresses}"
        message_id = f"flood-{i}@sender.bench.test"
        result["message_id"] = message_id
        try:
            reader, writer = await mx_open(port, local)
        except (OSError, SmtpRefused) as exc:
            result["code"] = "open:" + str(exc)[:80]
            print("result " + json.dumps(result), flush=True)
            one_settled()
            return
        one_settled()
        await everyone_ready.wait()
        head = head_lines(message_id) + b"\r\n"
        total = len(head) + len(body)  # the body ends with CRLF
        began = time.monotonic() + random.random() * tick
        await asyncio.sleep(began - time.monotonic())
        sent = 0
        try:
            while sent < total:
                due = min(total, int(rate * (time.monotonic() - began + tick)))
                if due > sent:
                    if sent < len(head):
                        writer.write(head[sent:due])
                    if due > len(head):
                        writer.write(shared[max(0, sent - len(head)) : due - len(head)])
                    sent = due
                    await writer.drain()
                await asyncio.sleep(tick)
            writer.write(b".\r\n")
            await writer.drain()
            uploaded = time.monotonic()
            reply = await asyncio.wait_for(read_reply(reader), 300)
            result["code"] = reply[:3]
            result["reply"] = reply[:100]
            result["reply_wait_s"] = round(time.monotonic() - uploaded, 3)
            result["upload_s"] = round(uploaded - began, 3)
        except (TimeoutError, OSError) as exc:
            result["code"] = "closed"
            result["reply"] = repr(exc)[:100]
            with contextlib.suppress(Exception):  # a reply the server sent before closing
                result["reply"] = (await asyncio.wait_for(read_reply(reader), 1))[:100]
                result["code"] = str(result["reply"])[:3]
        result["sent"] = sent
        print("result " + json.dumps(result), flush=True)
        with contextlib.suppress(Exception):
            writer.write(b"QUIT\r\n")
            await writer.drain()
            writer.close()

    async def progress() -> None:
        await everyone_ready.wait()
        print("flowing", flush=True)

    watcher = asyncio.create_task(progress())
    await asyncio.gather(*(session(i) for i in range(connections)))
    await watcher


async def normal_sends(run: Running, stop: asyncio.Event, interval: float,
                       http_ms: list[float], smtp_ms: list[float],
                       accepted: list[str], problems: list[str]) -> None:
    """A small HTTP send and a small SMTP submission every `interval` s until `stop`."""
    n = 0
    while not stop.is_set():
        n += 1
        form = {"from": LOGIN, "to": f"friend@{RCPT_DOMAIN}", "subject": f"normal {n}",
                "text": "a normal message during the flood"}
        try:
            status, answer, elapsed = await http_post(run, f"/v3/{DOMAIN}/messages", form)
            http_ms.append(elapsed * 1000)
            if elapsed >= 2:
                print(f"[flood] a small HTTP send took {elapsed:.1f} s", flush=True)
            if status == 200:
                accepted.append(str(answer["id"]).strip("<>"))
            else:
                problems.append(f"normal HTTP send: {status} {answer}")
        except Exception as exc:
            problems.append(f"normal HTTP send: {exc!r}")
        try:
            reply, elapsed = await smtp_submit(
                run, small_mime(f"normal-{n}@{DOMAIN}"), f"friend@{RCPT_DOMAIN}"
            )
            smtp_ms.append(elapsed * 1000)
            if elapsed >= 2:
                print(f"[flood] a small SMTP submission took {elapsed:.1f} s", flush=True)
            if reply.startswith("250"):
                accepted.append(queued_id(reply))
            else:
                problems.append(f"normal SMTP send: {reply}")
        except Exception as exc:
            problems.append(f"normal SMTP send: {exc!r}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def flood_run(args: argparse.Namespace, run: Running, figures: Figures
                    ) -> tuple[set[str], list[str]]:
    """The flood and the small sends beside it; (ids answered 250, ids of the small sends)."""
    config = {"port": run.mx_port, "connections": args.flood_connections,
              "addresses": args.flood_addresses, "bytes": args.flood_bytes,
              "rate": args.flood_rate, "tick": 0.1}
    client = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--flood-client", json.dumps(config),
        stdout=asyncio.subprocess.PIPE,
    )
    assert client.stdout is not None
    rss_max = [0]
    stop_sampling = asyncio.Event()
    results: list[dict[str, object]] = []
    flowing_at = time.monotonic()

    async def sample_rss() -> None:
        shown = time.monotonic()
        while not stop_sampling.is_set():
            with contextlib.suppress(OSError, KeyError):
                rss = run.rss_kb()
                rss_max[0] = max(rss_max[0], rss)
                if time.monotonic() - shown >= 5:
                    shown = time.monotonic()
                    print(f"[flood] {shown - flowing_at:5.1f} s: server RSS {rss / 1024:.0f} MiB,"
                          f" {len(results)} answered", flush=True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 0.25)

    sampler = asyncio.create_task(sample_rss())
    stop_normal = asyncio.Event()
    http_ms: list[float] = []
    smtp_ms: list[float] = []
    normal_ids: list[str] = []
    problems: list[str] = []
    sender: asyncio.Task[None] | None = None
    ready = 0
    while True:
        line = (await client.stdout.readline()).decode()
        if not line:
            break
        if line.startswith("ready "):
            ready = int(line.split()[1])
            print(f"[flood] {ready} of {args.flood_connections} sessions at the 354", flush=True)
        elif line.startswith("flowing"):
            flowing_at = time.monotonic()
            await asyncio.to_thread(run.lag_clear)
            sender = asyncio.create_task(normal_sends(
                run, stop_normal, args.normal_interval, http_ms, smtp_ms, normal_ids, problems))
        elif line.startswith("result "):
            results.append(json.loads(line[7:]))
    await client.wait()
    finished_at = time.monotonic()
    stop_normal.set()
    if sender is not None:
        await sender
    lag = await asyncio.to_thread(run.lag_read)
    stop_sampling.set()
    await sampler
    peak_kb = run.hwm_kb()

    codes = Counter(str(r["code"]) for r in results)
    sent = [int(r.get("sent", 0)) for r in results]  # type: ignore[arg-type]
    waits = [float(r["reply_wait_s"]) for r in results if "reply_wait_s" in r]  # type: ignore[arg-type]
    rates = [int(r.get("sent", 0)) / float(r["upload_s"])  # type: ignore[arg-type]
             for r in results if float(r.get("upload_s", 0) or 0) > 0]  # type: ignore[arg-type]
    figures.add("flood_connections", len(results))
    figures.add("flood_source_addresses", args.flood_addresses)
    figures.add("flood_bytes_per_connection", args.flood_bytes)
    figures.add("flood_rate_bytes_per_s_each", int(args.flood_rate))
    figures.add("flood_achieved_rate_bytes_per_s_median", int(median(rates)) if rates else 0)
    figures.add("flood_achieved_rate_bytes_per_s_min", int(min(rates)) if rates else 0)
    figures.add("flood_total_mb_sent", round(sum(sent) / MB))
    figures.add("flood_seconds", round(finished_at - flowing_at, 1))
    for code in ("250", "451", "552", "421"):
        figures.add(f"flood_answered_{code}", codes.get(code, 0))
    others = {c: n for c, n in codes.items() if c not in ("250", "451", "552", "421")}
    figures.add("flood_answered_other", sum(others.values()))
    for i, (code, count) in enumerate(sorted(others.items())[:3]):
        figures.add(f"flood_other_sample_{i}", f"{count} x {code}")
    samples = [str(r.get("reply", "")) for r in results if r["code"] != "250"]
    for i, reply in enumerate(sorted(set(samples))[:3]):
        figures.add(f"flood_reply_sample_{i}", reply[:90])
    figures.add("flood_reply_wait_after_last_byte_s_median", median(waits) if waits else 0.0)
    figures.add("flood_reply_wait_after_last_byte_s_max", max(waits, default=0.0))
    figures.add("flood_server_peak_rss_mib", round(peak_kb / 1024, 1))
    figures.add("flood_server_rss_max_sampled_mib", round(rss_max[0] / 1024, 1))
    figures.add("flood_rss_target_met", "yes" if peak_kb / 1024 < 600 else "NO")
    figures.add("flood_loop_lag_max_ms", lag["max_ms"])
    figures.add("flood_loop_lag_p99_ms", lag["p99_ms"])
    figures.add("flood_loop_lag_over_50ms", lag["over_50ms"])
    figures.add("flood_normal_http_sends", len(http_ms))
    figures.add("flood_normal_http_latency_ms_median", round(median(http_ms)) if http_ms else -1)
    figures.add("flood_normal_http_latency_ms_max", round(max(http_ms, default=-1)))
    figures.add("flood_normal_smtp_sends", len(smtp_ms))
    figures.add("flood_normal_smtp_latency_ms_median", round(median(smtp_ms)) if smtp_ms else -1)
    figures.add("flood_normal_smtp_latency_ms_max", round(max(smtp_ms, default=-1)))
    worst_normal = max([*http_ms, *smtp_ms], default=float("inf"))
    figures.add("flood_normal_latency_target_met", "yes" if worst_normal < 2000 else "NO")
    for problem in problems[:5]:
        figures.check(False, f"flood: {problem}")
    figures.check(bool(http_ms) and bool(smtp_ms), "flood: no normal send was made")
    return {str(r["message_id"]) for r in results if r["code"] == "250"}, normal_ids


def part_flood(args: argparse.Namespace, figures: Figures) -> None:
    print(f"== flood: {args.flood_connections} MX sessions x {args.flood_bytes / MB:g} MB at"
          f" {args.flood_rate / 1000:g} KB/s each", flush=True)
    with running_server(args, "flood") as run:
        figures.add("flood_server_rss_before_mib", round(run.rss_kb() / 1024, 1))
        answered_250, normal_ids = asyncio.run(flood_run(args, run, figures))
        stop_server(run, figures, "flood")
        accepted = [r[0] for r in db_rows(
            run, "SELECT message_id FROM events WHERE event = 'accepted' AND recipient = ?",
            (INBOX,))]
        messages = [r[0] for r in db_rows(run, "SELECT message_id FROM messages")]
        kept = db_count(run, "SELECT count(*) FROM inbound") + db_count(
            run, "SELECT count(*) FROM inbound_mime")
        other_events = db_count(
            run, "SELECT count(*) FROM events WHERE event NOT IN ('accepted')")
        ok = (set(accepted) == answered_250 and len(accepted) == len(answered_250)
              and sorted(messages) == sorted(normal_ids) and kept == 0 and other_events == 0)
        same = set(accepted) == answered_250
        figures.check(ok, f"flood: {len(accepted)} inbound accepted events for"
                          f" {len(answered_250)} answered 250 (same ids: {same});"
                          f" {len(messages)} messages for {len(normal_ids)} normal sends answered;"
                          f" {kept} inbound rows kept; {other_events} other events")
        figures.add("flood_db_check", "ok" if ok else "FAILED")


# -- part 3: one big message ---------------------------------------------------------------------


async def big_send(run: Running, case: str, size: int) -> tuple[str, str, int]:
    """(reply, message id, bytes on the wire) for one big message."""
    import aiohttp

    if case == "http_attachment":
        raw = attachment_for(size)
        form = aiohttp.FormData()
        form.add_field("from", LOGIN)
        form.add_field("to", f"friend@{RCPT_DOMAIN}")
        form.add_field("subject", "a big attachment")
        form.add_field("text", "See the file.")
        form.add_field("attachment", random.Random(3).randbytes(raw), filename="big.bin",
                       content_type="application/octet-stream")
        status, answer, _ = await http_post(run, f"/v3/{DOMAIN}/messages", form)
        return f"{status} {answer.get('message', '')}", str(answer.get("id", "")).strip("<>"), raw
    if case == "http_mime":
        mime = big_mime(f"big-mime@{DOMAIN}", size)
        form = aiohttp.FormData()
        form.add_field("to", f"friend@{RCPT_DOMAIN}")
        form.add_field("message", mime, filename="message.mime", content_type="message/rfc822")
        status, answer, _ = await http_post(run, f"/v3/{DOMAIN}/messages.mime", form)
        return f"{status} {answer.get('message', '')}", str(answer.get("id", "")).strip("<>"), len(
            mime)
    mime = big_mime(f"big-smtp@{DOMAIN}", size)
    reply, _ = await smtp_submit(run, mime, f"friend@{RCPT_DOMAIN}")
    return reply, queued_id(reply), len(mime)


def part_big(args: argparse.Namespace, figures: Figures) -> None:
    size = args.big_bytes
    print(f"== big: one {size / MB:g} MB message per fresh server", flush=True)
    for case in ("http_attachment", "http_mime", "smtp"):
        with running_server(args, f"big-{case}") as run:
            time.sleep(1.0)
            before_kb, hwm_before_kb = run.rss_kb(), run.hwm_kb()
            run.lag_clear()
            began = time.perf_counter()
            reply, message_id, wire = asyncio.run(big_send(run, case, size))
            elapsed = time.perf_counter() - began
            time.sleep(0.5)
            lag = run.lag_read()
            peak_kb = run.hwm_kb()
            stored = db_rows(run, "SELECT message_id, length(mime) FROM messages")
            stored_bytes = stored[0][1] if stored else 0
            ratio = (peak_kb - before_kb) * 1024 / max(1, stored_bytes)
            print(f"[big] {case}: {reply[:70]!r} in {elapsed:.1f} s, RSS {before_kb / 1024:.0f}"
                  f" -> peak {peak_kb / 1024:.0f} MiB", flush=True)
            prefix = f"big_{case}"
            figures.add(f"{prefix}_sent_bytes", wire)
            figures.add(f"{prefix}_message_bytes", stored_bytes)
            figures.add(f"{prefix}_rss_before_mib", round(before_kb / 1024, 1))
            figures.add(f"{prefix}_peak_before_mib", round(hwm_before_kb / 1024, 1))
            figures.add(f"{prefix}_peak_rss_mib", round(peak_kb / 1024, 1))
            figures.add(f"{prefix}_peak_growth_per_message_byte", round(ratio, 2))
            figures.add(f"{prefix}_target_met", "yes" if ratio <= 4 else "NO")
            figures.add(f"{prefix}_answered_s", round(elapsed, 2))
            figures.add(f"{prefix}_loop_lag_max_ms", lag["max_ms"])
            stop_server(run, figures, prefix)
            rows = [r[0] for r in db_rows(run, "SELECT message_id FROM messages")]
            recipients = db_count(run, "SELECT count(*) FROM recipients")
            accepted = db_count(run, "SELECT count(*) FROM events WHERE event = 'accepted'")
            ok = (reply.startswith(("200", "250")) and rows == [message_id] and recipients == 1
                  and accepted == 1 and stored_bytes >= 0.9 * size)
            figures.check(ok, f"{case}: reply {reply[:80]!r}, stored {rows} ({stored_bytes}"
                              f" bytes), {recipients} recipients, {accepted} accepted events")
            figures.add(f"{prefix}_db_check", "ok" if ok else "FAILED")


# -- part 4: a big batch -------------------------------------------------------------------------


def db_files(run: Running) -> tuple[int, int]:
    path = run.server.db_path
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size, wal.stat().st_size if wal.exists() else 0


async def batch_send(run: Running, recipients: int, attachment: int) -> tuple[int, dict, float]:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("from", LOGIN)
    variables = {}
    for i in range(recipients):
        address = f"user{i}@{RCPT_DOMAIN}"
        form.add_field("to", address)
        variables[address] = {"first": f"User{i}", "id": i}
    form.add_field("recipient-variables", json.dumps(variables))
    form.add_field("subject", "Hello %recipient.first%")
    form.add_field("text", "Hi %recipient.first%, your id is %recipient.id%.")
    form.add_field("attachment", random.Random(5).randbytes(attachment), filename="report.bin",
                   content_type="application/octet-stream")
    return await http_post(run, f"/v3/{DOMAIN}/messages", form)


def part_batch(args: argparse.Namespace, figures: Figures) -> None:
    n, attachment = args.batch_recipients, args.batch_attachment
    print(f"== batch: {n} recipients, recipient-variables, a {attachment / MB:g} MB attachment",
          flush=True)
    with running_server(args, "batch") as run:
        time.sleep(1.0)
        db0, wal0 = db_files(run)
        before_kb = run.rss_kb()
        run.lag_clear()
        status, answer, elapsed = asyncio.run(batch_send(run, n, attachment))
        time.sleep(0.5)
        lag = run.lag_read()
        peak_kb = run.hwm_kb()
        db1, wal1 = db_files(run)
        stored = db_rows(run, "SELECT message_id, length(mime) FROM messages")
        message_bytes = stored[0][1] if stored else 0
        # a checkpoint as the server's own would do it, from here (the server is idle)
        conn = sqlite3.connect(run.server.db_path, timeout=30)
        try:
            busy, log_pages, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        db2, wal2 = db_files(run)
        print(f"[batch] {status} {answer.get('message', '')!r} in {elapsed:.1f} s; db+wal"
              f" {(db0 + wal0) / MB:.1f} -> {(db1 + wal1) / MB:.1f} MB (checkpoint busy={busy},"
              f" {done}/{log_pages} pages) -> {(db2 + wal2) / MB:.1f} MB", flush=True)
        figures.add("batch_recipients", n)
        figures.add("batch_attachment_bytes", attachment)
        figures.add("batch_message_bytes", message_bytes)
        figures.add("batch_answered_s", round(elapsed, 2))
        figures.add("batch_loop_lag_max_ms", lag["max_ms"])
        figures.add("batch_db_bytes_before", db0 + wal0)
        figures.add("batch_db_file_bytes_live", db1)
        figures.add("batch_wal_file_bytes_live", wal1)
        figures.add("batch_growth_live_bytes", db1 + wal1 - db0 - wal0)
        figures.add("batch_growth_after_checkpoint_bytes", db2 + wal2 - db0 - wal0)
        prefix = "batch"
        stop_server(run, figures, prefix)
        db3, wal3 = db_files(run)
        figures.add("batch_growth_after_stop_bytes", db3 + wal3 - db0 - wal0)
        live_ratio = (db1 + wal1 - db0 - wal0) / max(1, message_bytes)
        ratio = (db3 + wal3 - db0 - wal0) / max(1, message_bytes)
        figures.add("batch_growth_live_per_message_byte", round(live_ratio, 2))
        figures.add("batch_growth_after_stop_per_message_byte", round(ratio, 2))
        figures.add("batch_disk_target_met", "yes" if max(ratio, live_ratio) <= 2 else (
            "after checkpoint only" if ratio <= 2 else "NO"))
        figures.add("batch_rss_before_mib", round(before_kb / 1024, 1))
        figures.add("batch_peak_rss_mib", round(peak_kb / 1024, 1))
        figures.add("batch_peak_growth_per_message_byte",
                    round((peak_kb - before_kb) * 1024 / max(1, message_bytes), 2))
        message_id = str(answer.get("id", "")).strip("<>")
        rows = [r[0] for r in stored]
        recipients = db_count(run, "SELECT count(*) FROM recipients")
        personal = db_count(run, "SELECT count(*) FROM recipients WHERE personal IS NOT NULL")
        copies = db_count(run, "SELECT count(*) FROM recipients WHERE mime IS NOT NULL")
        accepted = db_count(run, "SELECT count(*) FROM events WHERE event = 'accepted'")
        ok = (status == 200 and rows == [message_id] and recipients == n and accepted == n
              and copies == 0 and message_bytes > attachment)
        figures.check(ok, f"batch: {status}, stored {rows}, {recipients} recipients"
                          f" ({personal} with personal values, {copies} with their own copy),"
                          f" {accepted} accepted events")
        figures.add("batch_db_check", "ok" if ok else "FAILED")


# -- part 5: the parsers -------------------------------------------------------------------------


def address_inputs(size: int) -> list[tuple[str, str]]:
    chars = ADVERSARIAL_ADDRESS_CHARS + ";)>@ "
    inputs = []
    for c in chars:
        inputs.append((f"run {c!r}", c * size))
    for a in ADVERSARIAL_ADDRESS_CHARS:
        for b in chars:
            if a != b:
                inputs.append((f"runs {a + b!r}", ((a + b) * (size // 2 + 1))[:size]))
    for piece in ('"a\\', '("\\', '<"(', 'a@b.c,', '"a"<b@c>,', 'a(b)c@d,', 'g:a@b;',
                  '((((((((((' + ')' * 9, '"' * 50 + ",", "(" * 50 + ",", "<" * 50 + ",",
                  "\\" * 51 + '"', ":" * 50 + ";"):
        inputs.append((f"pattern {piece!r}", (piece * (size // len(piece) + 1))[:size]))
    rnd = random.Random(11)
    alphabet = ADVERSARIAL_ADDRESS_CHARS + ")>;@ a."
    inputs.append(("random specials", "".join(rnd.choice(alphabet) for _ in range(size))))
    return inputs


def header_inputs(size: int) -> list[tuple[str, bytes]]:
    def fill(line: bytes, head: bytes = b"", end: bytes = b"\r\n\r\nbody\r\n") -> bytes:
        room = size - len(head)
        return head + line * (room // len(line)) + end

    return [
        ("X:b fields", fill(b"X:b\r\n")),
        ("X-A: b fields", fill(b"X-A: b\r\n")),
        ("1000 fields", b"X-A: b\r\n" * 1000 + b"\r\nbody\r\n"),
        ("one field folded 65,000 times", fill(b" b\r\n", b"X: a\r\n")),
        ("folded blank lines", fill(b" \r\n", b"X: a\r\n")),
        ("tab-folded", fill(b"\t\r\n", b"X: a\r\n")),
        ("lines without colon", fill(b"abc\r\n")),
        ("colons only", fill(b":\r\n")),
        ("one 256 KiB line", b"X: " + b"a" * (size - 10) + b"\r\n\r\nbody\r\n"),
        ("no blank line, at the cap", fill(b"X-A: b\r\n", end=b"")),
        ("no blank line, past the cap", fill(b"X-A: b\r\n", end=b"") + b"X-A: b\r\n" * 4096),
        ("CRLF CRLF past the cap", b"X-A: b\r\n" * (size // 8 + 10) + b"\r\nbody\r\n"),
        ("starts with a space", fill(b" \r\n")),
        ("alternating fold", fill(b"X: a\r\n b\r\n")),
    ]


def time_worst(work, inputs, reps: int) -> tuple[float, float, str]:
    """(max over inputs of the min of `reps` runs, the largest single run, its input), ms."""
    worst, worst_single, which = 0.0, 0.0, ""
    for name, value in inputs:
        runs = []
        for _ in range(reps):
            began = time.perf_counter()
            with contextlib.suppress(ValueError):  # HeadError: refused over a cap, as it should
                work(value)
            runs.append((time.perf_counter() - began) * 1000)
        if min(runs) > worst:
            worst, which = min(runs), name
        worst_single = max(worst_single, *runs)
    return worst, worst_single, which


def part_parsers(args: argparse.Namespace, figures: Figures) -> None:
    from mta.accept.addresses import split_addresses
    from mta.accept.mime import MessageHead
    from mta.config import Config

    config = Config()
    address_size = config.sending.max_address_bytes
    header_bytes, header_fields = config.smtp.max_header_bytes, config.smtp.max_header_fields
    addresses = address_inputs(address_size)
    headers = header_inputs(header_bytes)
    print(f"== parsers: {len(addresses)} address texts of {address_size} characters,"
          f" {len(headers)} header blocks of ~{header_bytes} bytes", flush=True)
    worst, single, which = time_worst(split_addresses, addresses, args.parser_reps)
    figures.add("parser_split_addresses_inputs", len(addresses))
    figures.add("parser_split_addresses_worst_ms", round(worst, 1))
    figures.add("parser_split_addresses_worst_single_run_ms", round(single, 1))
    figures.add("parser_split_addresses_worst_input", which)

    def parse(block: bytes) -> None:
        MessageHead.parse(block, header_bytes, header_fields)

    def parse_and_read(block: bytes) -> None:
        head = MessageHead.parse(block, header_bytes, header_fields)
        head.count("from")
        head.first("content-type")

    worst, single, which = time_worst(parse, headers, args.parser_reps)
    figures.add("parser_message_head_inputs", len(headers))
    figures.add("parser_message_head_parse_worst_ms", round(worst, 1))
    figures.add("parser_message_head_parse_worst_single_run_ms", round(single, 1))
    figures.add("parser_message_head_parse_worst_input", which)
    worst, single, which = time_worst(parse_and_read, headers, args.parser_reps)
    figures.add("parser_message_head_parse_and_read_worst_ms", round(worst, 1))
    figures.add("parser_message_head_parse_and_read_worst_input", which)


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"from {', '.join(PARTS)}")
    parser.add_argument("--idle-s", type=float, default=2.0, help="idle baseline, seconds")
    parser.add_argument("--flood-connections", type=int, default=200)
    parser.add_argument("--flood-addresses", type=int, default=25,
                        help="source addresses 127.0.0.2.. (the MX allows 10 per address)")
    parser.add_argument("--flood-bytes", type=int, default=25 * MB, help="per connection")
    parser.add_argument("--flood-rate", type=float, default=400_000,
                        help="bytes/s per connection (smtp.min_data_rate is 1 KiB/s)")
    parser.add_argument("--normal-interval", type=float, default=2.0,
                        help="seconds between the small sends during the flood")
    parser.add_argument("--big-bytes", type=int, default=24 * MB, help="the big message")
    parser.add_argument("--batch-recipients", type=int, default=1000)
    parser.add_argument("--batch-attachment", type=int, default=10 * MB)
    parser.add_argument("--parser-reps", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="MTA_X=Y",
                        help="extra server setting")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--flood-client", help=argparse.SUPPRESS)  # internal: the flood process
    args = parser.parse_args()
    if args.flood_client:
        asyncio.run(flood_client(json.loads(args.flood_client)))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}")
    if args.flood_connections > 10 * args.flood_addresses:
        parser.error("--flood-connections: at most 10 per source address (the MX's limit)")
    if args.flood_addresses > 250:
        parser.error("--flood-addresses: at most 250")

    figures = Figures()
    began = time.monotonic()
    for part in parts:
        {"lag": part_lag, "flood": part_flood, "big": part_big, "batch": part_batch,
         "parsers": part_parsers}[part](args, figures)
    took = time.monotonic() - began

    print("---")
    import mta

    print(f"mta: {Path(mta.__file__).resolve().parent}")
    print(f"parts: {','.join(parts)}")
    print(f"run_s: {took:.0f}")
    for name, value in figures.lines:
        print(f"{name}: {value}")
    print(f"problems: {len(figures.problems)}")
    for i, problem in enumerate(figures.problems):
        print(f"problem_{i}: {problem}")
    print(f"check: {'ok' if not figures.problems else 'FAILED'}")
    return 0 if not figures.problems else 1


if __name__ == "__main__":
    sys.exit(main())
