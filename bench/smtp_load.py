"""SMTP load generator for bench/smtp_accept.py (runs in its own process, loopback only).

Raw asyncio streams (uvloop when installed: its TLS is much cheaper than asyncio's), so that
the client costs little next to the server. Three modes:

- `reused`: CONNECTIONS sessions each say EHLO, STARTTLS, EHLO, AUTH PLAIN once, then send
  messages one after another: MAIL+RCPT+DATA pipelined in one write (as Postfix and Exim do),
  the body after the 354, the next message after the 250.
- `session`: CONNECTIONS workers each loop on connect, EHLO, STARTTLS, EHLO, AUTH PLAIN, one
  message (pipelined as above), QUIT.
- `idle`: CONNECTIONS connections that say EHLO (and, with --tls, STARTTLS, EHLO and AUTH)
  and then hold still until told to close.

With --plain (bench/inbound_accept.py, the MX port), reused and session skip STARTTLS and AUTH:
EHLO, then the messages in plain text. --mail-from and --rcpt set the envelope (and the From and
To headers); the default sender is --login. A 250 after DATA that names no Message-Id (the MX
port's `250 2.0.0 OK`) counts the id the client put in the message.

Talks to its parent over stdin/stdout. It prints `ready` once its sessions are set up (reused:
authenticated; idle: all EHLO'd). For reused/session, the parent then writes
`go MEASURE_FROM MEASURE_UNTIL` (time.monotonic() values, the same clock in every process on
Linux): load runs from then on, replies that arrive inside the window are counted, no new
message starts after MEASURE_UNTIL, messages in flight are finished and the sessions QUIT.
For idle, the parent writes `close`. At the end it prints `load_*: value` lines and writes
every Message-Id answered 250 (warm-up included) to --ids.

    python bench/smtp_load.py --port P --mode reused --connections 50 --size 1024 \
        --login alice@mg.bench.test --password s3cret-pass --ids FILE
    python bench/smtp_load.py --port P --mode reused --plain --mail-from a@b.example \
        --rcpt inbox@mg.bench.test --size 5120 --ids FILE
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import ssl
import sys
import time
from collections import Counter
from email.utils import formatdate


class ReplyError(Exception):
    """An SMTP reply other than the expected one."""

    def __init__(self, stage: str, line: bytes) -> None:
        super().__init__(f"{stage}: {line[:120]!r}")
        self.stage = stage
        self.line = line


def build_message(
    size: int, sender: str, tag: str, recipient: str = "recipient@example.com"
) -> tuple[bytes, bytes]:
    """A plain-text message of exactly `size` bytes once its Message-Id (of the same length
    for every message) is put in between: (head before the id, rest after it)."""
    head = (
        f"From: Bench Sender <{sender}>\r\n"
        f"To: Some Recipient <{recipient}>\r\n"
        "Subject: Your order has shipped\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Message-Id: <"
    ).encode()
    id_len = len(f"{tag}.000000000@bench.client")
    after_id = b">\r\n\r\n"
    room = size - len(head) - id_len - len(after_id)
    if room < 4:
        raise ValueError(f"--size {size} is too small")
    text = (
        b"Hello, your order 12345 has shipped and will arrive on Tuesday. Thank you for"
        b" shopping with us; the tracking number is 1Z999AA10123456784.\r\n"
    )
    body = bytearray()
    while len(body) < room:
        body += text
    del body[room - 2 :]
    body += b"\r\n"
    assert not any(line.startswith(b".") for line in body.split(b"\r\n"))
    return head, after_id + bytes(body)


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.port = args.port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate
        self.plain = args.plain
        blob = f"\0{args.login}\0{args.password}".encode()
        self.auth = b"AUTH PLAIN " + base64.b64encode(blob) + b"\r\n"
        sender = args.mail_from or args.login
        self.tag = f"{args.tag}.{os.getpid()}"
        # (envelope, head, tail) per recipient; message n goes to the n-th, round robin
        self.messages = [
            (f"MAIL FROM:<{sender}> SIZE={args.size}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode(),
             *build_message(args.size, sender, self.tag, rcpt))
            for rcpt in args.rcpt.split(",")
        ]
        self.serial = 0
        self.ids: list[str] = []
        self.latencies: list[float] = []
        self.counts: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.window = (float("inf"), float("inf"))
        self.stop_at = float("inf")

    # -- protocol pieces ----------------------------------------------------------------

    @staticmethod
    async def reply(reader: asyncio.StreamReader, stage: str, expect: bytes) -> bytes:
        line = await reader.readuntil(b"\r\n")
        while line[3:4] == b"-":
            line = await reader.readuntil(b"\r\n")
        if not line.startswith(expect):
            raise ReplyError(stage, line)
        return line

    async def open(
        self, tls: bool | None = None, auth: bool | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """EHLO, then STARTTLS and AUTH PLAIN unless told otherwise (--plain: neither)."""
        tls = not self.plain if tls is None else tls
        auth = not self.plain if auth is None else auth
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 16)
        try:
            await self.reply(reader, "banner", b"220")
            writer.write(b"EHLO bench.client\r\n")
            await self.reply(reader, "ehlo", b"250")
            if tls:
                writer.write(b"STARTTLS\r\n")
                await self.reply(reader, "starttls", b"220")
                await writer.start_tls(self.ctx)
                writer.write(b"EHLO bench.client\r\n")
                await self.reply(reader, "ehlo_tls", b"250")
            if auth:
                writer.write(self.auth)
                await self.reply(reader, "auth", b"235")
        except BaseException:
            writer.transport.abort()
            raise
        return reader, writer

    async def send_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.serial += 1
        msg_id = f"{self.tag}.{self.serial:09d}@bench.client".encode()
        envelope, head, tail = self.messages[self.serial % len(self.messages)]
        started = time.monotonic()
        writer.write(envelope)
        await self.reply(reader, "mail", b"250")
        await self.reply(reader, "rcpt", b"250")
        await self.reply(reader, "data", b"354")
        writer.write(head + msg_id + tail + b".\r\n")
        line = await self.reply(reader, "end_of_data", b"250")
        now = time.monotonic()
        start, end = line.find(b"<"), line.rfind(b">")
        if start >= 0 and end > start:
            self.ids.append(line[start + 1 : end].decode())
        elif self.plain:  # the MX port's 250 names no id: the one this message carries
            self.ids.append(msg_id.decode())
        else:
            raise ReplyError("end_of_data_no_id", line)
        if self.window[0] <= now < self.window[1]:
            self.counts["ok"] += 1
            self.latencies.append(now - started)

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, ReplyError):
            self.counts[f"reply_{exc.stage}_{exc.line[:3].decode('latin-1')}"] += 1
        else:
            self.counts[f"error_{type(exc).__name__}"] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(repr(exc)[:200])

    @staticmethod
    def close(writer: asyncio.StreamWriter) -> None:
        try:
            writer.close()
        except Exception:  # a broken session is closed as well as it can be
            writer.transport.abort()

    async def quit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reply(reader, "quit", b"221"), 5)
        except Exception as exc:
            self.failed(exc)
        self.close(writer)

    # -- modes --------------------------------------------------------------------------

    async def reused_worker(
        self, session: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
    ) -> None:
        while time.monotonic() < self.stop_at:
            if session is None:
                try:
                    session = await self.open()
                except Exception as exc:
                    self.failed(exc)
                    await asyncio.sleep(0.05)
                    continue
            reader, writer = session
            try:
                await self.send_one(reader, writer)
            except Exception as exc:
                self.failed(exc)
                writer.transport.abort()
                session = None
        if session is not None:
            await self.quit(*session)

    async def session_worker(self) -> None:
        while time.monotonic() < self.stop_at:
            try:
                reader, writer = await self.open()
            except Exception as exc:
                self.failed(exc)
                await asyncio.sleep(0.05)
                continue
            self.counts["sessions"] += 1
            try:
                await self.send_one(reader, writer)
            except Exception as exc:
                self.failed(exc)
                writer.transport.abort()
                continue
            await self.quit(reader, writer)

    async def wait_for_parent(self) -> str:
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        return line.strip()

    async def run(self) -> None:
        args = self.args
        n = args.connections
        began = time.monotonic()
        if args.mode == "idle":
            gate = asyncio.Semaphore(100)  # do not flood the listen backlog

            async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
                async with gate:
                    try:
                        return await self.open(tls=args.tls, auth=args.tls)
                    except Exception as exc:
                        self.failed(exc)
                        return None

            sessions = [s for s in await asyncio.gather(*(one() for _ in range(n))) if s]
            self.counts["idle_open"] = len(sessions)
            self.counts["setup_us"] = int((time.monotonic() - began) * 1e6)
            await self.wait_for_parent()
            # the server must still answer on every one of them
            alive = await asyncio.gather(
                *(self._noop(r, w) for r, w in sessions), return_exceptions=True
            )
            self.counts["idle_alive_at_close"] = sum(1 for a in alive if a is True)
            for _, writer in sessions:
                writer.transport.abort()
            self.report()
            return

        sessions: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = []
        if args.mode == "reused":
            # the first AUTH pays scrypt; the server remembers a verified login afterwards
            # (--plain: no AUTH, the same order anyway)
            first = await self.open()
            rest = await asyncio.gather(*(self.open() for _ in range(n - 1)))
            sessions = [first, *rest]
        else:
            sessions = [None] * n
        self.counts["setup_us"] = int((time.monotonic() - began) * 1e6)
        command = (await self.wait_for_parent()).split()
        if not command or command[0] != "go":
            raise SystemExit(f"unexpected command from the parent: {command}")
        self.window = (float(command[1]), float(command[2]))
        self.stop_at = self.window[1]
        if args.mode == "reused":
            await asyncio.gather(*(self.reused_worker(s) for s in sessions))
        else:
            await asyncio.gather(*(self.session_worker() for _ in range(n)))
        self.report()

    async def _noop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"NOOP\r\n")
        await asyncio.wait_for(self.reply(reader, "noop", b"250"), 10)
        return True

    def report(self) -> None:
        with open(self.args.ids, "w") as out:
            out.write("".join(f"{i}\n" for i in self.ids))
        self.latencies.sort()
        print(f"load_ok: {self.counts.pop('ok', 0)}")
        print(f"load_answered_250_total: {len(self.ids)}")
        for name, value in sorted(self.counts.items()):
            print(f"load_{name}: {value}")
        if self.latencies:
            lat = self.latencies

            def pct(p: float) -> int:
                return int(lat[min(len(lat) - 1, int(len(lat) * p))] * 1e6)

            print(f"load_latency_p50_us: {pct(0.50)}")
            print(f"load_latency_p99_us: {pct(0.99)}")
            print(f"load_latency_max_us: {int(lat[-1] * 1e6)}")
        for i, sample in enumerate(self.error_samples):
            print(f"load_sample_{i}: {sample}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("reused", "session", "idle"), required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--login", default="", help="AUTH PLAIN user (and default sender)")
    parser.add_argument("--password", default="")
    parser.add_argument(
        "--plain", action="store_true", help="reused/session: no STARTTLS, no AUTH (MX port)"
    )
    parser.add_argument("--mail-from", default="", help="envelope sender (default: --login)")
    parser.add_argument("--rcpt", default="recipient@example.com",
                        help="envelope recipient, or several (comma-separated) taken in turn")
    parser.add_argument("--ids", required=True, help="Message-Ids answered 250 go here")
    parser.add_argument("--tag", default="m", help="makes Message-Ids unique across runs")
    parser.add_argument("--tls", action="store_true", help="idle: STARTTLS and AUTH as well")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    args = parser.parse_args()
    if not args.plain and not (args.login and args.password):
        parser.error("--login and --password are needed unless --plain")
    if not (args.mail_from or args.login):
        parser.error("--mail-from (or --login) is needed")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.connections + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    load = Load(args)
    if args.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if args.loop == "uvloop":
                raise
        else:
            uvloop.run(load.run())
            return
    asyncio.run(load.run())


if __name__ == "__main__":
    main()
