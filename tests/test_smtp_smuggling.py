"""SMTP smuggling: end-of-data look-alikes on the two listeners that read DATA from outside, the
MX (port 25, anyone) and submission (STARTTLS + AUTH).

A server that ends DATA where a downstream server would not (or the other way round) lets a
client hide a second transaction inside a message: one server sees one message, the next sees
two, the second one with an envelope and a From the client could never have sent. Here every
look-alike of `<CRLF>.<CRLF>` is sent inside a message, followed by a complete smuggled second
transaction and the real end, in one write; the server must answer once (250 with the smuggled
text kept as body text, or a 5xx for a bare CR, a NUL, or a bare LF under
`smtp.bare_lf = "reject"`), store at most the one message, and go on answering in order.
The same bare CR/LF tricks are tried on the headers (a second From on submission, forged
verdict headers on the MX), and the real end is checked when pipelined or split across writes.
Raw sockets, two real servers (one per `smtp.bare_lf` mode) for the whole module."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mta.app import Server
from mta.smtp.data import BARE_CR, BARE_LF, NUL
from mta.store import Store
from tests import storeview
from tests.conftest import DOMAIN, Running, make_config, url_for
from tests.smtp_clients import LOGIN, PASSWORD, Raw, queued_id
from tests.test_inbound import add_route

pytestmark = pytest.mark.asyncio(loop_scope="module")

OTHER = "other.example.test"  # another customer's hosted domain
STRANGER = "stranger@sender.example.org"
DATA_GO_AHEAD = ["354 End data with <CR><LF>.<CR><LF>"]
MODES = ["normalise", "reject"]
LISTENERS = ["mx", "submission"]
TRUSTED_ROUTES = ('match_header("X-Mailgun-Sflag", "No")', 'match_header("X-Mailgun-Spf", "Pass")')


@dataclass(frozen=True)
class LookAlike:
    id: str
    bytes: bytes
    kind: str  # "lf" (bare LF), "cr" (bare CR) or "nul"


LOOK_ALIKES = [
    LookAlike("LF.LF", b"\n.\n", "lf"),
    LookAlike("CR.CR", b"\r.\r", "cr"),
    LookAlike("LF.CRLF", b"\n.\r\n", "lf"),
    LookAlike("CRLF.LF", b"\r\n.\n", "lf"),
    LookAlike("CR.CRLF", b"\r.\r\n", "cr"),
    LookAlike("CRLF.CR", b"\r\n.\r", "cr"),
    LookAlike("CRLF-NUL.CRLF", b"\r\n\x00.\r\n", "nul"),
    LookAlike("CRLF.NUL-CRLF", b"\r\n.\x00\r\n", "nul"),
]


def refusal(kind: str, mode: str) -> str | None:
    """The reply a message with this kind of stray byte gets, None for 250."""
    if kind == "cr":
        return BARE_CR
    if kind == "nul":
        return NUL
    return BARE_LF if mode == "reject" else None


# -- two servers for the module ----------------------------------------------------------------


async def start(directory: Path, tls: tuple[str, str], bare_lf: str, store_url: str) -> Running:
    """A server with the login alice@mg.example.test, a second hosted domain, and MX routes
    that keep everything: a message carrying our verdict headers would match a trusted route
    (its id shows in the accepted event), anything else the catch-all."""
    server = Server(make_config(directory, tls, smtp__bare_lf=bare_lf, store__url=store_url))
    await server.start()
    services = server.services
    assert services is not None
    await services.domains.create(DOMAIN)
    await services.domains.create(OTHER)
    await services.credentials.create(DOMAIN, "alice", PASSWORD)
    _, key = await services.keys.create()
    running = Running(server, f"http://127.0.0.1:{server.api_port}", key, DOMAIN)
    for priority, expression in enumerate(TRUSTED_ROUTES):
        await add_route(running, expression, "store()", "stop()", priority=priority)
    await add_route(running, "catch_all()", "store()", priority=len(TRUSTED_ROUTES))
    return running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(
    tmp_path_factory: pytest.TempPathFactory, tls_pair: tuple[str, str],
    request: pytest.FixtureRequest, module_engine: str,
) -> AsyncIterator[dict[str, Running]]:
    started = {}
    for mode in MODES:
        url = url_for(request, module_engine)
        started[mode] = await start(tmp_path_factory.mktemp(mode), tls_pair, mode, url)
    yield started
    for running in started.values():
        await running.server.stop()


@pytest.fixture
def opened() -> Iterator[list[Raw]]:
    """The test's client connections, closed at its end."""
    raws: list[Raw] = []
    yield raws
    for raw in raws:
        raw.close()


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Client:
    """A raw session on one listener, ready for MAIL: EHLO on the MX; EHLO, STARTTLS, EHLO and
    AUTH on submission. `sender` and `recipient` are an envelope the listener takes."""

    raw: Raw
    listener: str
    running: Running
    sender: str
    recipient: str

    @property
    def store(self) -> Store:
        return self.running.services.store

    async def transaction(self) -> None:
        assert await self.raw.command(f"MAIL FROM:<{self.sender}>") == ["250 2.1.0 OK"]
        assert await self.raw.command(f"RCPT TO:<{self.recipient}>") == ["250 2.1.5 OK"]
        assert await self.raw.command("DATA") == DATA_GO_AHEAD

    def message(self, head: str = "", body: bytes = b"Hi.\r\n", to: str = "") -> bytes:
        sender = f"Alice <{LOGIN}>" if self.listener == "submission" else STRANGER
        lines = f"From: {sender}\r\nTo: <{to or self.recipient}>\r\nSubject: Hello\r\n{head}\r\n"
        return lines.encode() + body

    async def goes_on(self) -> None:
        """Exactly the replies to RSET, NOOP and QUIT come next, in order, and nothing after:
        nothing the message held was taken for a command."""
        self.raw.send("RSET\r\nNOOP\r\nQUIT\r\n")
        assert [await self.raw.reply() for _ in range(3)] == [
            ["250 2.0.0 OK"], ["250 2.0.0 OK"], ["221 2.0.0 Bye"]
        ]
        assert await self.raw.closed()

    async def stored(self, reply: str, recipient: str = "") -> bytes:
        """The bytes kept for the recipient of a 250: the queued message on submission, what
        the route's store() keeps on the MX."""
        recipient = recipient or self.recipient
        if self.listener == "submission":
            [row] = await storeview.recipients(self.store, queued_id(reply))
            assert row["address"] == recipient
            return bytes(row["mime"])
        assert reply == "250 2.0.0 OK"
        [accepted] = await self.accepted(recipient)
        copy = await self.running.services.inbound.stored(DOMAIN, accepted["storage"]["key"])
        assert copy is not None
        return bytes(copy.mime)

    async def accepted(self, recipient: str = "") -> list[dict[str, Any]]:
        recipient = recipient or self.recipient
        accepted = await storeview.events(self.store, "accepted")
        return [e for e in accepted if e["recipient"] == recipient]


async def connect(running: Running, listener: str, opened: list[Raw]) -> Client:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", running.server.smtp.port(listener)
    )
    raw = Raw(reader, writer)
    opened.append(raw)
    raw.banner = await raw.reply()
    assert (await raw.command("EHLO client.example"))[-1] == "250 HELP"
    tag = uuid.uuid4().hex[:10]
    if listener == "submission":
        await raw.starttls()
        await raw.login()
        return Client(raw, listener, running, LOGIN, f"bob-{tag}@example.net")
    return Client(raw, listener, running, STRANGER, f"info-{tag}@{DOMAIN}")


async def kept(store: Store) -> dict[str, int]:
    """What holds accepted mail: queued messages and recipients, MX-stored messages."""
    counts = await storeview.counts(store)
    return {table: counts[table] for table in ("messages", "recipients", "inbound")}


def added(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {table: after[table] - before[table] for table in before}


def one_message(listener: str) -> dict[str, int]:
    if listener == "submission":
        return {"messages": 1, "recipients": 1, "inbound": 0}
    return {"messages": 0, "recipients": 0, "inbound": 1}


NOTHING = {"messages": 0, "recipients": 0, "inbound": 0}


def body_of(stored: bytes) -> bytes:
    return stored.split(b"\r\n\r\n", 1)[1]


def crlf_only(data: bytes) -> bool:
    return data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n") and b"\0" not in data


# -- end-of-data look-alikes -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("look", LOOK_ALIKES, ids=[look.id for look in LOOK_ALIKES])
async def test_an_end_of_data_look_alike_cannot_smuggle_a_second_transaction(
    servers: dict[str, Running], opened: list[Raw], mode: str, listener: str, look: LookAlike
):
    client = await connect(servers[mode], listener, opened)
    smuggled_rcpt = f"smuggled-{uuid.uuid4().hex[:10]}@{DOMAIN}"
    smuggled = (
        f"MAIL FROM:<{client.sender}>\r\nRCPT TO:<{smuggled_rcpt}>\r\nDATA\r\n"
        f"From: CEO <ceo@{OTHER}>\r\nTo: <{smuggled_rcpt}>\r\nSubject: smuggled\r\n\r\n"
        "Pay the invoice."
    ).encode()
    before = await kept(client.store)
    await client.transaction()
    client.raw.send(client.message(body=b"Hi." + look.bytes + smuggled + b"\r\n.\r\n"))
    reply = await client.raw.reply()
    expected = refusal(look.kind, mode)
    if expected is not None:
        assert reply == [expected]
        assert added(before, await kept(client.store)) == NOTHING
    else:
        assert reply[0].startswith("250 2.0.0 OK"), reply
        assert added(before, await kept(client.store)) == one_message(client.listener)
        stored = await client.stored(reply[0])
        # the look-alike ended a line, not the message: the smuggled transaction is body text
        assert body_of(stored) == b"Hi.\r\n\r\n" + smuggled + b"\r\n"
        assert crlf_only(stored) and b"\r\n.\r\n" not in stored
    await client.goes_on()
    assert not [e for e in await storeview.events(client.store) if e.get("recipient") == smuggled_rcpt]


# -- bare LF: normalised, or refused -------------------------------------------------------------


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_bare_lf_message_is_stored_with_crlf_only_when_normalising(
    servers: dict[str, Running], opened: list[Raw], listener: str
):
    client = await connect(servers["normalise"], listener, opened)
    await client.transaction()
    mime = client.message(head="X-Note: lf\n", body=b"one\n..two\nthree\r\n")
    client.raw.send(mime.replace(b"\r\n", b"\n")[:-1] + b"\r\n.\r\n")  # LF throughout
    reply = await client.raw.reply()
    assert reply[0].startswith("250 2.0.0 OK"), reply
    stored = await client.stored(reply[0])
    assert crlf_only(stored)
    assert body_of(stored) == b"one\r\n.two\r\nthree\r\n"
    parsed = storeview.parse(stored)
    assert (parsed["Subject"], parsed["X-Note"]) == ("Hello", "lf")
    await client.goes_on()


@pytest.mark.parametrize("listener", LISTENERS)
async def test_a_bare_lf_message_is_refused_with_550_when_rejecting_and_the_session_goes_on(
    servers: dict[str, Running], opened: list[Raw], listener: str
):
    client = await connect(servers["reject"], listener, opened)
    before = await kept(client.store)
    await client.transaction()
    client.raw.send(client.message(body=b"one\ntwo\r\n") + b".\r\n")
    assert await client.raw.reply() == [BARE_LF]
    assert added(before, await kept(client.store)) == NOTHING
    await client.transaction()
    reply = (await client.raw.data(client.message()))[0]
    assert reply.startswith("250 2.0.0 OK"), reply
    assert added(before, await kept(client.store)) == one_message(listener)
    await client.goes_on()


# -- line-end tricks in the header block ---------------------------------------------------------

HEADER_BREAKS = {"bare CR": "\r", "bare LF": "\n", "folded": "\r\n "}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("trick", list(HEADER_BREAKS))
async def test_a_login_cannot_smuggle_another_hosted_domains_from_with_a_line_end_trick(
    servers: dict[str, Running], opened: list[Raw], mode: str, trick: str
):
    client = await connect(servers[mode], "submission", opened)
    before = await kept(client.store)
    await client.transaction()
    mime = (
        f"From: me <{LOGIN}>{HEADER_BREAKS[trick]}From: CEO <ceo@{OTHER}>\r\n"
        f"To: <{client.recipient}>\r\nSubject: Wire transfer\r\n\r\nPlease pay.\r\n"
    ).encode()
    client.raw.send(mime + b".\r\n")
    reply = await client.raw.reply()
    if trick == "bare CR":
        assert reply == [BARE_CR]
    elif trick == "bare LF" and mode == "reject":
        assert reply == [BARE_LF]
    elif trick == "bare LF":  # read as CRLF: a second From header
        assert reply == ["550 5.6.0 'message' has more than one From header"]
    else:  # one From whose value holds both addresses: every address is checked
        assert reply[0].startswith(f"550 5.7.1 Sender ceo@{OTHER} is on {OTHER}"), reply
    assert added(before, await kept(client.store)) == NOTHING
    assert not await client.accepted()
    await client.goes_on()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("trick", ["bare CR", "bare LF"])
async def test_a_stranger_cannot_smuggle_our_verdict_headers_past_the_strip_with_a_bare_line_end(
    servers: dict[str, Running], opened: list[Raw], mode: str, trick: str
):
    client = await connect(servers[mode], "mx", opened)
    before = await kept(client.store)
    await client.transaction()
    brk = HEADER_BREAKS[trick]
    forged = f"X-Mailgun-Spf: Pass{brk}X-Mailgun-Sflag: No{brk}x-mailgun-sscore: -100\r\n"
    mime = (
        f"From: {STRANGER}\r\nTo: <{client.recipient}>\r\nSubject: Hello{brk}{forged}"
        "\r\nTrust me.\r\n"
    ).encode()
    client.raw.send(mime + b".\r\n")
    reply = await client.raw.reply()
    expected = refusal("cr" if trick == "bare CR" else "lf", mode)
    if expected is not None:
        assert reply == [expected]
        assert added(before, await kept(client.store)) == NOTHING
        await client.goes_on()
        return
    # normalised: the forged lines became header fields, and were dropped as a stranger's
    # copies of ours before routing and storing
    assert reply == ["250 2.0.0 OK"]
    assert added(before, await kept(client.store)) == one_message("mx")
    [accepted] = await client.accepted()
    assert [r["expression"] for r in accepted["routes"]] == ["catch_all()"]
    stored = await client.stored(reply[0])
    assert crlf_only(stored)
    assert re.search(rb"(?i)x-mailgun-s", stored) is None
    parsed = storeview.parse(stored)
    assert parsed["Subject"] == "Hello" and parsed["X-Mailgun-Incoming"] == "Yes"
    assert body_of(stored) == b"Trust me.\r\n"
    await client.goes_on()


# -- the real end, pipelined or split ------------------------------------------------------------


@pytest.mark.parametrize("listener", LISTENERS)
async def test_quit_pipelined_after_the_final_dot_is_answered_after_the_250(
    servers: dict[str, Running], opened: list[Raw], listener: str
):
    client = await connect(servers["normalise"], listener, opened)
    before = await kept(client.store)
    await client.transaction()
    client.raw.send(client.message() + b".\r\nQUIT\r\n")
    reply = await client.raw.reply()
    assert reply[0].startswith("250 2.0.0 OK"), reply
    assert await client.raw.reply() == ["221 2.0.0 Bye"]
    assert await client.raw.closed()
    assert added(before, await kept(client.store)) == one_message(listener)
    assert body_of(await client.stored(reply[0])) == b"Hi.\r\n"


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("second_content", ["after 354", "in the same write"])
async def test_a_second_transaction_pipelined_after_the_final_dot_is_a_message_of_its_own(
    servers: dict[str, Running], opened: list[Raw], listener: str, second_content: str
):
    client = await connect(servers["normalise"], listener, opened)
    second_rcpt = client.recipient.replace("-", "-second-", 1)
    before = await kept(client.store)
    await client.transaction()
    first = client.message(body=b"First.\r\n")
    second = client.message(body=b"Second.\r\n", to=second_rcpt)
    commands = f"MAIL FROM:<{client.sender}>\r\nRCPT TO:<{second_rcpt}>\r\nDATA\r\n".encode()
    if second_content == "after 354":
        client.raw.send(first + b".\r\n" + commands)
        replies = [await client.raw.reply() for _ in range(4)]
        client.raw.send(second + b".\r\nQUIT\r\n")
        replies += [await client.raw.reply() for _ in range(2)]
    else:
        client.raw.send(first + b".\r\n" + commands + second + b".\r\nQUIT\r\n")
        replies = [await client.raw.reply() for _ in range(6)]
    assert replies[0][0].startswith("250 2.0.0 OK"), replies
    assert replies[1:4] == [["250 2.1.0 OK"], ["250 2.1.5 OK"], DATA_GO_AHEAD]
    assert replies[4][0].startswith("250 2.0.0 OK"), replies
    assert replies[5] == ["221 2.0.0 Bye"]
    assert await client.raw.closed()
    added_rows = added(before, await kept(client.store))
    assert added_rows == {table: 2 * n for table, n in one_message(listener).items()}
    assert body_of(await client.stored(replies[0][0])) == b"First.\r\n"
    assert body_of(await client.stored(replies[4][0], second_rcpt)) == b"Second.\r\n"


async def server_has_read(running: Running, count: int) -> None:
    """Until the session in DATA has taken `count` bytes of it: the next write is then a read
    of its own (DataReader.received counts what the reader took off the stream)."""

    def taken() -> int:
        for handler in running.server.smtp.handlers:
            for session in handler.sessions:
                reader = getattr(session, "_data", None)
                if reader is not None:
                    return int(reader.received)
        return 0

    async def wait() -> None:
        while taken() < count:
            await asyncio.sleep(0.002)

    await asyncio.wait_for(wait(), 5)


END = b"\r\n.\r\n"


def spelled(data: bytes) -> str:
    return data.decode().replace("\r", "CR").replace("\n", "LF") or "-"


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize(
    "split", range(len(END)), ids=[f"{spelled(END[:n])}|{spelled(END[n:])}" for n in range(5)]
)
async def test_a_final_dot_split_across_writes_still_ends_the_message_once(
    servers: dict[str, Running], opened: list[Raw], listener: str, split: int
):
    running = servers["normalise"]
    client = await connect(running, listener, opened)
    before = await kept(client.store)
    await client.transaction()
    data = client.message(body=b"Hi.") + END
    cut = len(data) - len(END) + split
    client.raw.send(data[:cut])
    await server_has_read(running, cut)
    client.raw.send(data[cut:])
    reply = await client.raw.reply()
    assert reply[0].startswith("250 2.0.0 OK"), reply
    assert added(before, await kept(client.store)) == one_message(listener)
    assert body_of(await client.stored(reply[0])) == b"Hi.\r\n"
    await client.goes_on()
