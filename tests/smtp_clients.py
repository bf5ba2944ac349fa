"""SMTP clients for the tests: a raw-socket client for exact bytes, aiosmtplib connected the way
relayhosts connect, and the message and reply helpers the SMTP tests share."""

from __future__ import annotations

import asyncio
import base64
import re
import ssl

import aiosmtplib

from tests.conftest import DOMAIN, Running

LOGIN = f"alice@{DOMAIN}"
PASSWORD = "s3cret-pass"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_BAD = "535 5.7.8 Authentication credentials invalid"


def client_tls() -> ssl.SSLContext:
    """The test server's certificate is self-signed: clients are told not to verify it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def auth_plain(login: str = LOGIN, password: str = PASSWORD, authzid: str = "") -> str:
    """An AUTH PLAIN command with the initial response, as Postfix, Exim and Sendmail send it."""
    return f"AUTH PLAIN {b64(authzid + chr(0) + login + chr(0) + password)}"


def message(
    *headers: str,
    sender: str = f"Alice <{LOGIN}>",
    to: str = "bob@example.net",
    subject: str = "Hello",
    body: str = "Hi Bob.\r\n",
) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def queued_id(reply: str) -> str:
    """The Message-Id from `250 2.0.0 OK: queued as <id>`."""
    match = re.fullmatch(r"250 2\.0\.0 OK: queued as <([^<>\s]+)>", reply)
    assert match, reply
    return match.group(1)


class Raw:
    """An SMTP client that writes exact bytes and reads whole replies: for what higher-level
    clients hide (pipelining, bad commands, unsolicited 421 replies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.banner: list[str] = []

    async def reply(self, timeout: float = 5.0) -> list[str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                raise EOFError(f"connection closed after {lines}")
            assert line.endswith(b"\r\n") and b"\r" not in line[:-2], line
            lines.append(line[:-2].decode())
            if line[3:4] != b"-":
                return lines

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def command(self, line: bytes | str) -> list[str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def starttls(self) -> None:
        assert await self.command("STARTTLS") == ["220 Ready to start TLS"]
        await self.writer.start_tls(client_tls())

    async def login(self) -> None:
        assert (await self.command("EHLO client.example"))[-1] == "250 HELP"
        assert await self.command(auth_plain()) == [
            AUTH_OK
        ]

    async def data(self, mime: bytes) -> list[str]:
        """The message, dot-stuffed, and the final dot; the reply to it."""
        assert mime.endswith(b"\r\n")
        self.send(re.sub(rb"(?m)^\.", b"..", mime) + b".\r\n")
        return await self.reply()

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (after anything still unread)."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
        except (ConnectionError, ssl.SSLError):
            return True
        return rest == b""

    def close(self) -> None:
        self.writer.close()


class Clients:
    """Opens client connections to a running server and closes them at the end of the test."""

    def __init__(self) -> None:
        self._raw: list[Raw] = []
        self._smtp: list[aiosmtplib.SMTP] = []

    async def raw(
        self, running: Running, listener: str = "submission_tls", source: str = "127.0.0.1"
    ) -> Raw:
        """`source` picks the client's loopback address (127.0.0.0/8), i.e. who the server
        thinks is connecting."""
        port = running.server.smtp.port(listener)
        tls = client_tls() if listener == "submission_tls" else None
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, local_addr=(source, 0)
        )
        raw = Raw(reader, writer)
        self._raw.append(raw)
        raw.banner = await raw.reply()
        return raw

    async def smtp(
        self, running: Running, listener: str = "submission", login: bool = True
    ) -> aiosmtplib.SMTP:
        """Connected the way relayhosts do: EHLO, STARTTLS, EHLO again (TLS from the start on
        465), then AUTH PLAIN."""
        implicit = listener == "submission_tls"
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=running.server.smtp.port(listener),
            use_tls=implicit,
            start_tls=False,
            validate_certs=False,
            timeout=10,
        )
        await client.connect()
        self._smtp.append(client)
        await client.ehlo()
        if not implicit:
            await client.starttls()
            await client.ehlo()
        if login:
            await client.auth_plain(LOGIN, PASSWORD)
        return client

    def close(self) -> None:
        for raw in self._raw:
            raw.close()
        for client in self._smtp:
            client.close()


async def submit(
    client: aiosmtplib.SMTP, mime: bytes, rcpts: tuple[str, ...] = ("bob@example.net",),
    sender: str = LOGIN, options: tuple[str, ...] = (),
) -> str:
    """MAIL, RCPT(s), DATA with aiosmtplib; the DATA reply as one line."""
    assert (await client.mail(sender, options=list(options))).code == 250
    for rcpt in rcpts:
        assert (await client.rcpt(rcpt)).code == 250
    try:
        reply = await client.data(mime)
    except aiosmtplib.SMTPResponseException as exc:
        return f"{exc.code} {exc.message}"
    return f"{reply.code} {reply.message}"
