"""Sending options carried inside a message (SMTP and messages.mime): the X-Mailgun-* control
headers and the multipart/mailgun-variables container.

The control headers are consumed (removed before delivery); X-Mailgun-Variables stays in the
message, as Mailgun leaves it.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import logging
import quopri
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from mta.accept.mime import MessageHead, header_name, header_value
from mta.dates import parse_date

log = logging.getLogger("mta.accept")

CONSUMED = {
    "x-mailgun-tag",
    "x-mailgun-campaign-id",
    "x-mailgun-dkim",
    "x-mailgun-deliver-by",
    "x-mailgun-drop-message",
    "x-mailgun-track",
    "x-mailgun-track-clicks",
    "x-mailgun-track-opens",
    "x-mailgun-require-tls",
    "x-mailgun-skip-verification",
    "x-mailgun-recipient-variables",
    "x-mailgun-sending-ip",
    "x-mailgun-sending-ip-pool",
    "x-mailgun-template-name",
    "x-mailgun-template-version",
    "x-mailgun-template-variables",
    "x-mailgun-delivery-time-optimize-period",
    "x-mailgun-time-zone-localize",
}
_TRUE = {"yes", "true", "1", "on"}
_FALSE = {"no", "false", "0", "off"}


class HeaderOptionError(ValueError):
    """A control header whose value cannot be used; the text names the header."""


@dataclass
class HeaderOptions:
    tags: list[str] = field(default_factory=list)
    campaigns: list[str] = field(default_factory=list)
    flags: dict[str, bool | str] = field(default_factory=dict)  # Options field -> value
    deliver_at: float | None = None
    user_variables: dict[str, Any] = field(default_factory=dict)
    recipient_variables: dict[str, Any] | None = None
    # the first From, Sender, To, Subject, Message-Id and Date of the message, decoded
    summary: dict[str, str] = field(default_factory=dict)


SUMMARY_HEADERS = ("from", "sender", "to", "subject", "message-id", "date")


_FLAG_HEADERS = {
    "x-mailgun-dkim": "dkim",
    "x-mailgun-drop-message": "test_mode",
    "x-mailgun-track": "tracking",
    "x-mailgun-track-clicks": "tracking_clicks",
    "x-mailgun-track-opens": "tracking_opens",
    "x-mailgun-require-tls": "require_tls",
    "x-mailgun-skip-verification": "skip_verification",
}


def _flag(name: str, value: str) -> bool | str:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    if lowered == "htmlonly" and name.lower() == "x-mailgun-track-clicks":
        return "htmlonly"
    raise HeaderOptionError(f"{name} must be yes or no, got {value!r}")


def _json_object(name: str, value: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise HeaderOptionError(f"{name} is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise HeaderOptionError(f"{name} is not a JSON object")
    return parsed


def _multipart_parts(body: bytes, boundary: str) -> list[bytes]:
    """The raw parts of a multipart body, between its delimiter lines (RFC 2046 5.1.1)."""
    delimiter = re.compile(
        rb"(?:\A|\r?\n)--"
        + re.escape(boundary.encode("ascii", "replace"))
        + rb"(--)?[ \t]*(?=\r?\n|\Z)"
    )
    parts: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : match.start()])
        if match.group(1):
            break
        newline = body.find(b"\n", match.end())
        start = None if newline < 0 else newline + 1
    return parts


def _part_content(part: bytes) -> tuple[dict[str, str], bytes]:
    """(header values by lower-cased name, the content after the blank line)."""
    end = -2 if part.startswith(b"\r\n") else part.find(b"\r\n\r\n")
    head, content = (part[: max(end, 0)], part[end + 4 :]) if end != -1 else (part, b"")
    fields = re.split(rb"\r\n(?![ \t])", head) if head else []
    return {header_name(f): header_value(f) for f in fields}, content


def _container_type(head: MessageHead) -> str | None:
    """The Content-Type of a multipart/mailgun-variables message, else None."""
    for raw, name in zip(head.fields, head.names, strict=True):
        if name == "content-type":
            value = header_value(raw)
            return value if value.lower().startswith("multipart/mailgun-variables") else None
    return None


def unwrap_variables_container(
    content_type: str, rest: bytes
) -> tuple[bytes, dict[str, Any] | None]:
    """A multipart/mailgun-variables message -> (the inner message, its recipient variables).

    The inner message is cut out of the container as it is, not parsed and generated again:
    that would refold its long header lines (and break a DKIM signature already on it)."""
    params = email.message.Message()
    params["Content-Type"] = content_type
    boundary = params.get_boundary()
    variables: dict[str, Any] | None = None
    inner: bytes | None = None
    for part in _multipart_parts(rest, boundary) if boundary else []:
        headers, content = _part_content(part)
        kind = headers.get("content-type", "text/plain").split(";")[0].strip().lower()
        if kind == "application/json" and variables is None:
            encoding = headers.get("content-transfer-encoding", "").strip().lower()
            try:
                if encoding == "base64":
                    content = base64.b64decode(content)
                elif encoding == "quoted-printable":
                    content = quopri.decodestring(content)
                variables = orjson.loads(content)
            except (orjson.JSONDecodeError, binascii.Error, ValueError):
                raise HeaderOptionError("the mailgun-variables JSON part is not valid") from None
            if not isinstance(variables, dict):
                raise HeaderOptionError("the mailgun-variables JSON part is not an object")
        elif kind == "message/rfc822" and inner is None:
            inner = content
    if not inner:
        raise HeaderOptionError("the mailgun-variables container has no message/rfc822 part")
    return inner, variables


def message_summary(head: MessageHead) -> dict[str, str]:
    """The first From, Sender, To, Subject, Message-Id and Date, decoded."""
    summary: dict[str, str] = {}
    for name in SUMMARY_HEADERS:
        value = head.first(name)
        if value is not None:
            summary[name] = value
    return summary


def consume_control_headers(
    head: MessageHead, parse: Callable[[bytes], MessageHead]
) -> tuple[MessageHead, HeaderOptions]:
    """Read and remove the X-Mailgun-* control headers; keep X-Mailgun-Variables. A
    multipart/mailgun-variables container gives way to the message inside it, whose header
    block `parse` reads (with the same limits)."""
    options = HeaderOptions()
    container = _container_type(head)
    if container is not None:
        inner, options.recipient_variables = unwrap_variables_container(
            container, bytes(head.body)
        )
        head = parse(inner)
    consumed = False
    for raw, name in zip(head.fields, head.names, strict=True):
        if not name.startswith("x-mailgun-"):
            continue
        value = header_value(raw)
        shown = raw.split(b":", 1)[0].decode("ascii", "replace").strip()
        if name == "x-mailgun-variables":
            try:
                options.user_variables.update(_json_object(shown, value))
            except HeaderOptionError:
                log.warning("ignoring an X-Mailgun-Variables header that is not a JSON object")
            continue
        if name not in CONSUMED:
            continue
        consumed = True
        if name == "x-mailgun-tag":
            options.tags.append(value)
        elif name == "x-mailgun-campaign-id":
            options.campaigns.append(value)
        elif name == "x-mailgun-deliver-by":
            options.deliver_at = parse_date(value)
            if options.deliver_at is None:
                raise HeaderOptionError(f"X-Mailgun-Deliver-By is not a valid date: {value!r}")
        elif name == "x-mailgun-recipient-variables":
            parsed = _json_object(shown, value)
            options.recipient_variables = (options.recipient_variables or {}) | parsed
        elif name in _FLAG_HEADERS:
            options.flags[_FLAG_HEADERS[name]] = _flag(shown, value)
        # sending-ip(-pool), template, STO and TZO headers: consumed, not acted on
    if consumed:
        head = head.without(lambda name: name in CONSUMED)
    options.summary = message_summary(head)
    return head, options
