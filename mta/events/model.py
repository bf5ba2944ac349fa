"""The typed event: one object for everything that happens to a message.

Producers (accept, the queue, inbound, bounce and complaint reports) build an `Event`; the store
writes `Event.to_json()` beside the searchable columns `Event.columns()`; the Events API returns
that JSON as stored, webhooks post `Event.payload()` and stats count the typed fields. So every
reader sees one shape, and its Mailgun field names live in one place: `payload()` and the
`render()` of each part. `None` means "not part of this kind of event": the key is left out,
as Mailgun leaves it out (a `rejected` event has no `recipient`, a `complained` one no
`delivery-status`).

`from_payload` reads a payload back (stored rows); `Event.from_payload(e.payload()) == e`.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, MISSING, dataclass, field, fields
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import orjson

from mta import tokens

EventKind = Literal[
    "accepted",
    "rejected",
    "delivered",
    "failed",
    "opened",
    "clicked",
    "unsubscribed",
    "complained",
    "stored",
    # a bulk upload of mailing-list members (members.json, members.csv, `mta list import`)
    "list_member_uploaded",
    "list_member_upload_error",
    "list_uploaded",
]
Severity = Literal["temporary", "permanent"]

SEP = "\x1f"  # separates list items in searchable columns, so a term can match a whole item

# Mailgun's log-level of each kind; `failed` depends on its severity (see Event.log_level)
LOG_LEVELS: dict[str, str] = {
    "accepted": "info",
    "delivered": "info",
    "opened": "info",
    "clicked": "info",
    "stored": "info",
    "rejected": "warn",
    "complained": "warn",
    "unsubscribed": "info",
    "list_member_uploaded": "info",
    "list_member_upload_error": "warn",
    "list_uploaded": "info",
}


def new_event_id() -> str:
    return tokens.token_urlsafe(16)  # 22 characters, like Mailgun's


def new_event_ids(count: int) -> list[str]:
    """`count` event ids (22 characters, 132 random bits each) from one read of the random
    pool: a send to thousands of recipients makes an event for each."""
    # 33 bytes are 44 base64 characters without padding: two ids
    text = base64.urlsafe_b64encode(tokens.token_bytes(33 * ((count + 1) // 2))).decode("ascii")
    return [text[start : start + 22] for start in range(0, 22 * count, 22)]


def joined(items: Iterable[str]) -> str:
    """A list column: lower-cased items between separators ('' when empty)."""
    body = SEP.join(filter(None, items)).lower()  # lower() maps character by character
    return SEP + body + SEP if body else ""


_T = TypeVar("_T")


class _once(Generic[_T]):  # lower case: used as a decorator, like property
    """A property computed on first read and kept in the instance, where later reads find it
    without a call. functools.cached_property does the same but takes a lock on every first
    read (Python 3.11), which cost more than it saved for the parts that are read once."""

    def __init__(self, method: Callable[[Any], _T]) -> None:
        self._method = method
        self._name = method.__name__
        self.__doc__ = method.__doc__

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._method(instance)
        return value


_Class = TypeVar("_Class", bound=type)


def _fills_dict_at_once(cls: _Class) -> _Class:
    """Give a frozen dataclass an `__init__` with the same signature that writes into the
    instance's `__dict__` only the values that differ from their default (the others are read
    from the class). The dataclass one sets every field with an object.__setattr__ call, which
    for an Event (two dozen fields, most of them None) and its parts, built for every recipient
    of a send, took longer than rendering the payload."""
    positional, keyword, body = [], [], []
    scope: dict[str, Any] = {"_MISSING": MISSING}
    for f in fields(cls):
        name = f.name
        if f.default is not MISSING:
            scope[f"_default_{name}"] = f.default
            param = f"{name}=_default_{name}"
            body.append(f"    if {name} is not _default_{name}:\n        d[{name!r}] = {name}\n")
        elif f.default_factory is not MISSING:
            scope[f"_factory_{name}"] = f.default_factory
            param = f"{name}=_MISSING"
            body.append(
                f"    d[{name!r}] = _factory_{name}() if {name} is _MISSING else {name}\n"
            )
        else:
            param = name
            body.append(f"    d[{name!r}] = {name}\n")
        (keyword if f.kw_only else positional).append(param)
    params = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({params}) -> None:\n    d = self.__dict__\n" + "".join(body)
    exec(source, scope)  # as dataclasses itself makes __init__
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls


# -- the parts ------------------------------------------------------------------------------------


@_fills_dict_at_once
@dataclass(frozen=True)
class Attachment:
    """An attachment as events describe it (the file itself is in the message)."""

    filename: str
    content_type: str
    size: int

    def render(self) -> dict[str, Any]:
        return {"filename": self.filename, "content-type": self.content_type, "size": self.size}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Attachment:
        return cls(data["filename"], data["content-type"], data["size"])


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class MessageHeaders:
    """The headers events repeat (decoded). None leaves one out: tracking events carry only the
    Message-Id."""

    to: str | None = None
    message_id: str = ""  # without angle brackets
    from_: str | None = None
    subject: str | None = None

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.to is not None:
            out["to"] = self.to
        out["message-id"] = self.message_id
        if self.from_ is not None:
            out["from"] = self.from_
        if self.subject is not None:
            out["subject"] = self.subject
        return out

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> MessageHeaders:
        _only(data, ("to", "message-id", "from", "subject"), "message.headers")
        return cls(
            to=data.get("to"),
            message_id=data.get("message-id", ""),
            from_=data.get("from"),
            subject=data.get("subject"),
        )


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class MessageSummary:
    """`message`: what an event says about the message itself. `recipients` (every envelope
    recipient of this copy) is on `accepted` and `stored` events only.

    One summary is shared by the events of every recipient of a copy (a thousand for a list
    send), so its rendering and its list columns are made once (and must not be changed)."""

    headers: MessageHeaders
    attachments: tuple[Attachment, ...] = ()
    recipients: tuple[str, ...] | None = None
    size: int = 0

    @_once
    def rendered(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "headers": self.headers.render(),
            "attachments": [a.render() for a in self.attachments] if self.attachments else [],
        }
        if self.recipients is not None:
            out["recipients"] = list(self.recipients)
        out["size"] = self.size
        return out

    @_once
    def list_columns(self) -> tuple[str, str]:
        """The `recipients` and `attachments` columns."""
        attachments = joined([a.filename for a in self.attachments]) if self.attachments else ""
        return joined(self.recipients) if self.recipients else "", attachments

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> MessageSummary:
        _only(data, ("headers", "attachments", "recipients", "size"), "message")
        recipients = data.get("recipients")
        return cls(
            headers=MessageHeaders.from_payload(data.get("headers") or {}),
            attachments=tuple(Attachment.from_payload(a) for a in data.get("attachments") or ()),
            recipients=None if recipients is None else tuple(recipients),
            size=data.get("size", 0),
        )


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class Envelope:
    """`envelope`: the SMTP envelope (or, for a route action, how it was carried out).
    `mail_from` may be "" (a null return path), so only None leaves it out."""

    sender: str
    transport: str  # "http" / "smtp"; a route action's kind ("post", "email", "notify")
    targets: str
    mail_from: str | None = None
    sending_ip: str | None = None
    sending_host: str | None = None

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sender": self.sender,
            "transport": self.transport,
            "targets": self.targets,
        }
        if self.mail_from is not None:
            out["mail-from"] = self.mail_from
        if self.sending_ip is not None:
            out["sending-ip"] = self.sending_ip
        if self.sending_host is not None:
            out["sending-host"] = self.sending_host
        return out

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Envelope:
        return _read(cls, data, "envelope")


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class Flags:
    """`flags`: each kind reports its own set; None leaves a flag out. Shared by the events of
    a submission, so rendered once (and not to be changed)."""

    is_authenticated: bool | None = None
    is_test_mode: bool | None = None
    is_routed: bool | None = None
    is_system_test: bool | None = None
    is_big: bool | None = None
    is_delayed_bounce: bool | None = None

    @_once
    def rendered(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.is_authenticated is not None:
            out["is-authenticated"] = self.is_authenticated
        if self.is_test_mode is not None:
            out["is-test-mode"] = self.is_test_mode
        if self.is_routed is not None:
            out["is-routed"] = self.is_routed
        if self.is_system_test is not None:
            out["is-system-test"] = self.is_system_test
        if self.is_big is not None:
            out["is-big"] = self.is_big
        if self.is_delayed_bounce is not None:
            out["is-delayed-bounce"] = self.is_delayed_bounce
        return out

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Flags:
        return _read(cls, data, "flags")


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class DeliveryStatus:
    """`delivery-status`: the remote server's answer (or our pseudo-code: 498 no route, 499 no
    connection, 605/606/607 suppressed) and how the attempt went."""

    code: int
    message: str = ""
    description: str = ""
    enhanced_code: str | None = None
    bounce_code: str | None = None  # delayed bounces
    attempt_no: int | None = None
    session_seconds: float | None = None
    tls: bool | None = None
    certificate_verified: bool | None = None
    mx_host: str | None = None
    utf8: bool | None = None
    retry_seconds: int | None = None  # temporary failures: until the next attempt
    bounce_type: str | None = None  # failed deliveries: "hard" (permanent) or "soft"

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "description": self.description,
        }
        if self.enhanced_code is not None:
            out["enhanced-code"] = self.enhanced_code
        if self.bounce_code is not None:
            out["bounce-code"] = self.bounce_code
        if self.attempt_no is not None:
            out["attempt-no"] = self.attempt_no
        if self.session_seconds is not None:
            out["session-seconds"] = self.session_seconds
        if self.tls is not None:
            out["tls"] = self.tls
        if self.certificate_verified is not None:
            out["certificate-verified"] = self.certificate_verified
        if self.mx_host is not None:
            out["mx-host"] = self.mx_host
        if self.utf8 is not None:
            out["utf8"] = self.utf8
        if self.retry_seconds is not None:
            out["retry-seconds"] = self.retry_seconds
        if self.bounce_type is not None:
            out["bounce-type"] = self.bounce_type
        return out

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> DeliveryStatus:
        """Also how the scheduler's status dicts (Mailgun's names) become typed."""
        return _read(cls, data, "delivery-status")


@_fills_dict_at_once
@dataclass(frozen=True)
class Campaign:
    """A legacy campaign (`o:campaign`); its id doubles as its name."""

    id: str
    name: str

    def render(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Campaign:
        return cls(data["id"], data["name"])


@_fills_dict_at_once
@dataclass(frozen=True)
class Storage:
    """Where a stored message can be fetched (the stored-messages API)."""

    url: str
    key: str

    def render(self) -> dict[str, Any]:
        return {"url": self.url, "key": self.key}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Storage:
        return _read(cls, data, "storage")


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class MatchedRoute:
    """A route that acted on an inbound recipient (`routes` items)."""

    id: str
    recipient: str
    expression: str | None = None  # left out when a route action's job fails later

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.expression is not None:
            out["expression"] = self.expression
        out["id"] = self.id
        out["match"] = {"recipient": self.recipient}
        return out

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> MatchedRoute:
        _only(data, ("expression", "id", "match"), "routes")
        return cls(
            id=data["id"],
            recipient=data["match"]["recipient"],
            expression=data.get("expression"),
        )


@_fills_dict_at_once
@dataclass(frozen=True)
class Reject:
    """Why a submission was refused (`rejected` events)."""

    reason: str  # "invalid" (the client's fault) or "error" (ours)
    description: str

    def render(self) -> dict[str, Any]:
        return {"reason": self.reason, "description": self.description}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Reject:
        return _read(cls, data, "reject")


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class MailingList:
    """The mailing list a message was sent to (`mailing-list`; the `list` filter)."""

    address: str
    list_id: str | None = None
    sid: str | None = None

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address}
        if self.list_id is not None:
            out["list-id"] = self.list_id
        if self.sid is not None:
            out["sid"] = self.sid
        return out

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> MailingList:
        return _read(cls, data, "mailing-list")


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class UploadedMember:
    """A member as a bulk upload wrote it (`member`). Its vars are left out: mailgun-go reads
    this object's `vars` as a list of strings, and an object there fails the whole page."""

    address: str
    name: str = ""
    subscribed: bool = True

    def render(self) -> dict[str, Any]:
        return {"address": self.address, "name": self.name, "subscribed": self.subscribed}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> UploadedMember:
        return _read(cls, data, "member")


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class ListUpload:
    """What the events of a bulk upload of list members say (mailgun-api.md §4.4), as
    top-level keys: `task-id` and `format` on all three kinds; `member` on
    list_member_uploaded; `member-description` (the entry as sent) and `error.message` on
    list_member_upload_error; `is-upsert`, `upserted-count`, `failed-count` and `subscribed`
    (the upload's default) on list_uploaded."""

    task_id: str
    format: str | None = None  # "json" / "csv"
    member: UploadedMember | None = None
    member_description: str | None = None
    error: str | None = None
    is_upsert: bool | None = None
    upserted_count: int | None = None
    failed_count: int | None = None
    subscribed: bool | None = None

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task-id": self.task_id}
        if self.format is not None:
            out["format"] = self.format
        if self.member is not None:
            out["member"] = self.member.render()
        if self.member_description is not None:
            out["member-description"] = self.member_description
        if self.error is not None:
            out["error"] = {"message": self.error}
        if self.is_upsert is not None:
            out["is-upsert"] = self.is_upsert
        if self.upserted_count is not None:
            out["upserted-count"] = self.upserted_count
        if self.failed_count is not None:
            out["failed-count"] = self.failed_count
        if self.subscribed is not None:
            out["subscribed"] = self.subscribed
        return out

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> ListUpload:
        values = {key.replace("-", "_"): value for key, value in data.items()}
        if "member" in values:
            values["member"] = UploadedMember.from_payload(values["member"])
        if "error" in values:
            _only(values["error"], ("message",), "error")
            values["error"] = values["error"]["message"]
        return _read(cls, values, "upload")


UPLOAD_KEYS = frozenset(
    {"task-id", "format", "member", "member-description", "error", "is-upsert",
     "upserted-count", "failed-count", "subscribed"}
)


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class Geolocation:
    """Where a tracking hit came from (`unknown` when it cannot be told)."""

    country: str = "unknown"  # ISO 3166 alpha-2
    region: str = "unknown"
    city: str = "unknown"

    def render(self) -> dict[str, Any]:
        return {"country": self.country, "region": self.region, "city": self.city}

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> Geolocation:
        return _read(cls, data, "geolocation")


@_fills_dict_at_once
@dataclass(frozen=True, kw_only=True)
class ClientInfo:
    """What made a tracking hit (`client-info`). `bot` names a machine that fetched the pixel
    or link on the recipient's behalf (Apple Mail Privacy Protection, Gmail's image proxy, a
    link scanner): "" for a person, so stats can leave machine opens out."""

    client_type: str = "unknown"  # browser, mobile browser, email client, library, robot, ...
    client_os: str = "unknown"
    device_type: str = "unknown"  # desktop, mobile, tablet, other, unknown
    client_name: str = "unknown"
    user_agent: str = ""
    bot: str = ""

    def render(self) -> dict[str, Any]:
        return {
            "client-type": self.client_type,
            "client-os": self.client_os,
            "device-type": self.device_type,
            "client-name": self.client_name,
            "user-agent": self.user_agent,
            "bot": self.bot,
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> ClientInfo:
        return _read(cls, data, "client-info")


# -- the event ------------------------------------------------------------------------------------


class SearchColumns(NamedTuple):
    """The events table's searchable columns (the Events API filters), in INSERT order."""

    recipient: str
    message_id: str
    severity: str
    tags: str
    from_addr: str
    to_addr: str
    subject: str
    size: int
    recipients: str
    attachments: str
    mailing_list: str


@_fills_dict_at_once
@dataclass(frozen=True)
class Event:
    """One thing that happened to a message (or a refused submission). `id` and `timestamp`
    are set when it is built. `recipient-domain` and `log-level` are derived, never stored
    apart from what they derive from.

    Frozen, but `user_variables` is the caller's mapping: never change it after building."""

    kind: EventKind
    _: KW_ONLY
    id: str = field(default_factory=new_event_id)
    timestamp: float = field(default_factory=time.time)
    method: str | None = None  # "http" / "smtp": how the message came in
    recipient: str | None = None
    reject: Reject | None = None
    tags: tuple[str, ...] | None = None
    campaigns: tuple[Campaign, ...] | None = None
    user_variables: Mapping[str, Any] | None = None
    flags: Flags | None = None
    envelope: Envelope | None = None
    message: MessageSummary | None = None
    routes: tuple[MatchedRoute, ...] | None = None
    storage: Storage | None = None
    mailing_list: MailingList | None = None
    upload: ListUpload | None = None  # list_member_uploaded, ..._upload_error, list_uploaded
    delivery_status: DeliveryStatus | None = None
    severity: Severity | None = None  # failed
    reason: str | None = None  # failed: bounce, suppress-*, old, generic, greylisted, ...
    delivery_time: float | None = None  # o:deliverytime, epoch seconds
    originating_ip: str | None = None
    primary_dkim: str | None = None  # the domain the delivered message was signed for
    recipient_provider: str | None = None  # "Gmail", "Yahoo", ... "Other"
    ip: str | None = None  # tracking hits: the address the request came from
    geolocation: Geolocation | None = None
    client_info: ClientInfo | None = None
    url: str | None = None  # clicked: the original link

    @property
    def recipient_domain(self) -> str | None:
        if self.recipient is None:
            return None
        return self.recipient.rpartition("@")[2].lower()

    @property
    def log_level(self) -> str:
        if self.kind == "failed":
            return "error" if self.severity == "permanent" else "warn"
        return LOG_LEVELS.get(self.kind, "info")

    def payload(self) -> dict[str, Any]:
        """The Mailgun event object (Events API item, webhook `event-data`). Read only: the
        renderings of shared parts (message, flags) are shared by the events that share them.
        (Each field is read once: this runs for every recipient of every send.)"""
        out: dict[str, Any] = {
            "id": self.id,
            "event": self.kind,
            "timestamp": self.timestamp,
            "log-level": self.log_level,
        }
        if (method := self.method) is not None:
            out["method"] = method
        if (recipient := self.recipient) is not None:
            out["recipient"] = recipient
            out["recipient-domain"] = recipient.rpartition("@")[2].lower()
        if (reject := self.reject) is not None:
            out["reject"] = reject.render()
        if (tags := self.tags) is not None:
            out["tags"] = list(tags)
        if (campaigns := self.campaigns) is not None:
            out["campaigns"] = [c.render() for c in campaigns] if campaigns else []
        if (variables := self.user_variables) is not None:
            out["user-variables"] = variables
        if (flags := self.flags) is not None:
            out["flags"] = flags.rendered
        if (envelope := self.envelope) is not None:
            out["envelope"] = envelope.render()
        if (message := self.message) is not None:
            out["message"] = message.rendered
        if (routes := self.routes) is not None:
            out["routes"] = [r.render() for r in routes]
        if (storage := self.storage) is not None:
            out["storage"] = storage.render()
        if (mailing_list := self.mailing_list) is not None:
            out["mailing-list"] = mailing_list.render()
        if (upload := self.upload) is not None:
            out.update(upload.render())
        if (status := self.delivery_status) is not None:
            out["delivery-status"] = status.render()
        if (severity := self.severity) is not None:
            out["severity"] = severity
        if (reason := self.reason) is not None:
            out["reason"] = reason
        if (delivery_time := self.delivery_time) is not None:
            out["delivery-time"] = delivery_time
        if (originating_ip := self.originating_ip) is not None:
            out["originating-ip"] = originating_ip
        if (primary_dkim := self.primary_dkim) is not None:
            out["primary-dkim"] = primary_dkim
        if (provider := self.recipient_provider) is not None:
            out["recipient-provider"] = provider
        if (ip := self.ip) is not None:
            out["ip"] = ip
        if (geolocation := self.geolocation) is not None:
            out["geolocation"] = geolocation.render()
        if (client_info := self.client_info) is not None:
            out["client-info"] = client_info.render()
        if (url := self.url) is not None:
            out["url"] = url
        return out

    def to_json(self) -> bytes:
        """The payload as stored (and as the Events API returns it)."""
        return orjson.dumps(self.payload())

    def columns(self) -> SearchColumns:
        """What the Events API filters on, from the typed fields."""
        message = self.message
        if message is None:
            headers, size, (recipients, attachments) = _NO_HEADERS, 0, ("", "")
        else:
            headers, size, (recipients, attachments) = (
                message.headers, message.size, message.list_columns
            )
        return _columns(
            (
                (self.recipient or "").lower(),
                headers.message_id,
                self.severity or "",
                _tags_column(self.tags) if self.tags else "",
                headers.from_ or "",
                headers.to or "",
                headers.subject or "",
                size,
                recipients,
                attachments,
                self.mailing_list.address.lower() if self.mailing_list else "",
            )
        )

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Event:
        """An event read back from its Mailgun payload. A key the model does not know is an
        error: nothing a producer wrote may be dropped silently."""
        values: dict[str, Any] = {}
        upload: dict[str, Any] = {}
        for key, value in payload.items():
            if key in _DERIVED:
                continue
            if key in UPLOAD_KEYS:
                upload[key] = value
                continue
            reader = _READERS.get(key)
            if reader is None:
                raise ValueError(f"an event has no field {key!r}")
            name, read = reader
            values[name] = read(value)
        if upload:
            values["upload"] = ListUpload.from_payload(upload)
        return cls(**values)


_NO_HEADERS = MessageHeaders()
# the tags column of a send's tags, made once for all its recipients' events
_tags_column = functools.lru_cache(maxsize=256)(joined)
_columns = SearchColumns._make  # positionally, without the keyword parsing of SearchColumns()
_DERIVED = frozenset({"log-level", "recipient-domain"})

_Part = TypeVar("_Part")


def _only(data: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"{where} has no field {sorted(unknown)[0]!r}")


def _read(cls: Callable[..., _Part], data: Mapping[str, Any], where: str) -> _Part:
    """A part whose fields are its keys with '-' as '_'."""
    try:
        return cls(**{key.replace("-", "_"): value for key, value in data.items()})
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _tuple_of(read: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda items: tuple(read(i) for i in items)


def _same(value: Any) -> Any:
    return value


_READERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "event": ("kind", _same),
    "id": ("id", _same),
    "timestamp": ("timestamp", float),
    "method": ("method", _same),
    "recipient": ("recipient", _same),
    "reject": ("reject", Reject.from_payload),
    "severity": ("severity", _same),
    "reason": ("reason", _same),
    "tags": ("tags", tuple),
    "campaigns": ("campaigns", _tuple_of(Campaign.from_payload)),
    "user-variables": ("user_variables", _same),
    "flags": ("flags", Flags.from_payload),
    "envelope": ("envelope", Envelope.from_payload),
    "message": ("message", MessageSummary.from_payload),
    "routes": ("routes", _tuple_of(MatchedRoute.from_payload)),
    "storage": ("storage", Storage.from_payload),
    "mailing-list": ("mailing_list", MailingList.from_payload),
    "delivery-status": ("delivery_status", DeliveryStatus.from_payload),
    "delivery-time": ("delivery_time", _same),
    "originating-ip": ("originating_ip", _same),
    "recipient-provider": ("recipient_provider", _same),
    "primary-dkim": ("primary_dkim", _same),
    "ip": ("ip", _same),
    "geolocation": ("geolocation", Geolocation.from_payload),
    "client-info": ("client_info", ClientInfo.from_payload),
    "url": ("url", _same),
}
