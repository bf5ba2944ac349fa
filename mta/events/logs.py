"""One log line per committed event (issue 14): logfmt or JSON, per `logs.events`.

The line is built from the Event's fields directly (not from its rendered payload): this runs
for every event on the event loop. Values a sender or a remote server chose (addresses, reply
texts, tags) are quoted and escaped, so a line never holds a raw newline: under systemd stderr
goes to the journal, one entry per line.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import orjson

from mta.events.model import Event
from mta.store import CommitObserver

LOGGER = logging.getLogger("mta.events.log")

_PLAIN = re.compile(r"[^\s\"=\\\x00-\x1f\x7f]+")  # values written without quotes
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r"[\\\"\x00-\x1f\x7f]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\u{ord(char):04x}"


def logfmt_value(value: str) -> str:
    """`value` as one logfmt token: bare when it is plain, else quoted with escapes."""
    if value and _PLAIN.fullmatch(value):
        return value
    return '"' + _NEEDS_ESCAPE.sub(_escape, value) + '"'


def _fields(domain: str, event: Event) -> list[tuple[str, Any]]:
    """The line's fields in order; None values are left out."""
    status = event.delivery_status
    message = event.message
    if event.kind == "failed":
        outcome: str = event.severity or "failed"
    else:
        outcome = event.kind
    return [
        ("ts", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.timestamp))
         + f".{int(event.timestamp % 1 * 1000):03d}Z"),
        ("event", event.kind),
        ("domain", domain),
        ("id", event.id),
        ("message_id", message.headers.message_id if message is not None else None),
        ("recipient", event.recipient),
        ("destination", event.recipient_domain),
        ("mx", status.mx_host if status is not None else None),
        ("outcome", outcome),
        ("reason", event.reason or (event.reject.reason if event.reject is not None else None)),
        ("code", status.code if status is not None else None),
        ("reply", (status.message or status.description or None) if status is not None else None),
        ("attempt", status.attempt_no if status is not None else None),
        ("tags", ",".join(event.tags) if event.tags else None),
    ]


def logfmt_line(domain: str, event: Event) -> str:
    return " ".join(
        f"{key}={value}" if isinstance(value, int) else f"{key}={logfmt_value(value)}"
        for key, value in _fields(domain, event)
        if value is not None and value != ""
    )


def json_line(domain: str, event: Event) -> str:
    return orjson.dumps(
        {key: value for key, value in _fields(domain, event) if value is not None and value != ""}
    ).decode()


def bare_lines(stream: TextIO) -> None:
    """Event lines on `stream` as they are, without the server's log prefix: a JSON line is
    then a whole JSON object (journald stamps each line itself)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.propagate = False


def event_logger(style: str) -> CommitObserver:
    """The commit observer that logs each committed event in `style` ("logfmt" or "json")."""
    render: Callable[[str, Event], str] = json_line if style == "json" else logfmt_line

    def observe(observed: Sequence[Any]) -> None:
        if not LOGGER.isEnabledFor(logging.INFO):
            return
        for domain, event in observed:
            LOGGER.info("%s", render(domain, event))

    return observe
