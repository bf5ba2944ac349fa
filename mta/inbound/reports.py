"""Reports that come back about mail we sent: delivery status notifications (RFC 3464, a
"delayed bounce") and feedback-loop complaints (ARF, RFC 5965).

A report is tied to its recipient by the return path we sent with (`bounce+<id>.<tag>@...`,
checked with its HMAC tag), or, for a complaint without it, by the original Message-Id and
recipient. It then becomes an event, and a hard bounce or a complaint lands on its list.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
import time
from dataclasses import dataclass
from email.message import Message as EmailMessage

from mta.events import event_statement
from mta.outbound.policy import Classifier
from mta.outbound.queue import Delivery, delivery_event, recipient_by_message_id, sent_recipient
from mta.outbound.returnpath import ReturnPaths
from mta.store import Statement, Store
from mta.suppressions import bounce_statement, complaint_statement

log = logging.getLogger("mta.inbound")

_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_REPLY_CODE = re.compile(r"\b([245]\d\d)\b")


@dataclass(frozen=True)
class Report:
    kind: str  # "bounce" or "complaint"
    recipient_id: int
    statements: list[Statement]


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

    async def _ours(self, address: str) -> Delivery | None:
        claim = self._return_paths.parse(address)
        if claim is None:
            return None
        sent = await sent_recipient(self._store, claim.recipient_id)
        if sent is None or not self._return_paths.genuine(claim, sent.message.key):
            return None
        return sent

    async def read(self, message: EmailMessage, envelope_recipient: str) -> Report | None:
        """The report's effect, or None when it is no report about mail of ours."""
        kind = report_type(message)
        if kind == "delivery-status":
            return await self._bounce(message, envelope_recipient)
        if kind == "feedback-report":
            return await self._complaint(message, envelope_recipient)
        return None

    async def _bounce(self, message: EmailMessage, envelope_recipient: str) -> Report | None:
        sent = await self._ours(envelope_recipient)
        if sent is None:
            return None
        failure = None
        for part in message.walk():
            if part.get_content_type() != "message/delivery-status":
                continue
            for block in _field_blocks(part)[1:] or _field_blocks(part):
                action = str(block.get("Action", "")).strip().lower()
                final = block.get("Final-Recipient") or block.get("Original-Recipient")
                recipient = _address(final).lower()
                if action == "failed" and recipient in ("", sent.address.lower()):
                    failure = block
                    break
        if failure is None:
            return None  # a delay warning, or a report about someone else
        status = _STATUS.search(str(failure.get("Status", "")))
        enhanced = status.group(0) if status else "5.0.0"
        diagnostic = " ".join(str(failure.get("Diagnostic-Code", "")).split(";", 1)[-1].split())
        code_match = _REPLY_CODE.search(diagnostic)
        code = int(code_match.group(1)) if code_match else 550
        verdict = self._classifier.classify(code, enhanced, diagnostic[:1000])
        permanent = enhanced.startswith("5")
        delivery_status = {
            "code": code,
            "message": diagnostic,
            "description": verdict.name,
            "enhanced-code": enhanced,
            "bounce-code": enhanced,
            "attempt-no": sent.attempts,
        }
        event = delivery_event(
            sent,
            "failed",
            delivery_status,
            mail_from=None,
            flags={"is-delayed-bounce": True},
            severity="permanent" if permanent else "temporary",
            reason="bounce" if permanent else "generic",
        )
        statements = [event_statement(sent.message.domain, [event])]
        if permanent and verdict.suppress:
            statements.append(
                bounce_statement(
                    sent.message.domain, sent.address, str(code), diagnostic, time.time()
                )
            )
        log.info("delayed bounce for <%s> (%s %s): %s", sent.address, code, enhanced, diagnostic)
        return Report("bounce", sent.id, statements)

    async def _complaint(self, message: EmailMessage, envelope_recipient: str) -> Report | None:
        fields: EmailMessage | None = None
        for part in message.walk():
            if part.get_content_type() == "message/feedback-report":
                blocks = _field_blocks(part)
                fields = blocks[0] if blocks else None
        original = _original(message)
        candidates = [envelope_recipient]
        if fields is not None:
            candidates.append(_address(fields.get("Original-Mail-From")))
        if original is not None:
            candidates.append(_address(original.get("Return-Path")))
        sent = None
        for candidate in candidates:
            if candidate and (sent := await self._ours(candidate)) is not None:
                break
        if sent is None and original is not None:
            rcpt = _address(fields.get("Original-Rcpt-To")) if fields is not None else ""
            rcpt = rcpt or str(original.get("To", "")).strip().strip("<>")
            message_id = str(original.get("Message-Id", ""))
            if rcpt and message_id:
                rid = await recipient_by_message_id(self._store, message_id, rcpt)
                sent = await sent_recipient(self._store, rid) if rid is not None else None
        if sent is None:
            return None
        event = delivery_event(sent, "complained", {}, mail_from=None)
        log.info("complaint about <%s> for %s", sent.address, sent.message.domain)
        return Report(
            "complaint",
            sent.id,
            [
                event_statement(sent.message.domain, [event]),
                complaint_statement(sent.message.domain, sent.address, time.time()),
            ],
        )


def parse(mime: bytes) -> EmailMessage:
    return email.message_from_bytes(mime, policy=email.policy.compat32)
