"""What users see: a non-pipelining SMTP client (aiosmtplib) against mta, bare aiosmtpd and Postfix.

Most senders wait for each reply (smtplib, aiosmtplib, PHPMailer, nodemailer, mail clients). Each
session here says EHLO, STARTTLS, EHLO, AUTH PLAIN once (plain EHLO only against Postfix), then
sends one message after another: MAIL, RCPT, DATA, each after the previous reply. The client runs
in its own process. For each target, four phases: 1 and 20 sessions x 1 KB and 10 KB messages,
each a warm-up and a measured window (messages whose 250 comes inside the window count).

Targets, in this order (all on loopback):

- `bare`: aiosmtpd that stores nothing, same TLS + AUTH (always-accepting authenticator), in its
  own process: the Python protocol ceiling for this client.
- `mta_accept`: `python -m mta serve` with outbound delivery off.
- `mta_e2e`: mta accepting while delivering to Postfix's `smtp-sink` (d1..d5.bench.test routed
  there with dns.static_mx). End to end = messages accepted / time from the first message
  until the last one is delivered (the server's `delivered` events).
- `mta_pipelined`: a pipelining client (bench/smtp_load.py, MAIL+RCPT+DATA in one write, as
  Postfix and Exim send) at the most sessions of --sessions, mta end to end to the same sink
  (d1..d5 in turn).
- `mta_http`: HTTP in -> the same sink, per size: bench/delivery.py's run (--http-messages POSTs
  from 50 keep-alive connections), with the server's CPU per delivered message, compared with
  the sign-plus-1-ms budget and with Postfix's 20-session end-to-end rates.
- `postfix`: a private Postfix instance (its own config and queue directory under a temporary
  directory, relayhost = the sink), plain SMTP (no TLS, no AUTH), signing nothing; also driven
  by `smtp-source -s 20`. End to end = accepted / time until its queue is empty.
- `postfix_dkim`: the same with OpenDKIM (2048-bit key) signing every message, as a milter on
  inet:127.0.0.1:port (smtpd_milters and non_smtpd_milters). The sink appends every message to
  a file here, and the signatures it got are counted.
- `postfix_dkim_unix`: the same, the milter on a unix socket. On loopback TCP each message
  waits ~40 ms twice between Postfix's milter client and libmilter (small writes, Nagle and
  delayed ACKs: ~86 ms end of DATA -> 250 at one session), so the inet figures measure that
  stall more than the signing; the unix socket one is the fair peer.

Then a bare SQLite commit on this disk (INSERT + COMMIT, WAL, synchronous=FULL, as mta's store),
the RSA-2048 signing ceiling of the box (`openssl speed rsa2048`, signs/s per core x cores), and
the ratios, last.

    python bench/smtp_clients.py [--duration 8] [--warmup 2] [--targets bare,mta_accept,...]
        [--sizes 1024,10240] [--sessions 1,20] [--source-messages 2000] [--http-messages 5000]
        [--profile DIR]

Needs Postfix (`smtp-sink`, `smtp-source`, `postfix`) and, for postfix_dkim, `opendkim` and
`opendkim-genkey` (Debian: apt-get install -y postfix opendkim opendkim-tools). Run as root for
the Postfix targets. The figures are printed last, one `name: value` per line, after `---`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import (
    DOMAIN,
    BenchServer,
    bench_server,
    free_port,
    median,
    wait_for_port,
)
from delivery import run_once, size_label, start_profiler, start_sink
from smtp_accept import Clients

LOGIN = f"alice@{DOMAIN}"
PASSWORD = "s3cret-pass"
SENDER = f"sender@{DOMAIN}"
DEST_DOMAINS = 5
TARGETS = ("bare", "mta_accept", "mta_e2e", "mta_pipelined", "mta_http", "postfix",
           "postfix_dkim", "postfix_dkim_unix")
DRAIN_TIMEOUT_S = 120.0
LINE = (
    b"Hello, your order 12345 has shipped and will arrive on Tuesday. Thank you for"
    b" shopping with us; the tracking number is 1Z999AA10123456784.\r\n"
)


def message(size: int, serial: int, rcpt: str) -> bytes:
    head = (
        f"From: Bench Sender <{SENDER}>\r\n"
        f"To: <{rcpt}>\r\n"
        "Subject: Your order has shipped\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Message-Id: <{os.getpid()}.{serial:09d}@bench.client>\r\n\r\n"
    ).encode()
    body = (LINE * (size // len(LINE) + 1))[: max(4, size - len(head) - 2)] + b"\r\n"
    return head + body


# -- the client (child process) ------------------------------------------------------------------


async def client_main(cfg: dict) -> dict:
    import aiosmtplib

    sessions, size = cfg["sessions"], cfg["size"]
    tls = cfg["tls"]
    results = {"ok": 0, "in_window": 0, "errors": 0, "mail_rcpt_ms": [], "eod_ms": [],
               "error_samples": []}
    serial = 0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def open_session() -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=cfg["port"], timeout=60,
                               start_tls=False, use_tls=False, tls_context=ctx,
                               local_hostname="client.bench.test")
        await smtp.connect()
        await smtp.ehlo()
        if tls:
            await smtp.starttls(tls_context=ctx)
            await smtp.ehlo()
            await smtp.login(LOGIN, PASSWORD)
        return smtp

    # one after another: 20 AUTHs at once outnumber smtp.auth_check_threads + auth_check_queue
    # and the server rightly answers 454 to the rest (a session's set-up is not measured)
    smtps = [await open_session() for _ in range(sessions)]
    t_start = time.monotonic()
    window = (t_start + cfg["warmup"], t_start + cfg["warmup"] + cfg["duration"])
    wall_start = time.time()

    async def run(smtp: aiosmtplib.SMTP) -> None:
        nonlocal serial
        proto = smtp.protocol
        original_write = proto.write
        last_write = [0.0]

        def timed_write(data: bytes) -> None:
            original_write(data)
            last_write[0] = time.perf_counter()

        proto.write = timed_write  # type: ignore[method-assign]
        while time.monotonic() < window[1]:
            serial += 1
            rcpt = f"user{serial}@d{serial % DEST_DOMAINS + 1}.bench.test"
            msg = message(size, serial, rcpt)
            try:
                t0 = time.perf_counter()
                await smtp.mail(SENDER)
                await smtp.rcpt(rcpt)
                t1 = time.perf_counter()
                await smtp.data(msg)
                t2 = time.perf_counter()
            except (aiosmtplib.SMTPException, OSError) as exc:
                results["errors"] += 1
                if len(results["error_samples"]) < 3:
                    results["error_samples"].append(repr(exc)[:200])
                if not smtp.is_connected:
                    return
                continue
            results["ok"] += 1
            now = time.monotonic()
            if window[0] <= now < window[1]:
                results["in_window"] += 1
                results["mail_rcpt_ms"].append((t1 - t0) * 1000 / 2)
                results["eod_ms"].append((t2 - last_write[0]) * 1000)
        with contextlib.suppress(Exception):
            await smtp.quit()

    await asyncio.gather(*(run(s) for s in smtps))
    results["wall_start"] = wall_start
    results["load_s"] = time.monotonic() - t_start
    return results


def run_client(port: int, sessions: int, size: int, tls: bool, args: argparse.Namespace) -> dict:
    cfg = {"port": port, "sessions": sessions, "size": size, "tls": tls,
           "warmup": args.warmup, "duration": args.duration}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--client-child", json.dumps(cfg)],
        capture_output=True, text=True, timeout=args.warmup + args.duration + 120, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"client failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- bare aiosmtpd (child process) -------------------------------------------------------------


def bare_main(port: int, cert: str, key: str) -> None:
    from aiosmtpd.smtp import SMTP, AuthResult

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            return "250 2.0.0 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=True)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    handler = Handler()

    def factory() -> SMTP:
        return SMTP(handler, hostname="bare.bench.test", tls_context=ctx,
                    require_starttls=False, auth_required=True, auth_require_tls=True,
                    authenticator=authenticator, decode_data=False, enable_SMTPUTF8=True)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    import logging

    # aiosmtpd logs "Session.login_data is deprecated" at WARNING for every AUTH
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def make_cert(work: Path) -> tuple[Path, Path]:
    cert, key = work / "bare.crt", work / "bare.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


# -- smtp-sink ---------------------------------------------------------------------------------


# -- Postfix -----------------------------------------------------------------------------------

MASTER_CF = """\
{port}     inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    def __init__(self, work: Path, sink_port: int, milter: str | None, tag: str) -> None:
        self.dir = work / f"postfix-{tag}"
        self.dir.mkdir()
        self.queue = self.dir / "queue"
        self.queue.mkdir()  # `postfix check` makes what is inside
        self.port = free_port()
        milters = (f"smtpd_milters = {milter}\nnon_smtpd_milters = {milter}\n"
                   "milter_default_action = tempfail\n") if milter else ""
        (self.dir / "main.cf").write_text(
            f"queue_directory = {self.queue}\n"
            f"data_directory = {self.dir / 'data'}\n"
            "compatibility_level = 3.6\n"
            "mail_owner = postfix\n"
            "setgid_group = postdrop\n"
            "myhostname = postfix.bench.test\n"
            "mydestination =\n"
            "inet_interfaces = 127.0.0.1\n"
            "inet_protocols = ipv4\n"
            "mynetworks = 127.0.0.0/8\n"
            f"relayhost = [127.0.0.1]:{sink_port}\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            "smtpd_tls_security_level = none\n"
            "smtp_tls_security_level = none\n"
            "alias_maps =\nalias_database =\n"
            "local_transport = error:local delivery off\n"
            "smtputf8_enable = no\n"
            "biff = no\n"
            f"maillog_file = {self.dir / 'maillog'}\n"
            f"maillog_file_prefixes = {self.dir}\n"
            "meta_directory = /etc/postfix\n"
            "smtpd_client_connection_count_limit = 0\n"
            "default_process_limit = 200\n"
            + milters
        )
        (self.dir / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{self.port}"))
        self.postfix("check")
        self.postfix("start")
        deadline = time.monotonic() + 30
        while True:
            try:
                with contextlib.closing(__import__("socket").create_connection(
                        ("127.0.0.1", self.port), timeout=0.5)):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Postfix did not listen: " + self.log_tail()) from None
                time.sleep(0.1)

    def postfix(self, *cmd: str) -> None:
        done = subprocess.run(["postfix", "-c", str(self.dir), *cmd], capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(cmd)}: {done.stderr.strip()[-300:]}"
                               f" {self.log_tail()[-500:]}")

    def log_tail(self) -> str:
        path = self.dir / "maillog"
        return path.read_text(errors="replace")[-800:] if path.exists() else ""

    def queued(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.queue / sub):
                n += len(files)
        return n

    def wait_empty(self, timeout: float = DRAIN_TIMEOUT_S) -> float:
        """time.time() when the queue was first seen empty."""
        deadline = time.monotonic() + timeout
        while self.queued():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix queue not empty after {timeout:g} s")
            time.sleep(0.02)
        return time.time()

    def count(self, word: str) -> int:
        path = self.dir / "maillog"
        return path.read_text(errors="replace").count(word) if path.exists() else 0

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.postfix("stop")
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                break
            time.sleep(0.1)
        else:
            if pid_file.exists():
                with contextlib.suppress(Exception):
                    self.postfix("abort")


class OpenDKIM:
    def __init__(self, work: Path, unix: bool) -> None:
        self.dir = work / ("opendkim-unix" if unix else "opendkim")
        self.dir.mkdir()
        subprocess.run(["opendkim-genkey", "-b", "2048", "-d", DOMAIN, "-s", "bench",
                        "-D", str(self.dir)], check=True, capture_output=True)
        self.port = free_port()
        self.unix_path = self.dir / "milter.sock" if unix else None
        # what Postfix's smtpd_milters names
        self.spec = f"unix:{self.unix_path}" if unix else f"inet:127.0.0.1:{self.port}"
        socket_spec = f"local:{self.unix_path}" if unix else f"inet:{self.port}@127.0.0.1"
        user = "UserID opendkim\n" if os.geteuid() == 0 else ""
        if os.geteuid() == 0:
            shutil.chown(self.dir / "bench.private", "opendkim")
            shutil.chown(self.dir, "opendkim")
        conf = self.dir / "opendkim.conf"
        conf.write_text(
            "Syslog no\n"
            "Mode s\n"
            f"Domain {DOMAIN}\n"
            "Selector bench\n"
            f"KeyFile {self.dir / 'bench.private'}\n"
            f"Socket {socket_spec}\n"
            "UMask 000\n"
            "Canonicalization relaxed/relaxed\n"
            "SignatureAlgorithm rsa-sha256\n"
            "RequireSafeKeys no\n"
            "InternalHosts 127.0.0.1\n"
            "Background no\n"
            + user
        )
        self.log = open(self.dir / "opendkim.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["opendkim", "-f", "-x", str(conf)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if self.unix_path is None:
            wait_for_port(self.port, self.proc)
        else:
            deadline = time.monotonic() + 30
            while not self.unix_path.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("opendkim did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# -- phases ------------------------------------------------------------------------------------


def combos(args: argparse.Namespace) -> list[tuple[int, int]]:
    return [(s, z) for z in args.sizes for s in args.sessions]


def record(fig: dict[str, str], prefix: str, res: dict, args: argparse.Namespace,
           sessions: int) -> None:
    fig[f"{prefix}_msgs_per_s"] = f"{res['in_window'] / args.duration:.0f}"
    if res["errors"]:
        fig[f"{prefix}_errors"] = f"{res['errors']} {res['error_samples'][:1]}"
    if sessions == 1 and res["eod_ms"]:
        fig[f"{prefix}_end_of_data_to_250_p50_ms"] = f"{median(res['eod_ms']):.2f}"
        fig[f"{prefix}_mail_rcpt_rtt_p50_ms"] = f"{median(res['mail_rcpt_ms']):.2f}"


def phase_bare(args: argparse.Namespace, work: Path, fig: dict[str, str]) -> None:
    cert, key = make_cert(work)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--bare-child", str(port), str(cert),
         str(key)])
    try:
        wait_for_port(port, proc)
        for sessions, size in combos(args):
            res = run_client(port, sessions, size, True, args)
            record(fig, f"bare_{sessions}s_{size_label(size)}", res, args, sessions)
            print(f"bare {sessions}s {size_label(size)}: {res['in_window'] / args.duration:.0f}"
                  " msgs/s", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)


def mta_env(smtp_port: int, sink_port: int | None) -> dict[str, str]:
    env = {
        "MTA_SMTP_SUBMISSION": f"127.0.0.1:{smtp_port}",
        "MTA_SMTP_SUBMISSION_TLS": "",
        "MTA_SMTP_SUBMISSION_ALT": "",
        "MTA_SMTP_MX": "",
        "MTA_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
        "MTA_OUTBOUND_ENABLED": "false",
    }
    if sink_port is not None:
        static_mx = {f"d{n}.bench.test": [f"mx{n}.bench.test:{sink_port}"]
                     for n in range(1, DEST_DOMAINS + 1)}
        answers = {f"mx{n}.bench.test A": ["127.0.0.1"] for n in range(1, DEST_DOMAINS + 1)}
        env.update({
            "MTA_OUTBOUND_ENABLED": "true",
            "MTA_DNS_ONLY_ANSWERS": "true",
            "MTA_DNS_STATIC_MX": json.dumps(static_mx),
            "MTA_DNS_ANSWERS": json.dumps(answers),
        })
    return env


@contextlib.contextmanager
def mta_server(smtp_port: int, sink_port: int | None) -> Iterator[BenchServer]:
    """`mta serve` on `smtp_port` with the bench's domain and login (delivering to the sink
    when there is one)."""
    with bench_server(extra_env=mta_env(smtp_port, sink_port)) as server:
        wait_for_port(smtp_port, server.proc)
        server.cli("domain", "add", DOMAIN)
        server.cli("credential", "add", DOMAIN, LOGIN, "--password", PASSWORD)
        yield server


def wait_finished(server: BenchServer, count: int) -> None:
    """Until `count` recipients are delivered or failed, or the drain timeout has passed."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while server.query(
            "SELECT count(*) FROM recipients WHERE state != 'queued'"
    ) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def phase_mta(args: argparse.Namespace, work: Path, fig: dict[str, str], e2e: bool) -> None:
    name = "mta_e2e" if e2e else "mta_accept"
    sink = start_sink(work) if e2e else None
    smtp_port = free_port()
    total_ok = 0
    try:
        with mta_server(smtp_port, sink.port if sink else None) as server:
            for sessions, size in combos(args):
                prefix = f"{name}_{sessions}s_{size_label(size)}"
                before = server.query("SELECT count(*) FROM recipients")
                profiler = None
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profiler = start_profiler(server.proc.pid, args.profile / f"{prefix}.txt")
                    time.sleep(1.0)  # let py-spy attach before the load starts
                res = run_client(smtp_port, sessions, size, True, args)
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on interrupt
                    profiler.wait(60)
                total_ok += res["ok"]
                if e2e:
                    wait_finished(server, before + res["ok"])
                    last = server.query("SELECT max(ts) FROM events WHERE event = 'delivered'")
                    done = server.query(
                        "SELECT count(*) FROM recipients WHERE state = 'delivered'") - before
                    span = last - res["wall_start"]
                    fig[f"{prefix}_accept_msgs_per_s"] = f"{res['in_window'] / args.duration:.0f}"
                    fig[f"{prefix}_msgs_per_s"] = f"{done / span:.0f}"
                    if done != res["ok"]:
                        fig[f"{prefix}_check"] = f"FAILED: {done} delivered of {res['ok']}"
                    if sessions == 1 and res["eod_ms"]:
                        fig[f"{prefix}_end_of_data_to_250_p50_ms"] = f"{median(res['eod_ms']):.2f}"
                        fig[f"{prefix}_mail_rcpt_rtt_p50_ms"] = (
                            f"{median(res['mail_rcpt_ms']):.2f}")
                    if res["errors"]:
                        fig[f"{prefix}_errors"] = str(res["errors"])
                else:
                    record(fig, prefix, res, args, sessions)
                print(f"{prefix}: {fig[prefix + '_msgs_per_s']} msgs/s", flush=True)
            stored = server.query("SELECT count(*) FROM messages")
            if stored != total_ok:
                fig[f"{name}_check"] = f"FAILED: {stored} stored for {total_ok} answered 250"
    finally:
        if sink is not None:
            got = sink.counters()["mesg"]
            sink.stop()
            if got != total_ok:
                fig[f"{name}_sink_check"] = f"FAILED: the sink counted {got} of {total_ok}"


def phase_pipelined(args: argparse.Namespace, work: Path, fig: dict[str, str]) -> None:
    """A pipelining client (bench/smtp_load.py's reused mode: MAIL+RCPT+DATA in one write, as
    Postfix and Exim send; the most sessions of --sessions, STARTTLS + AUTH once each) against
    mta end to end. The messages go to user@d1..d5.bench.test in turn: five sites on the
    sink, as for the other targets."""
    sink = start_sink(work)
    smtp_port = free_port()
    rcpts = ",".join(f"user@d{n}.bench.test" for n in range(1, DEST_DOMAINS + 1))
    answered = 0
    try:
        with mta_server(smtp_port, sink.port) as server:
            for size in args.sizes:
                prefix = f"mta_pipelined_e2e_{max(args.sessions)}s_{size_label(size)}"
                before = server.query("SELECT count(*) FROM recipients")
                clients = Clients(smtp_port, "reused", max(args.sessions), size, 1, work, prefix,
                                  "auto", rcpt=rcpts)
                clients.wait_ready()
                started = time.time()
                now = time.monotonic()
                clients.tell(f"go {now!r} {now + args.warmup + args.duration!r}")
                load = clients.finish(timeout=args.warmup + args.duration + 120)
                got = len(clients.answered())
                answered += got
                wait_finished(server, before + got)
                done = server.query(
                    "SELECT count(*) FROM recipients WHERE state = 'delivered'") - before
                last = server.query("SELECT max(ts) FROM events WHERE event = 'delivered'")
                fig[f"{prefix}_accept_msgs_per_s"] = f"{got / (args.warmup + args.duration):.0f}"
                fig[f"{prefix}_msgs_per_s"] = f"{done / (last - started):.0f}"
                if done != got:
                    fig[f"{prefix}_check"] = f"FAILED: {done} delivered of {got}"
                unexpected = {k: v for k, v in load.items()
                              if k.startswith(("reply_", "error_"))}
                if unexpected:
                    fig[f"{prefix}_check"] = f"FAILED: unexpected replies or errors {unexpected}"
                print(f"{prefix}: {fig[prefix + '_msgs_per_s']} msgs/s", flush=True)
    finally:
        got = sink.counters()["mesg"]
        sink.stop()
        if got != answered:
            fig["mta_pipelined_sink_check"] = f"FAILED: the sink counted {got} of {answered}"


def phase_http(args: argparse.Namespace, work: Path, fig: dict[str, str]) -> None:
    """HTTP in -> smtp-sink: bench/delivery.py's run (50 keep-alive connections POSTing one
    message each, 5 destination sites), per size."""
    kind = "wrk" if shutil.which("wrk") else "aiohttp"
    load = argparse.Namespace(messages=args.http_messages, connections=50, one_site=False,
                              env=[], keep=False, profile=None, timeout=300.0, stall=30.0)
    for size in args.sizes:
        result = run_once(load, size, kind, work)
        prefix = f"mta_http_e2e_{size_label(size)}"
        fig[f"{prefix}_msgs_per_s"] = result.figures["end_to_end_msgs_per_s"]
        fig[f"{prefix}_server_cpu_us_per_msg"] = result.figures["server_cpu_us_per_msg"]
        fig[f"{prefix}_server_peak_rss_mib"] = result.figures["server_peak_rss_mib"]
        if result.problems:
            fig[f"{prefix}_check"] = "FAILED: " + "; ".join(result.problems)
        print(f"{prefix}: {fig[prefix + '_msgs_per_s']} msgs/s", flush=True)


def smtp_source(port: int, sessions: int, size: int, count: int) -> float:
    started = time.time()
    subprocess.run(
        ["smtp-source", "-s", str(sessions), "-l", str(size), "-m", str(count),
         "-f", SENDER, "-t", "user@d1.bench.test", f"127.0.0.1:{port}"],
        check=True, capture_output=True, timeout=300,
    )
    return started


def phase_postfix(args: argparse.Namespace, work: Path, fig: dict[str, str], name: str) -> None:
    """name: postfix, postfix_dkim (milter on inet:127.0.0.1) or postfix_dkim_unix."""
    dkim = name != "postfix"
    sink = start_sink(work, dump=dkim)
    milter = OpenDKIM(work, unix=name.endswith("_unix")) if dkim else None
    postfix = None
    total = 0
    try:
        postfix = Postfix(work, sink.port, milter.spec if milter else None, name)
        for sessions, size in combos(args):
            prefix = f"{name}_{sessions}s_{size_label(size)}"
            res = run_client(postfix.port, sessions, size, False, args)
            drained = postfix.wait_empty()
            total += res["ok"]
            fig[f"{prefix}_accept_msgs_per_s"] = f"{res['in_window'] / args.duration:.0f}"
            fig[f"{prefix}_msgs_per_s"] = f"{res['ok'] / (drained - res['wall_start']):.0f}"
            if sessions == 1 and res["eod_ms"]:
                fig[f"{prefix}_end_of_data_to_250_p50_ms"] = f"{median(res['eod_ms']):.2f}"
                fig[f"{prefix}_mail_rcpt_rtt_p50_ms"] = f"{median(res['mail_rcpt_ms']):.2f}"
            if res["errors"]:
                fig[f"{prefix}_errors"] = f"{res['errors']} {res['error_samples'][:1]}"
            print(f"{prefix}: {fig[prefix + '_msgs_per_s']} msgs/s", flush=True)
        if args.source_messages:
            for size in args.sizes:
                prefix = f"{name}_smtp_source_20s_{size_label(size)}"
                started = smtp_source(postfix.port, 20, size, args.source_messages)
                accepted = time.time()
                drained = postfix.wait_empty()
                total += args.source_messages
                fig[f"{prefix}_accept_msgs_per_s"] = (
                    f"{args.source_messages / (accepted - started):.0f}")
                fig[f"{prefix}_msgs_per_s"] = f"{args.source_messages / (drained - started):.0f}"
                print(f"{prefix}: {fig[prefix + '_msgs_per_s']} msgs/s", flush=True)
        time.sleep(0.3)
        sent = postfix.count("status=sent")
        if sent != total:
            fig[f"{name}_check"] = f"FAILED: {sent} status=sent for {total} accepted"
    finally:
        if postfix is not None:
            postfix.stop()
        if milter is not None:
            milter.stop()
        got = sink.counters()["mesg"]
        sink.stop()
        if got != total:
            fig[f"{name}_sink_check"] = f"FAILED: the sink counted {got} of {total}"
        if dkim:
            signed = sink.count_dumped(b"DKIM-Signature: v=1; a=rsa-sha256")
            fig[f"{name}_signed_at_sink"] = f"{signed} of {got}"


# -- the box -----------------------------------------------------------------------------------


def sqlite_commit_ms(work: Path, n: int = 300) -> float:
    conn = sqlite3.connect(work / "commit.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    blob = b"x" * 1024
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (body) VALUES (?)", (blob,))
        conn.execute("COMMIT")
        times.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return median(times)


def rsa_sign_per_core() -> float:
    out = subprocess.run(["openssl", "speed", "-seconds", "3", "rsa2048"], capture_output=True,
                         text=True, timeout=120, check=False).stdout
    for line in out.splitlines():
        m = re.match(r"\s*rsa\s+2048 bits?\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            return float(m.group(3))
    raise RuntimeError(f"openssl speed: no rsa 2048 line in {out[-400:]!r}")


def ratio(fig: dict[str, str], a: str, b: str) -> str:
    try:
        return f"{float(fig[a]) / float(fig[b]):.2f}"
    except (KeyError, ValueError, ZeroDivisionError):
        return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured window (s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up (s)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--sizes", default="1024,10240")
    parser.add_argument("--sessions", default="1,20")
    parser.add_argument("--source-messages", type=int, default=2000,
                        help="smtp-source messages per size against Postfix (0: skip)")
    parser.add_argument("--http-messages", type=int, default=5000,
                        help="messages POSTed per size for mta_http")
    parser.add_argument("--profile", type=Path,
                        help="py-spy collapsed stacks of each mta phase go to DIR/<phase>.txt")
    parser.add_argument("--client-child", help=argparse.SUPPRESS)
    parser.add_argument("--bare-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_child:
        print(json.dumps(asyncio.run(client_main(json.loads(args.client_child)))))
        return 0
    if args.bare_child:
        port, cert, key = args.bare_child
        bare_main(int(port), cert, key)
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.sessions = [int(s) for s in args.sessions.split(",") if s]
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets: {sorted(unknown)}")

    fig: dict[str, str] = {}
    problems: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="mta-bench-clients-"))
    os.chmod(work, 0o755)  # Postfix and OpenDKIM users reach their directories under it
    try:
        for target in targets:
            print(f"== {target}", flush=True)
            try:
                if target == "bare":
                    phase_bare(args, work, fig)
                elif target in ("mta_accept", "mta_e2e"):
                    phase_mta(args, work, fig, target == "mta_e2e")
                elif target == "mta_pipelined":
                    phase_pipelined(args, work, fig)
                elif target == "mta_http":
                    phase_http(args, work, fig)
                else:
                    phase_postfix(args, work, fig, target)
            except Exception as exc:  # report it and go on with the next target
                problems.append(f"{target}: {exc}")
                print(f"{target} failed: {exc}", flush=True)
        commit_ms = sqlite_commit_ms(work)
        per_core = rsa_sign_per_core()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cores = os.cpu_count() or 1
    print("---")
    print("client: aiosmtplib, one process, no pipelining; STARTTLS + AUTH once per session"
          " (plain EHLO for Postfix)")
    print(f"window_s: {args.duration:g} (warm-up {args.warmup:g})")
    for name, value in fig.items():
        print(f"{name}: {value}")
    print(f"sqlite_bare_commit_p50_ms: {commit_ms:.3f}")
    print(f"rsa2048_signs_per_s_per_core: {per_core:.0f}")
    print(f"cores: {cores}")
    print(f"rsa2048_sign_ceiling_msgs_per_s: {per_core * cores:.0f}")
    sign_us = 1e6 / per_core
    print(f"rsa2048_sign_us: {sign_us:.0f}")
    for label in [size_label(s) for s in args.sizes]:
        cpu = fig.get(f"mta_http_e2e_{label}_server_cpu_us_per_msg")
        if cpu:
            print(f"mta_http_e2e_{label}_server_cpu_us_per_msg_over_sign_plus_1ms:"
                  f" {float(cpu) / (sign_us + 1000):.2f}")
    for label in [size_label(s) for s in args.sizes]:
        for sess in args.sessions:
            k = f"{sess}s_{label}"
            print(f"ratio_mta_e2e_over_postfix_dkim_e2e_{k}: "
                  + ratio(fig, f"mta_e2e_{k}_msgs_per_s", f"postfix_dkim_{k}_msgs_per_s"))
            print(f"ratio_mta_e2e_over_postfix_dkim_unix_e2e_{k}: "
                  + ratio(fig, f"mta_e2e_{k}_msgs_per_s", f"postfix_dkim_unix_{k}_msgs_per_s"))
            print(f"ratio_mta_e2e_over_postfix_e2e_{k}: "
                  + ratio(fig, f"mta_e2e_{k}_msgs_per_s", f"postfix_{k}_msgs_per_s"))
            print(f"ratio_mta_accept_over_bare_{k}: "
                  + ratio(fig, f"mta_accept_{k}_msgs_per_s", f"bare_{k}_msgs_per_s"))
            if sess == max(args.sessions):
                for peer in ("postfix", "postfix_dkim_unix"):
                    print(f"ratio_mta_http_e2e_over_{peer}_e2e_{k}: "
                          + ratio(fig, f"mta_http_e2e_{label}_msgs_per_s",
                                  f"{peer}_{k}_msgs_per_s"))
        eod = fig.get(f"mta_accept_1s_{label}_end_of_data_to_250_p50_ms")
        if eod:
            print(f"ratio_mta_accept_end_of_data_to_250_over_bare_commit_1s_{label}:"
                  f" {float(eod) / commit_ms:.2f}")
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems or any("FAILED" in v for v in fig.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
