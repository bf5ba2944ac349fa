"""Event log lines (issue 14): one line per committed event on logger mta.events.log, in
logfmt or JSON, that stays one line whatever a sender or a remote server put in its values."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mta.events.logs import json_line, logfmt_line
from mta.events.model import DeliveryStatus, Event
from tests.capture import Capture, start_capture
from tests.conftest import DOMAIN, auth_header, store_env
from tests.test_outbound_delivery import deliver, events_of

pytestmark = pytest.mark.asyncio

DEST = "dest.example.test"
LOGGER = "mta.events.log"
HOSTILE = '550 5.7.1 "no" \\ say=yes\r\nevent=delivered \x00 \t end'

_TOKEN = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ ]+)(?: |$)')
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def parse_logfmt(line: str) -> dict[str, str]:
    """A tiny logfmt reader: key=bare or key="quoted with \\ escapes"; the whole line must parse."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        match = _TOKEN.match(line, pos)
        assert match, f"unparsable at {pos}: {line!r}"
        key, value = match.groups()
        if value.startswith('"'):
            value = re.sub(
                r"\\(u[0-9a-f]{4}|.)",
                lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) == 5
                else _UNESCAPE[m.group(1)],
                value[1:-1],
            )
        assert key not in out, f"{key} twice in {line!r}"
        out[key] = value
        pos = match.end()
    return out


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def test_one_accepted_and_one_delivered_line_per_recipient(
    start_server: Callable[..., Any], mx: Capture, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger=LOGGER)
    running = await start_server(outbound__enabled=True, dns__static_mx={DEST: [mx.address]})
    message_id = await deliver(running, f"alice@{DEST}, bob@{DEST}", **{"o:tag": "a b=c"})
    await mx.wait_for(2)
    await events_of(running, "delivered", 2)
    parsed = [parse_logfmt(line) for line in lines(caplog)]
    for who in ("alice", "bob"):
        [accepted] = [p for p in parsed if p["event"] == "accepted" and p["recipient"].startswith(who)]
        [delivered] = [p for p in parsed if p["event"] == "delivered" and p["recipient"].startswith(who)]
        assert accepted["domain"] == DOMAIN and accepted["message_id"] == message_id
        assert accepted["destination"] == DEST and accepted["tags"] == "a b=c"
        assert delivered["outcome"] == "delivered" and delivered["code"] == "250"
        assert delivered["mx"] == "127.0.0.1" and delivered["message_id"] == message_id
        assert delivered["recipient"] == f"{who}@{DEST}" and delivered["destination"] == DEST
        assert delivered["ts"].endswith("Z")


@pytest.mark.parametrize("style", ["logfmt", "json"])
async def test_a_hostile_reply_stays_on_one_line(
    start_server: Callable[..., Any], caplog: pytest.LogCaptureFixture, style: str
):
    caplog.set_level(logging.INFO, logger=LOGGER)
    reply = '550 5.7.1 "no" \\ say=yes event=delivered'
    capture = await start_capture(mail_reply=reply)
    try:
        running = await start_server(
            outbound__enabled=True, dns__static_mx={DEST: [capture.address]}, logs__events=style
        )
        await deliver(running, f"carol@{DEST}")
        await events_of(running, "failed")
    finally:
        await capture.close()
    read = parse_logfmt if style == "logfmt" else json.loads
    [failed] = [p for p in map(read, lines(caplog)) if p["event"] == "failed"]
    assert failed["outcome"] == "permanent" and str(failed["code"]) == "550"
    assert "say=yes event=delivered" in failed["reply"] and '"no" \\' in failed["reply"]


@pytest.mark.parametrize("render,read", [(logfmt_line, parse_logfmt), (json_line, json.loads)])
async def test_control_characters_never_break_the_line(render: Any, read: Any):
    event = Event(
        "failed", recipient='"x\ny"@d.test', severity="temporary", tags=("t\r\n", "u"),
        delivery_status=DeliveryStatus(code=451, message=HOSTILE, mx_host="mx.d.test"),
    )
    line = render(DOMAIN, event)
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    back = read(line)
    assert back["reply"] == HOSTILE and back["recipient"] == '"x\ny"@d.test'
    assert back["tags"] == "t\r\n,u" and back["outcome"] == "temporary"


async def test_off_logs_nothing(
    start_server: Callable[..., Any], mx: Capture, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger=LOGGER)
    running = await start_server(
        outbound__enabled=True, dns__static_mx={DEST: [mx.address]}, logs__events="off"
    )
    await deliver(running, f"dave@{DEST}")
    await events_of(running, "delivered")
    assert lines(caplog) == []


async def test_json_lines_of_mta_serve_are_whole_json_objects_on_stderr(
    server_process: Callable[..., Any], tmp_path: Path, store_url: str
):
    """Under systemd stderr is the journal: each JSON line must parse alone, no log prefix."""
    served = server_process(MTA_LOGS_EVENTS="json", **store_env(store_url))
    served.cli("domain", "add", DOMAIN)
    key = served.cli("key", "create").stdout.strip()
    form = {"from": f"sender@{DOMAIN}", "to": f"erin@{DEST}", "subject": "Hi", "text": "Hello"}
    async with aiohttp.ClientSession(served.url, headers=auth_header(key)) as api, api.post(
        f"/v3/{DOMAIN}/messages", data=form
    ) as resp:
        assert resp.status == 200, await resp.text()
    log = tmp_path / "serve-0.log"
    accepted: list[dict[str, Any]] = []
    for _ in range(100):
        accepted = [
            json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")
        ]
        if accepted:
            break
        await asyncio.sleep(0.1)
    assert [(a["event"], a["recipient"], a["domain"]) for a in accepted] == [
        ("accepted", f"erin@{DEST}", DOMAIN)
    ]
    assert "INFO mta.events.log" not in log.read_text()  # the prefix is not added to them
