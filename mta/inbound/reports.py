"""Reports that come back about mail we sent: delivery status notifications (RFC 3464, a
"delayed bounce") and feedback-loop complaints (ARF, RFC 5965).

A report is tied to its recipient by the return path we sent with (`bounce+<id>.<tag>@...`,
checked with its HMAC tag), or, for a complaint without it, by the original Message-Id and
recipient. It then becomes an event, and a hard bounce or a complaint lands on its list.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import re
import time
from dataclasses import dataclass, field
from email.message import Message as EmailMessage

from mta.events import DeliveryStatus, event_statements
from mta.inbound.parsed import TooManyParts, parse_bounded
from mta.outbound.policy import Classifier
from mta.outbound.returnpath import ReturnPaths
from mta.queue import Delivery, delivery_event, recipient_by_message_id, sent_recipient
from mta.store import Statement, Store
from mta.suppressions import bounce_statement, complaint_statement

log = logging.getLogger("mta.inbound")

# return paths of ours one report may name (its envelope recipients and, for a complaint, the
# paths it quotes): a real one names one, maybe twice; more would be guessing tags
MAX_GUESSES = 3
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_REPLY_CODE = re.compile(r"\b([245]\d\d)\b")


@dataclass(frozen=True)
class Failure:
    """One failed recipient of a DSN."""

    recipient: str
    status: str
    diagnostic: str


@dataclass
class Summary:
    """What a report says, read once per message (off the loop): the rest is lookups. It also
    counts the return paths checked for it, so that one message cannot try many tags."""

    kind: str  # "delivery-status" or "feedback-report"
    failures: tuple[Failure, ...] = ()
    return_paths: tuple[str, ...] = ()  # a complaint's candidate return paths of ours
    message_id: str = ""
    original_recipient: str = ""
    guesses_left: int = field(default=MAX_GUESSES, compare=False)


def report_type(message: EmailMessage) -> str:
    """'delivery-status', 'feedback-report' or '' for an ordinary message."""
    if message.get_content_type() != "multipart/report":
        return ""
    return str(message.get_param("report-type", "") or "").lower()


def _field_blocks(part: EmailMessage) -> list[EmailMessage]:
    """message/delivery-status and message/feedback-report bodies as header blocks."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, EmailMessage)]
    text = payload if isinstance(payload, str) else ""
    return [email.message_from_string(b + "\n") for b in re.split(r"\r?\n\r?\n", text) if b]


def _original(message: EmailMessage) -> EmailMessage | None:
    for part in message.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]
            if isinstance(payload, str):
                return email.message_from_string(payload)
    return None


def _address(value: str | None) -> str:
    """'rfc822; user@example.com' -> 'user@example.com'."""
    if not value:
        return ""
    return value.split(";", 1)[-1].strip().strip("<>")


class Reports:
    def __init__(self, store: Store, return_paths: ReturnPaths, classifier: Classifier) -> None:
        self._store = store
        self._return_paths = return_paths
        self._classifier = classifier

    async def _ours(self, summary: Summary, address: str) -> Delivery | None:
        claim = self._return_paths.parse(address)
        if claim is None or summary.guesses_left <= 0:
            return None
        summary.guesses_left -= 1
        sent = await sent_recipient(self._store, claim.recipient_id)
        if sent is None or not self._return_paths.genuine(claim, sent.message.key):
            return None
        return sent

    async def summarise(self, mime: bytes) -> Summary | None:
        return await asyncio.to_thread(_summarise, mime)

    async def read(self, summary: Summary, envelope_recipient: str) -> list[Statement] | None:
        """The report's effect (statements to commit), or None when it is not about mail of
        ours sent through `envelope_recipient`."""
        if summary.kind == "delivery-status":
            return await self._bounce(summary, envelope_recipient)
        return await self._complaint(summary, envelope_recipient)

    async def _bounce(self, summary: Summary, envelope_recipient: str) -> list[Statement] | None:
        sent = await self._ours(summary, envelope_recipient)
        if sent is None:
            return None
        failure = next(
            (f for f in summary.failures if f.recipient in ("", sent.address.lower())), None
        )
        if failure is None:
            return None  # a delay warning, or a report about someone else
        status = _STATUS.search(failure.status)
        enhanced = status.group(0) if status else "5.0.0"
        diagnostic = failure.diagnostic
        code_match = _REPLY_CODE.search(diagnostic)
        code = int(code_match.group(1)) if code_match else 550
        verdict = self._classifier.classify(code, enhanced, diagnostic[:1000])
        permanent = enhanced.startswith("5")
        delivery_status = DeliveryStatus(
            code=code,
            message=diagnostic,
            description=verdict.name,
            enhanced_code=enhanced,
            bounce_code=enhanced,
            attempt_no=sent.attempts,
        )
        event = delivery_event(
            sent,
            "failed",
            delivery_status,
            mail_from=None,
            delayed_bounce=True,
            severity="permanent" if permanent else "temporary",
            reason="bounce" if permanent else "generic",
        )
        statements = event_statements(sent.message.domain, [event])
        if permanent and verdict.suppress:
            statements.append(
                bounce_statement(sent.message.domain, sent.address, str(code), diagnostic,
                                 time.time())
            )
        log.info("delayed bounce for <%s> (%s %s): %s", sent.address, code, enhanced, diagnostic)
        return statements

    async def _complaint(self, summary: Summary, envelope_recipient: str
                         ) -> list[Statement] | None:
        for candidate in dict.fromkeys((envelope_recipient, *summary.return_paths)):
            sent = await self._ours(summary, candidate)
            if sent is not None:
                event = delivery_event(sent, "complained", None, mail_from=None)
                log.info("complaint about <%s> for %s", sent.address, sent.message.domain)
                return [
                    *event_statements(sent.message.domain, [event]),
                    complaint_statement(sent.message.domain, sent.address, time.time()),
                ]
        if summary.message_id and summary.original_recipient:
            # without one of our return paths anyone could name a Message-Id: the complaint
            # is recorded as an event, but nobody is put on the complaints list for it
            rid = await recipient_by_message_id(
                self._store, summary.message_id, summary.original_recipient
            )
            sent = await sent_recipient(self._store, rid) if rid is not None else None
            if sent is not None:
                log.info("unverified complaint about <%s>: recorded, not suppressed",
                         sent.address)
                event = delivery_event(sent, "complained", None, mail_from=None)
                return event_statements(sent.message.domain, [event])
        return None


def _summarise(mime: bytes) -> Summary | None:
    try:
        message = parse_bounded(mime)
    except TooManyParts:
        return None  # no report we could act on
    kind = report_type(message)
    if kind == "delivery-status":
        failures = []
        for part in message.walk():
            if part.get_content_type() != "message/delivery-status":
                continue
            blocks = _field_blocks(part)
            for block in blocks[1:] or blocks:
                if str(block.get("Action", "")).strip().lower() != "failed":
                    continue
                final = block.get("Final-Recipient") or block.get("Original-Recipient")
                diagnostic = str(block.get("Diagnostic-Code", "")).split(";", 1)[-1]
                failures.append(
                    Failure(_address(final).lower(), str(block.get("Status", "")),
                            " ".join(diagnostic.split()))
                )
        return Summary(kind, failures=tuple(failures))
    if kind == "feedback-report":
        fields: EmailMessage | None = None
        for part in message.walk():
            if part.get_content_type() == "message/feedback-report":
                blocks = _field_blocks(part)
                fields = blocks[0] if blocks else None
        original = _original(message)
        paths = []
        if fields is not None:
            paths.append(_address(fields.get("Original-Mail-From")))
        if original is not None:
            paths.append(_address(original.get("Return-Path")))
        rcpt = _address(fields.get("Original-Rcpt-To")) if fields is not None else ""
        if not rcpt and original is not None:
            rcpt = str(original.get("To", "")).strip().strip("<>")
        message_id = str(original.get("Message-Id", "")) if original is not None else ""
        return Summary(kind, return_paths=tuple(p for p in paths if p), message_id=message_id,
                       original_recipient=rcpt)
    return None
