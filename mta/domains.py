"""Sending domains: creation with a DKIM key, the DNS records to publish, verification.

A domain can send as soon as it exists (the operator owns it); `state` only reports what the
last DNS check found. Sandbox domains send to their authorised recipients only.
"""

from __future__ import annotations

import base64
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mta.config import Config
from mta.dns import DnsError, Resolver
from mta.store import Statement, Store

DOMAIN_COLUMNS = (
    "name, id, created_at, type, state, spam_action, wildcard, require_tls, skip_verification, "
    "web_prefix, web_scheme, dkim_selector, dkim_private_key, dkim_public_key, dns_checked_at, "
    "dns_results, track_opens, track_opens_top, track_clicks, track_unsubscribes, "
    "unsubscribe_html_footer, unsubscribe_text_footer"
)
# Mailgun's default unsubscribe footers
DEFAULT_HTML_FOOTER = '\n<br>\n<p><a href="%unsubscribe_url%">unsubscribe</a></p>\n'
DEFAULT_TEXT_FOOTER = "\n\nTo unsubscribe click: <%unsubscribe_url%>\n\n"
SPAM_ACTIONS = ("disabled", "block", "tag", "delete", "mark")  # the last two: aliases


class DomainError(Exception):
    """A refused domain operation; the text is shown to the client as is."""


@dataclass(frozen=True)
class TrackingSettings:
    """The domain's tracking defaults (a message's o:tracking* options win over them)."""

    opens: bool = False
    opens_at_top: bool = False
    clicks: bool | str = False  # True, False or "htmlonly"
    unsubscribes: bool = False
    html_footer: str = DEFAULT_HTML_FOOTER
    text_footer: str = DEFAULT_TEXT_FOOTER

    def render(self) -> dict[str, Any]:
        """GET /v3/domains/<d>/tracking's `tracking` object."""
        return {
            "click": {"active": self.clicks},
            "open": {"active": self.opens, "place_at_the_top": self.opens_at_top},
            "unsubscribe": {
                "active": self.unsubscribes,
                "html_footer": self.html_footer,
                "text_footer": self.text_footer,
            },
        }


def _clicks_column(value: bool | str) -> str:
    return "htmlonly" if value == "htmlonly" else ("yes" if value else "no")


@dataclass(frozen=True)
class Domain:
    name: str
    id: str
    created_at: float
    type: str
    state: str
    spam_action: str
    wildcard: bool
    require_tls: bool
    skip_verification: bool
    web_prefix: str
    web_scheme: str
    dkim_selector: str
    dkim_private_key: str
    dkim_public_key: str
    dns_checked_at: float | None
    dns_results: dict[str, Any] = field(default_factory=dict)
    tracking: TrackingSettings = field(default_factory=lambda: TrackingSettings())
    authorized_recipients: frozenset[str] = frozenset()

    @property
    def is_sandbox(self) -> bool:
        return self.type == "sandbox"

    @property
    def is_disabled(self) -> bool:
        return self.state == "disabled"

    @property
    def dkim_host(self) -> str:
        return f"{self.dkim_selector}._domainkey.{self.name}"

    @property
    def dkim_record(self) -> str:
        return f"k=rsa; p={self.dkim_public_key}"


@dataclass(frozen=True)
class DnsRecord:
    record_type: str
    name: str
    value: str
    priority: str | None = None

    @property
    def key(self) -> str:
        return f"{self.record_type} {self.name} {self.value}"


def valid_domain_name(name: str) -> bool:
    if not 1 <= len(name) <= 253 or "." not in name:
        return False
    for label in name.split("."):
        if not 1 <= len(label) <= 63 or label.startswith("-") or label.endswith("-"):
            return False
        if not all(c.isalnum() or c == "-" for c in label) or not label.isascii():
            return False
    return True


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")


def valid_label(text: str) -> bool:
    """One DNS label (letters, digits, inner hyphens and underscores): what a DKIM selector and
    a tracking prefix are put into records and headers as, so nothing else may get in."""
    return _LABEL.fullmatch(text) is not None


def generate_dkim_key(bits: int) -> tuple[str, str]:
    """(private key PEM, public key as the base64 DER that goes into p=)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, base64.b64encode(public_der).decode("ascii")


def _row_to_domain(row: sqlite3.Row, recipients: frozenset[str]) -> Domain:
    return Domain(
        name=row["name"],
        id=row["id"],
        created_at=row["created_at"],
        type=row["type"],
        state=row["state"],
        spam_action=row["spam_action"],
        wildcard=bool(row["wildcard"]),
        require_tls=bool(row["require_tls"]),
        skip_verification=bool(row["skip_verification"]),
        web_prefix=row["web_prefix"],
        web_scheme=row["web_scheme"],
        dkim_selector=row["dkim_selector"],
        dkim_private_key=row["dkim_private_key"],
        dkim_public_key=row["dkim_public_key"],
        dns_checked_at=row["dns_checked_at"],
        dns_results=orjson.loads(row["dns_results"]) if row["dns_results"] else {},
        tracking=TrackingSettings(
            opens=bool(row["track_opens"]),
            opens_at_top=bool(row["track_opens_top"]),
            clicks={"yes": True, "htmlonly": "htmlonly"}.get(row["track_clicks"], False),
            unsubscribes=bool(row["track_unsubscribes"]),
            html_footer=row["unsubscribe_html_footer"],
            text_footer=row["unsubscribe_text_footer"],
        ),
        authorized_recipients=recipients,
    )


def _check_spam_action(value: str) -> None:
    if value not in SPAM_ACTIONS:
        raise DomainError("spam_action must be one of disabled, block or tag")


def _check_web_scheme(value: str) -> None:
    if value not in ("http", "https"):
        raise DomainError("web_scheme must be http or https")


def _checked_web_prefix(value: str) -> str:
    value = value.lower()
    if not valid_label(value):
        raise DomainError("web_prefix must be one DNS label (letters, digits, '-', '_')")
    return value


def _dkim_tags(record: str) -> dict[str, str]:
    """A DKIM key record's tags. RFC 6376 allows whitespace around '=' and inside values (long
    keys are often published split), so it is removed before comparing."""
    tags = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(value.split())
    return tags


def _spf_terms(record: str) -> set[str]:
    """Mechanisms and modifiers other than `all`; '+' is the default qualifier, so dropped."""
    terms = {t.lower().removeprefix("+") for t in record.split()[1:]}
    return {t for t in terms if not t.endswith("all")}


class Domains:
    """Owns the domains and authorized_recipients tables; reads are served from a cache that is
    reloaded whenever admin data changed (in this process or through the CLI)."""

    def __init__(self, store: Store, config: Config, resolver: Resolver) -> None:
        self._store = store
        self._config = config
        self._resolver = resolver
        self._cache: dict[str, Domain] = {}
        self._cache_version = -1

    async def _refresh(self) -> None:
        version = self._store.admin_version()
        if version == self._cache_version:
            return
        rows = await self._store.fetchall(f"SELECT {DOMAIN_COLUMNS} FROM domains")
        recipients: dict[str, set[str]] = {}
        for r in await self._store.fetchall("SELECT domain, address FROM authorized_recipients"):
            recipients.setdefault(r["domain"], set()).add(r["address"])
        self._cache = {
            row["name"]: _row_to_domain(row, frozenset(recipients.get(row["name"], ())))
            for row in rows
        }
        self._cache_version = version

    async def get(self, name: str) -> Domain | None:
        await self._refresh()
        return self._cache.get(name.strip().lower())

    async def all(self) -> list[Domain]:
        await self._refresh()
        return sorted(self._cache.values(), key=lambda d: (d.created_at, d.name))

    async def create(
        self,
        name: str,
        *,
        sandbox: bool = False,
        spam_action: str = "disabled",
        wildcard: bool = False,
        dkim_key_bits: int | None = None,
        dkim_selector: str | None = None,
        web_scheme: str = "http",
        web_prefix: str = "email",
    ) -> Domain:
        name = name.strip().lower().rstrip(".")
        if not valid_domain_name(name):
            raise DomainError(f"'{name}' is not a valid domain name")
        _check_spam_action(spam_action)
        _check_web_scheme(web_scheme)
        selector = (dkim_selector or self._config.domains.dkim_selector).lower()
        if not valid_label(selector):
            raise DomainError("dkim_selector must be one DNS label (letters, digits, '-', '_')")
        web_prefix = _checked_web_prefix(web_prefix)
        if await self.get(name) is not None:
            raise DomainError("This domain name is already taken")
        bits = dkim_key_bits or self._config.domains.dkim_key_bits
        if bits not in (1024, 2048):
            raise DomainError("dkim_key_size must be 1024 or 2048")
        private_pem, public_b64 = generate_dkim_key(bits)
        try:
            await self._store.write(
                Statement(
                    "INSERT INTO domains (name, id, created_at, type, state, spam_action, wildcard,"
                    " web_prefix, web_scheme, dkim_selector, dkim_private_key, dkim_public_key,"
                    " unsubscribe_html_footer, unsubscribe_text_footer)"
                    " VALUES (?, ?, ?, ?, 'unverified', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            name,
                            secrets.token_hex(12),
                            time.time(),
                            "sandbox" if sandbox else "custom",
                            spam_action,
                            int(wildcard),
                            web_prefix,
                            web_scheme,
                            selector,
                            private_pem,
                            public_b64,
                            DEFAULT_HTML_FOOTER,
                            DEFAULT_TEXT_FOOTER,
                        )
                    ],
                )
            )
        except sqlite3.IntegrityError:
            raise DomainError("This domain name is already taken") from None
        domain = await self.get(name)
        assert domain is not None
        return domain

    async def delete(self, name: str, *also: Statement) -> bool:
        """Remove a domain; `also` are other owners' statements committed with it."""
        domain = await self.get(name)
        if domain is None:
            return False
        await self._store.write(
            Statement("DELETE FROM domains WHERE name = ?", [(domain.name,)]),
            Statement("DELETE FROM authorized_recipients WHERE domain = ?", [(domain.name,)]),
            *also,
        )
        return True

    async def set_connection(
        self, name: str, *, require_tls: bool | None, skip_verification: bool | None
    ) -> Domain:
        """The domain's delivery TLS settings (a message's own options override them)."""
        domain = await self.get(name)
        if domain is None:
            raise DomainError(f"Domain not found: {name}")
        require = domain.require_tls if require_tls is None else require_tls
        skip = domain.skip_verification if skip_verification is None else skip_verification
        await self._store.write(
            Statement(
                "UPDATE domains SET require_tls = ?, skip_verification = ? WHERE name = ?",
                [(int(require), int(skip), domain.name)],
            )
        )
        updated = await self.get(domain.name)
        if updated is None:
            raise DomainError(f"Domain not found: {name}")
        return updated

    async def update(
        self,
        name: str,
        *,
        spam_action: str | None = None,
        wildcard: bool | None = None,
        web_scheme: str | None = None,
        web_prefix: str | None = None,
    ) -> Domain:
        """PUT /v3|v4/domains/<d>: the settings that may change after creation."""
        domain = await self._existing(name)
        if spam_action is not None:
            _check_spam_action(spam_action)
        if web_scheme is not None:
            _check_web_scheme(web_scheme)
        if web_prefix is not None:
            web_prefix = _checked_web_prefix(web_prefix)
        return await self._set(
            domain,
            spam_action=domain.spam_action if spam_action is None else spam_action,
            wildcard=int(domain.wildcard if wildcard is None else wildcard),
            web_scheme=domain.web_scheme if web_scheme is None else web_scheme,
            web_prefix=domain.web_prefix if web_prefix is None else web_prefix,
        )

    async def set_tracking(
        self,
        name: str,
        *,
        opens: bool | None = None,
        opens_at_top: bool | None = None,
        clicks: bool | str | None = None,
        unsubscribes: bool | None = None,
        html_footer: str | None = None,
        text_footer: str | None = None,
    ) -> Domain:
        """PUT /v3/domains/<d>/tracking/open|click|unsubscribe (None: unchanged)."""
        limit = self._config.tracking.max_footer_chars
        for label, footer in (("html_footer", html_footer), ("text_footer", text_footer)):
            if footer is not None and len(footer) > limit:
                raise DomainError(f"{label} is limited to {limit} characters")
        domain = await self._existing(name)
        now = domain.tracking
        return await self._set(
            domain,
            track_opens=int(now.opens if opens is None else opens),
            track_opens_top=int(now.opens_at_top if opens_at_top is None else opens_at_top),
            track_clicks=_clicks_column(now.clicks if clicks is None else clicks),
            track_unsubscribes=int(now.unsubscribes if unsubscribes is None else unsubscribes),
            unsubscribe_html_footer=now.html_footer if html_footer is None else html_footer,
            unsubscribe_text_footer=now.text_footer if text_footer is None else text_footer,
        )

    async def _existing(self, name: str) -> Domain:
        domain = await self.get(name)
        if domain is None:
            raise DomainError(f"Domain not found: {name}")
        return domain

    async def _set(self, domain: Domain, **columns: Any) -> Domain:
        """One UPDATE of the named columns (names come from this module, never a request)."""
        assignments = ", ".join(f"{column} = ?" for column in columns)
        await self._store.write(
            Statement(
                f"UPDATE domains SET {assignments} WHERE name = ?",
                [(*columns.values(), domain.name)],
            )
        )
        return await self._existing(domain.name)

    async def authorize(self, name: str, address: str) -> None:
        """Add an authorised recipient to a sandbox domain (at most sandbox_max_recipients)."""
        domain = await self.get(name)
        if domain is None:
            raise DomainError(f"Domain not found: {name}")
        if not domain.is_sandbox:
            raise DomainError(f"{domain.name} is not a sandbox domain")
        address = address.strip().lower()
        limit = self._config.sending.sandbox_max_recipients
        # the limit is checked inside the insert, so concurrent admin commands cannot pass it
        await self._store.write(
            Statement(
                "INSERT INTO authorized_recipients (domain, address, created_at)"
                " SELECT ?, ?, ? WHERE (SELECT count(*) FROM authorized_recipients"
                " WHERE domain = ?) < ? ON CONFLICT DO NOTHING",
                [(domain.name, address, time.time(), domain.name, limit)],
            )
        )
        updated = await self.get(domain.name)
        if updated is None:
            raise DomainError(f"Domain not found: {name}")
        if address not in updated.authorized_recipients:
            raise DomainError(f"a sandbox domain has at most {limit} authorized recipients")

    async def deauthorize(self, name: str, address: str) -> None:
        await self._store.write(
            Statement(
                "DELETE FROM authorized_recipients WHERE domain = ? AND address = ?",
                [(name.strip().lower(), address.strip().lower())],
            )
        )

    # -- DNS ----------------------------------------------------------------------------------

    def sending_records(self, domain: Domain) -> list[DnsRecord]:
        return [
            DnsRecord("TXT", domain.name, self._config.spf_record),
            DnsRecord("TXT", domain.dkim_host, domain.dkim_record),
            DnsRecord("CNAME", f"{domain.web_prefix}.{domain.name}", self._config.tracking_host),
        ]

    def receiving_records(self, domain: Domain) -> list[DnsRecord]:
        return [DnsRecord("MX", domain.name, host, "10") for host in self._config.mx_hosts]

    async def verify(self, name: str) -> Domain:
        """Look up every record we ask the operator to publish and store what was found."""
        domain = await self.get(name)
        if domain is None:
            raise DomainError(f"Domain not found: {name}")
        results: dict[str, Any] = {}
        for record in self.sending_records(domain) + self.receiving_records(domain):
            try:
                observed = await self._resolver.query(record.name, record.record_type)
            except DnsError:
                results[record.key] = {"valid": "unknown", "cached": []}
                continue
            results[record.key] = {
                "valid": "valid" if self._matches(record, observed) else "invalid",
                "cached": observed,
            }
        records = self.sending_records(domain)
        spf_ok = results[records[0].key]["valid"] == "valid"
        dkim_ok = results[records[1].key]["valid"] == "valid"
        state = domain.state
        if state != "disabled":
            state = "active" if spf_ok and dkim_ok else "unverified"
        await self._store.write(
            Statement(
                "UPDATE domains SET state = ?, dns_checked_at = ?, dns_results = ? WHERE name = ?",
                [(state, time.time(), orjson.dumps(results), domain.name)],
            )
        )
        updated = await self.get(domain.name)
        assert updated is not None
        return updated

    @staticmethod
    def _matches(record: DnsRecord, observed: list[str]) -> bool:
        if record.record_type == "MX":
            return any(o.split()[-1].rstrip(".").lower() == record.value.lower() for o in observed)
        if record.record_type == "CNAME":
            return any(o.rstrip(".").lower() == record.value.lower() for o in observed)
        if record.value.startswith("v=spf1"):
            wanted = _spf_terms(record.value)
            return any(
                o.lower().split()[:1] == ["v=spf1"] and wanted <= _spf_terms(o) for o in observed
            )
        wanted_key = record.value.split("p=", 1)[1]
        return any(_dkim_tags(o).get("p") == wanted_key for o in observed)
