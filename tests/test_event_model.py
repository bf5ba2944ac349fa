"""The typed event model: each kind renders Mailgun's event object (mailgun-api.md §4.4-4.7),
the searchable columns come from the typed fields, and a payload reads back to its event."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from mta.events import (
    SEP,
    Attachment,
    Campaign,
    DeliveryStatus,
    Envelope,
    Event,
    Flags,
    MailingList,
    MatchedRoute,
    MessageHeaders,
    MessageSummary,
    Reject,
    SearchColumns,
    Storage,
    event_statements,
)
from mta.queue import Delivery, Message, delivery_event, dropped_event

HEADERS = MessageHeaders(
    to="Alice <alice@example.net>, bob@example.org",
    message_id="20240101.abc@mg.example.test",
    from_="Sender <sender@mg.example.test>",
    subject="Quarterly report",
)
MESSAGE = MessageSummary(
    headers=HEADERS,
    attachments=(Attachment("report.pdf", "application/pdf", 1234),),
    size=5678,
)
COMMON = {"id", "event", "timestamp", "log-level"}


def accepted() -> Event:
    return Event(
        "accepted",
        id="x" * 22,
        timestamp=1700000000.5,
        method="http",
        recipient="Alice@Example.NET",
        tags=("newsletter", "Weekly"),
        campaigns=(Campaign("c1", "c1"),),
        user_variables={"order-id": "12345"},
        flags=Flags(is_authenticated=True, is_test_mode=False, is_routed=False,
                    is_system_test=False, is_big=False),
        envelope=Envelope(sender="sender@mg.example.test", transport="http",
                          targets="Alice@Example.NET"),
        message=dataclasses.replace(
            MESSAGE, recipients=("Alice@Example.NET", "bob@example.org")
        ),
        delivery_time=1700000600.0,
        originating_ip="192.0.2.1",
    )


def sent(status: DeliveryStatus | None, kind: str = "delivered", **fields) -> Event:
    return Event(
        kind,  # type: ignore[arg-type]
        method="http",
        recipient="alice@example.net",
        tags=("newsletter",),
        campaigns=(),
        user_variables={},
        flags=Flags(is_authenticated=True, is_test_mode=False, is_routed=False,
                    is_system_test=False, is_delayed_bounce=False),
        envelope=Envelope(sender="sender@mg.example.test", transport="smtp",
                          targets="alice@example.net", mail_from="bounce+1.x@mg.example.test",
                          sending_ip="198.51.100.7"),
        message=MESSAGE,
        delivery_status=status,
        **fields,
    )


OK_STATUS = DeliveryStatus(
    code=250, message="OK", description="", enhanced_code="2.0.0", attempt_no=1,
    session_seconds=0.12, tls=True, certificate_verified=True, mx_host="mx.example.net",
    utf8=False,
)


# -- one payload shape per kind -----------------------------------------------------------------


def test_accepted_payload_has_mailguns_fields():
    payload = accepted().payload()
    assert set(payload) == COMMON | {
        "method", "recipient", "recipient-domain", "tags", "campaigns", "user-variables",
        "flags", "envelope", "message", "delivery-time", "originating-ip",
    }
    assert payload["event"] == "accepted"
    assert payload["log-level"] == "info"
    assert payload["recipient"] == "Alice@Example.NET"
    assert payload["recipient-domain"] == "example.net"  # derived, lower case
    assert payload["tags"] == ["newsletter", "Weekly"]
    assert payload["campaigns"] == [{"id": "c1", "name": "c1"}]
    assert payload["flags"] == {
        "is-authenticated": True, "is-test-mode": False, "is-routed": False,
        "is-system-test": False, "is-big": False,
    }
    assert payload["envelope"] == {
        "sender": "sender@mg.example.test", "transport": "http", "targets": "Alice@Example.NET",
    }
    assert payload["message"] == {
        "headers": {
            "to": "Alice <alice@example.net>, bob@example.org",
            "message-id": "20240101.abc@mg.example.test",
            "from": "Sender <sender@mg.example.test>",
            "subject": "Quarterly report",
        },
        "attachments": [{"filename": "report.pdf", "content-type": "application/pdf",
                         "size": 1234}],
        "recipients": ["Alice@Example.NET", "bob@example.org"],
        "size": 5678,
    }


def test_delivered_payload_carries_delivery_status_and_envelope():
    payload = sent(OK_STATUS, recipient_provider="Gmail", primary_dkim="mg.example.test").payload()
    assert payload["event"] == "delivered"
    assert payload["log-level"] == "info"
    assert "severity" not in payload and "reason" not in payload
    assert "recipients" not in payload["message"]  # accepted and stored only
    assert payload["delivery-status"] == {
        "code": 250, "message": "OK", "description": "", "enhanced-code": "2.0.0",
        "attempt-no": 1, "session-seconds": 0.12, "tls": True, "certificate-verified": True,
        "mx-host": "mx.example.net", "utf8": False,
    }
    assert payload["envelope"]["mail-from"] == "bounce+1.x@mg.example.test"
    assert payload["envelope"]["sending-ip"] == "198.51.100.7"
    assert payload["recipient-provider"] == "Gmail"
    assert payload["primary-dkim"] == "mg.example.test"
    assert payload["flags"]["is-delayed-bounce"] is False


def test_failed_permanent_is_an_error_with_its_reason():
    status = DeliveryStatus(code=550, message="5.1.1 no such user", description="bounce",
                            enhanced_code="5.1.1", attempt_no=1)
    payload = sent(status, "failed", severity="permanent", reason="bounce").payload()
    assert payload["event"] == "failed"
    assert payload["log-level"] == "error"
    assert payload["severity"] == "permanent"
    assert payload["reason"] == "bounce"
    assert payload["delivery-status"]["code"] == 550
    assert "retry-seconds" not in payload["delivery-status"]


def test_failed_temporary_is_a_warning_with_retry_seconds():
    status = DeliveryStatus(code=451, message="try later", description="greylisted",
                            enhanced_code="4.7.1", attempt_no=2, retry_seconds=600)
    payload = sent(status, "failed", severity="temporary", reason="greylisted").payload()
    assert payload["log-level"] == "warn"
    assert payload["severity"] == "temporary"
    assert payload["delivery-status"]["retry-seconds"] == 600


def test_complained_is_a_warning_without_delivery_status():
    payload = sent(None, "complained").payload()
    assert payload["event"] == "complained"
    assert payload["log-level"] == "warn"
    assert "delivery-status" not in payload
    assert payload["message"]["headers"]["message-id"] == HEADERS.message_id
    assert "flags" in payload


def test_stored_has_storage_and_recipients_but_no_recipient():
    event = Event(
        "stored",
        storage=Storage("https://mx.example.test/v3/domains/mg/messages/k1", "k1"),
        message=MessageSummary(headers=HEADERS, recipients=("support@mg.example.test",),
                               size=900),
        flags=Flags(is_test_mode=False),
    )
    payload = event.payload()
    assert set(payload) == COMMON | {"storage", "message", "flags"}
    assert payload["log-level"] == "info"
    assert payload["storage"] == {
        "url": "https://mx.example.test/v3/domains/mg/messages/k1", "key": "k1",
    }
    assert payload["message"]["recipients"] == ["support@mg.example.test"]
    assert payload["flags"] == {"is-test-mode": False}


def test_rejected_has_reject_and_no_recipient():
    event = Event(
        "rejected",
        reject=Reject("invalid", "Too many tags"),
        tags=("a",),
        campaigns=(),
        user_variables={},
        flags=Flags(is_authenticated=True, is_test_mode=False),
        envelope=Envelope(sender="s@mg.example.test", transport="http",
                          targets="alice@example.net"),
        message=MessageSummary(headers=HEADERS),
    )
    payload = event.payload()
    assert "recipient" not in payload and "recipient-domain" not in payload
    assert payload["log-level"] == "warn"
    assert payload["reject"] == {"reason": "invalid", "description": "Too many tags"}
    assert payload["message"]["attachments"] == [] and payload["message"]["size"] == 0


def test_routed_accepted_lists_its_routes():
    event = dataclasses.replace(
        accepted(),
        routes=(MatchedRoute(id="r1", recipient="a@mg.example.test", expression="catch_all()"),
                MatchedRoute(id="r2", recipient="a@mg.example.test")),
    )
    assert event.payload()["routes"] == [
        {"expression": "catch_all()", "id": "r1", "match": {"recipient": "a@mg.example.test"}},
        {"id": "r2", "match": {"recipient": "a@mg.example.test"}},
    ]


def test_every_event_gets_its_own_id_and_time():
    first, second = Event("accepted"), Event("accepted")
    assert len(first.id) == 22 and first.id != second.id
    assert isinstance(first.timestamp, float)


# -- searchable columns ---------------------------------------------------------------------------


def test_columns_come_from_the_typed_fields():
    event = dataclasses.replace(accepted(), mailing_list=MailingList(address="News@Lists.Test"))
    assert event.columns() == SearchColumns(
        recipient="alice@example.net",
        message_id="20240101.abc@mg.example.test",
        severity="",
        tags=f"{SEP}newsletter{SEP}weekly{SEP}",
        from_addr="Sender <sender@mg.example.test>",
        to_addr="Alice <alice@example.net>, bob@example.org",
        subject="Quarterly report",
        size=5678,
        recipients=f"{SEP}alice@example.net{SEP}bob@example.org{SEP}",
        attachments=f"{SEP}report.pdf{SEP}",
        mailing_list="news@lists.test",
    )
    failed = sent(OK_STATUS, "failed", severity="temporary", reason="generic")
    assert failed.columns().severity == "temporary"


def test_columns_of_an_event_without_message_or_recipient_are_empty():
    assert Event("rejected", reject=Reject("invalid", "x")).columns() == SearchColumns(
        "", "", "", "", "", "", "", 0, "", "", ""
    )


def test_event_statements_write_columns_and_the_payload_json():
    event = accepted()
    statement = event_statements("mg.example.test", [event])[0]
    (row,) = statement.rows
    assert row[:4] == (event.id, "mg.example.test", event.timestamp, "accepted")
    assert row[4:-1] == tuple(event.columns())
    assert orjson.loads(row[-1]) == event.payload()
    assert row[-1] == event.to_json()


# -- reading payloads back ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        accepted(),
        sent(OK_STATUS, recipient_provider="Other"),
        sent(DeliveryStatus(code=0, description="gone"), "failed", severity="permanent",
             reason="generic"),
        sent(None, "complained"),
        Event("stored", storage=Storage("u", "k"), message=MessageSummary(headers=HEADERS),
              flags=Flags(is_test_mode=False)),
        Event("rejected", reject=Reject("error", "store down"),
              message=MessageSummary(headers=MessageHeaders(message_id="m"))),
    ],
    ids=lambda e: e.kind,
)
def test_a_payload_reads_back_to_its_event(event: Event):
    assert Event.from_payload(event.payload()) == event
    assert Event.from_payload(orjson.loads(event.to_json())) == event


def test_a_payload_field_the_model_does_not_know_is_refused():
    payload = accepted().payload() | {"weather": {"sky": "grey"}}
    with pytest.raises(ValueError, match="weather"):
        Event.from_payload(payload)
    payload = accepted().payload()
    payload["delivery-status"] = {"code": 250, "color": "green"}
    with pytest.raises(ValueError, match="delivery-status"):
        Event.from_payload(payload)


def test_events_sharing_a_message_share_its_rendering():
    """A list send makes an event per recipient with one message summary: rendered once."""
    first = accepted()
    second = dataclasses.replace(first, id="y" * 22, recipient="bob@example.org")
    assert first.payload()["message"] is second.payload()["message"]
    assert first.payload() is not first.payload()
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.recipient = "x@example.net"  # type: ignore[misc]


# -- what the queue builds for a sent recipient ---------------------------------------------------


def _delivery(to_header: str | None = "Bob <bob@example.org>") -> Delivery:
    message = Message(
        key="k1",
        domain="mg.example.test",
        sender="sender@mg.example.test",
        created_at=1.0,
        options={
            "tags": ["t1"],
            "campaigns": ["c1"],
            "user-variables": {"shared": 1},
            "message": {
                "headers": {"to": "everyone", "message-id": "m1@mg.example.test",
                            "from": "sender@mg.example.test", "subject": "Hi"},
                "attachments": [{"filename": "a.txt", "content-type": "text/plain",
                                 "size": 3}],
                "method": "smtp",
                "is-authenticated": False,
            },
        },
        mime=b"x" * 42,
    )
    return Delivery(id=7, message=message, address="Bob@Example.ORG", attempts=1,
                    to_header=to_header, user_variables={"own": 2})


def test_delivery_event_repeats_what_accept_stored():
    d = _delivery()
    status = {"code": 250, "message": "OK", "description": "", "attempt-no": 2}
    event = delivery_event(d, "delivered", status, mail_from="", sending_ip="",
                           provider="Other")
    assert event.delivery_status == DeliveryStatus(code=250, message="OK", attempt_no=2)
    assert event.recipient_domain == "example.org"
    assert event.method == "smtp"
    assert event.tags == ("t1",) and event.campaigns == (Campaign("c1", "c1"),)
    assert event.user_variables == {"own": 2}
    assert event.flags == Flags(is_authenticated=False, is_test_mode=False, is_routed=False,
                                is_system_test=False, is_delayed_bounce=False)
    # a null return path is reported as such; no sending IP is left out
    assert event.envelope == Envelope(sender="sender@mg.example.test", transport="smtp",
                                      targets="Bob@Example.ORG", mail_from="")
    assert event.message == MessageSummary(
        headers=MessageHeaders(to="Bob <bob@example.org>", message_id="m1@mg.example.test",
                               from_="sender@mg.example.test", subject="Hi"),
        attachments=(Attachment("a.txt", "text/plain", 3),),
        size=42,
    )
    assert event.recipient_provider == "Other"


def test_delivery_event_of_a_shared_copy_and_a_complaint():
    d = _delivery(to_header=None)
    d.user_variables = None
    event = delivery_event(d, "complained", None, mail_from=None)
    assert event.delivery_status is None and event.envelope is not None
    assert event.envelope.mail_from is None
    assert event.message is not None and event.message.headers.to == "everyone"
    assert event.user_variables == {"shared": 1}
    assert event.log_level == "warn"


def test_dropped_event_fails_permanently():
    event = dropped_event(_delivery())
    assert (event.kind, event.severity, event.reason) == ("failed", "permanent", "generic")
    assert event.delivery_status == DeliveryStatus(
        code=0, description="Not delivering: the sending domain mg.example.test was removed",
        attempt_no=2,
    )
    assert event.payload()["log-level"] == "error"


def test_delayed_bounce_is_flagged():
    event = delivery_event(_delivery(), "failed", DeliveryStatus(code=550), mail_from=None,
                           delayed_bounce=True, severity="permanent", reason="bounce")
    assert event.payload()["flags"]["is-delayed-bounce"] is True
