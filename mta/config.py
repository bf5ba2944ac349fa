"""The one configuration schema: every setting's name, type, default and one-line doc.

Loaded once at start (TOML file, then `MTA_<SECTION>_<KEY>` environment overrides) and passed
down; nothing else reads files or the environment for settings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


class ConfigError(Exception):
    """A bad setting; the message is one line naming the key."""


def setting(default: Any, doc: str) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


# where posts to users' URLs must not go unless allowed: private, loopback, link-local and
# metadata (169.254.169.254), CGNAT, benchmarking, multicast and reserved ranges
NOT_THE_INTERNET = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
    "240.0.0.0/4", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
]


@dataclass
class ServerConfig:
    """Process-wide settings."""

    data_dir: str = setting("./var", "directory for the database and generated keys")
    hostname: str = setting(
        "localhost", "this server's public host name (SMTP banner, DNS records)"
    )
    log_level: str = setting("info", "debug, info, warning or error")
    node_id: str = setting(
        "",
        "this node's name in queue leases and shared limits, unique per node; empty: the "
        "machine's host name (not server.hostname, which nodes behind one name share)",
    )


@dataclass
class ApiConfig:
    """The Mailgun-compatible HTTP API."""

    listen: str = setting("127.0.0.1:8080", "host:port the HTTP API listens on")
    public_url: str = setting(
        "", "base URL clients use (paging links); empty: taken from each request's Host"
    )
    max_request_bytes: int = setting(
        54_945_382, "largest request body accepted (Mailgun: 52.4 MiB)"
    )
    max_form_fields: int = setting(5000, "most form fields in one request (1,000 `to` fit)")


@dataclass
class SmtpConfig:
    """SMTP listeners. An empty address turns a listener off."""

    submission: str = setting("127.0.0.1:1587", "submission with STARTTLS, AUTH after TLS (587)")
    submission_tls: str = setting("127.0.0.1:1465", "submission over implicit TLS (465)")
    submission_alt: str = setting("127.0.0.1:2525", "submission like 587 on another port (2525)")
    mx: str = setting("127.0.0.1:1025", "inbound MX for hosted domains, STARTTLS, no AUTH (25)")
    tls_cert: str = setting("", "PEM certificate chain; empty: a self-signed pair in data_dir")
    tls_key: str = setting("", "PEM private key for tls_cert")
    foreign_senders: str = setting(
        "allow",
        "senders on domains not hosted here: allow (relayhost cron mail) or reject; senders on "
        "another hosted domain are always refused",
    )
    idle_timeout_s: float = setting(300.0, "close a session silent this long (RFC 5321: 5 min)")
    session_timeout_s: float = setting(1800.0, "close any session this old")
    max_line_bytes: int = setting(2048, "longest command or message line accepted")
    max_header_bytes: int = setting(262_144, "largest header block of a message (SMTP and API)")
    max_header_fields: int = setting(1000, "most header fields in a message (SMTP and API)")
    bare_lf: str = setting(
        "normalise",
        "a DATA line ending in a bare LF: normalise (read as CRLF, like Postfix) or reject; a "
        "bare CR or a NUL is always refused",
    )
    min_data_rate: int = setting(
        1024, "slowest DATA upload kept open, in bytes/s averaged after data_rate_grace_s"
    )
    data_rate_grace_s: float = setting(30.0, "DATA time before min_data_rate is enforced")
    data_memory_bytes: int = setting(
        64 * MiB, "DATA held in memory by all sessions together; beyond it sessions spool to disk"
    )
    spool_max_bytes: int = setting(
        4096 * MiB, "DATA spooled to disk by all sessions together; beyond it a message gets 451"
    )
    max_connections: int = setting(2000, "concurrent SMTP sessions in all")
    max_connections_per_ip: int = setting(
        50, "concurrent submission sessions from one IPv4 address or IPv6 /64"
    )
    mx_max_connections_per_ip: int = setting(
        10, "concurrent MX sessions from one IPv4 address or IPv6 /64"
    )
    auth_failures: int = setting(
        5, "failed AUTH attempts from one IPv4 address or IPv6 /64 before it is blocked"
    )
    auth_failure_window_s: float = setting(
        300.0, "window in which auth_failures and auth_login_failures are counted"
    )
    auth_block_s: float = setting(300.0, "how long a blocked network gets 421")
    auth_login_failures: int = setting(
        10, "failed AUTH attempts for one login, from any network, before the login backs off"
    )
    auth_login_backoff_s: float = setting(
        60.0,
        "first backoff of a login: AUTH from networks it has not logged in from gets 454 "
        "unchecked; doubles each time it recurs",
    )
    auth_login_backoff_max_s: float = setting(
        3600.0, "longest login backoff; the doubling starts again after this long without one"
    )
    auth_known_network_s: float = setting(
        604_800.0,
        "a network a login succeeded from is exempt from the login's backoff and from "
        "auth_failures_per_s this long",
    )
    auth_failures_per_s: float = setting(
        5.0, "failed AUTHs per second server-wide; past it, AUTHs needing a password check get 454"
    )
    auth_check_threads: int = setting(2, "threads of their own for password checks (scrypt)")
    auth_check_queue: int = setting(32, "password checks waiting for a thread; more get 454")


@dataclass
class StoreConfig:
    """The store: an embedded SQLite-WAL file (one node) or PostgreSQL (one or several nodes)."""

    url: str = setting(
        "", "postgresql://user:pass@host:port/db to use PostgreSQL; empty: the SQLite file"
    )
    path: str = setting("", "SQLite database file; empty: <data_dir>/mta.db")
    pool_size: int = setting(10, "PostgreSQL connections each node keeps open at most")
    statement_timeout_s: float = setting(
        30.0, "PostgreSQL: longest one statement may run before it is cancelled"
    )
    commit_window_ms: float = setting(
        1.0, "how long the writer gathers more writes before one commit, when the last "
        "commits held several and such waits gathered at least one write each on average "
        "(a lone writer commits at once)"
    )
    max_batch: int = setting(1000, "most write jobs committed in one transaction")
    busy_timeout_ms: int = setting(10_000, "how long to wait for a lock held by another process")


@dataclass
class SendingConfig:
    """Limits applied by the accept path (HTTP and SMTP alike)."""

    max_message_bytes: int = setting(25 * MiB, "largest message accepted (Mailgun: 25 MB)")
    max_recipients: int = setting(1000, "most recipients (to + cc + bcc) in one submission")
    max_schedule_days: float = setting(3.0, "how far ahead o:deliverytime may be")
    max_options_bytes: int = setting(16_384, "total size of o:, h: and v: values (Mailgun: 16 kB)")
    max_address_bytes: int = setting(
        262_144, "total size of the from, to, cc and bcc values of one submission"
    )
    max_accepting_bytes: int = setting(
        64 * MiB,
        "message bytes being accepted at once (HTTP and SMTP together); more wait their turn",
    )
    sandbox_max_recipients: int = setting(5, "authorised recipients a sandbox domain may have")


@dataclass
class EventsConfig:
    """The event log and the Events API."""

    retention_days: float = setting(30.0, "how long events are kept and searchable")
    default_limit: int = setting(100, "page size when a query gives no limit (max 300)")


@dataclass
class StatsConfig:
    """Counters by event, tag and campaign (the Stats, Tags and Campaigns APIs)."""

    hourly_retention_days: float = setting(
        190.0, "hour counters (and first-open/click marks) older than this are purged"
    )
    daily_retention_days: float = setting(
        732.0, "day counters older than this are purged; month counters are kept"
    )
    campaign_retention_days: float = setting(
        190.0, "campaign report rows (sends, opens, clicks, ...) older than this are purged"
    )
    campaign_delivered_retention_days: float = setting(
        14.0, "campaign report rows of deliveries are purged sooner (the older manual's 2 weeks)"
    )
    tag_limit: int = setting(
        4000, "tags a domain may have; new tags of a send beyond it are carried, not counted"
    )
    campaign_limit: int = setting(1000, "campaigns a domain may have")


@dataclass
class ListsConfig:
    """Mailing lists: members, bulk uploads, and how a send to a list is expanded."""

    max_members: int = setting(2_500_000, "members one list may have (Mailgun's limit)")
    max_members_per_call: int = setting(1000, "members one members.json request may carry")
    max_vars_bytes: int = setting(8192, "size of one member's vars (JSON)")
    max_name_chars: int = setting(1024, "length of a list's or a member's name and description")
    upload_chunk: int = setting(
        1000, "members written per transaction by CSV uploads and `mta list import`"
    )
    expansion_chunk: int = setting(
        1000, "members queued per transaction when a send to a list is expanded"
    )
    expansion_lease_s: float = setting(
        300.0, "how long a node holds a list send it is expanding before another may take it"
    )
    expansion_poll_s: float = setting(1.0, "how often each node looks for list sends to expand")


@dataclass
class PanelConfig:
    """The web control panel at /cp/ on the API listener."""

    enabled: bool = setting(True, "serve the control panel at /cp/")
    session_hours: float = setting(12.0, "how long a sign-in lasts without use")
    sign_in_failures: int = setting(
        5, "failed sign-ins from one address per minute before it must wait a minute"
    )


@dataclass
class MetricsConfig:
    """Prometheus metrics at GET /metrics on the API listener."""

    enabled: bool = setting(True, "serve /metrics")
    token: str = setting(
        "", "bearer token other than loopback clients must send; empty: loopback clients only"
    )


@dataclass
class LogsConfig:
    """What the server logs besides its own messages."""

    events: str = setting(
        "logfmt", 'one line per committed event: "logfmt", "json" or "off"'
    )


@dataclass
class DoctorConfig:
    """`mta doctor`: what it warns about."""

    min_free_disk_mb: int = setting(1024, "free space on the data directory's disk below this")
    certificate_days: int = setting(14, "TLS certificates expiring within this many days")


@dataclass
class DnsConfig:
    """DNS resolution for domain verification and delivery."""

    nameservers: list = setting([], "resolver addresses (ip or ip:port); empty: the system's")
    timeout_s: float = setting(5.0, "lifetime of one DNS query")
    answers: dict = setting(
        {},
        'fixed answers, "name TYPE" -> [records]; a listed name is never looked up '
        "(tests, split-horizon set-ups)",
    )
    only_answers: bool = setting(False, "answer NXDOMAIN for anything not in answers (tests)")
    static_mx: dict = setting(
        {},
        'delivery hosts for listed domains, domain -> ["host:port", ...] in preference order, '
        "used instead of their MX records (tests, private networks)",
    )


@dataclass
class DomainsConfig:
    """What a new domain gets and which DNS records it is told to publish."""

    dkim_selector: str = setting("mta", "DKIM selector of new domains")
    dkim_key_bits: int = setting(2048, "RSA size of new DKIM keys (1024 or 2048)")
    spf_record: str = setting("", "SPF TXT value to publish; empty: v=spf1 a:<hostname> ~all")
    mx_hosts: list = setting([], "MX hosts to publish; empty: [<hostname>]")
    tracking_host: str = setting("", "CNAME target for email.<domain>; empty: <hostname>")


@dataclass
class OutboundConfig:
    """Delivery to remote MX hosts: the queue scheduler and its SMTP client."""

    enabled: bool = setting(True, "deliver queued mail (off: accept and queue only)")
    relay: str = setting("", "host:port to hand every delivery to (a smarthost); empty: MX")
    helo_name: str = setting("", "name said in EHLO; empty: server.hostname")
    port: int = setting(25, "port of remote MX hosts")
    shaping_file: str = setting(
        "", "per-destination shaping profiles (TOML); empty: the built-in config/shaping.toml"
    )
    bounce_rules_file: str = setting(
        "", "how remote replies are classified (TOML); empty: the built-in config/bounces.toml"
    )
    retry_intervals_s: list = setting(
        [600, 600, 900, 1800, 3600, 7200, 14400],
        "waits before each retry of a temporary failure; the last repeats",
    )
    max_age_s: float = setting(28800.0, "give up (failed, reason old) this long after first due")
    lease_s: float = setting(
        120.0,
        "how long a taken recipient is reserved for its node (renewed while held); after a "
        "node dies, others deliver its recipients once this has passed",
    )
    site_slot_lease_s: float = setting(
        60.0,
        "with several nodes: how long a connection slot to a destination is held without "
        "renewal (a dead node's slots free up after this)",
    )
    claim_batch: int = setting(500, "most due recipients taken from the queue at once")
    max_in_flight: int = setting(20000, "most recipients held in memory for delivery")
    poll_interval_s: float = setting(0.05, "how often the queue is checked when idle")
    connect_timeout_s: float = setting(30.0, "time to connect and read the greeting")
    command_timeout_s: float = setting(300.0, "time for a reply to one command (RFC 5321: 5 min)")
    data_timeout_s: float = setting(600.0, "time for the reply after the message (10 min)")
    idle_connection_s: float = setting(2.0, "keep a connection open this long for more messages")
    stop_grace_s: float = setting(
        10.0, "at shutdown, how long connections may take to finish the message they send"
    )
    tls_ca_file: str = setting("", "PEM file of extra CAs trusted for delivery (private CAs)")
    message_retention_days: float = setting(
        3.0, "keep delivered or failed messages (for resends) this long"
    )


@dataclass
class InboundConfig:
    """Mail received on the MX port: routes, their actions, stored messages."""

    retry_intervals_s: list = setting(
        [600, 600, 900, 1800, 3600, 7200, 14400],
        "waits before each retry of a failed HTTP forward or notification (then given up)",
    )
    post_timeout_s: float = setting(30.0, "time an application has to answer a forward POST")
    store_days: float = setting(3.0, "how long store() keeps a message")
    max_routes_checked: int = setting(1000, "routes evaluated for one recipient at most")
    regex_input_bytes: int = setting(1024, "longest text a route pattern is matched against")
    max_mime_parts: int = setting(1000, "most MIME parts in a received message (more: 552)")
    max_mime_depth: int = setting(20, "deepest MIME nesting in a received message (more: 552)")
    forward_allow: list = setting(
        [], "CIDRs forward() and store(notify=) may post to even if forward_deny lists them"
    )
    forward_deny: list = setting(
        NOT_THE_INTERNET,
        "CIDRs forward() and store(notify=) never post to (private, loopback, link-local, "
        "metadata); checked on the address connected to",
    )


@dataclass
class WebhooksConfig:
    """Signed posts of events to users' applications (the manual's "Webhooks")."""

    retry_intervals_s: list = setting(
        [600, 600, 900, 1800, 3600, 7200, 14400],
        "waits before each retry of a failed webhook post, then given up (delivery "
        "notifications are posted once)",
    )
    timeout_s: float = setting(10.0, "time an application has to answer one webhook post")
    concurrency: int = setting(64, "webhook posts in flight at once on this node")
    posts_per_url: int = setting(
        32, "posts in flight to one URL at most: a slow receiver waits its turn, not others' "
        "(one application taking every domain's webhooks needs a few dozen at 1,000 events/s)"
    )
    lease_s: float = setting(60.0, "a node's hold on a webhook job it is posting")
    allow: list = setting([], "CIDRs webhooks may post to even if `deny` lists them")
    deny: list = setting(
        NOT_THE_INTERNET,
        "CIDRs webhooks never post to (private, loopback, link-local, metadata); checked on "
        "the address connected to",
    )


@dataclass
class TrackingConfig:
    """Open pixel, click redirects and unsubscribe pages (the manual's "Tracking Messages")."""

    public_url: str = setting(
        "",
        "base URL of tracking links in messages; empty: api.public_url, else "
        "<web_scheme>://<web_prefix>.<domain> (the CNAME each domain publishes)",
    )
    link_lifetime_days: float = setting(
        365.0, "tracking links older than this answer 404 and record nothing"
    )
    geoip_database: str = setting(
        "", "MaxMind-format (.mmdb) city database for `geolocation`; empty: `unknown`"
    )
    scanner_window_s: float = setting(
        10.0, "a click this soon after delivery is marked as a link scanner's (client-info.bot)"
    )
    max_footer_chars: int = setting(
        10_000, "longest unsubscribe footer (HTML or text) a domain may set: every tracked "
        "message of the domain carries it"
    )
    trusted_proxies: list = setting(
        [],
        "CIDRs of reverse proxies in front of the tracking endpoints and the panel: from them, "
        "the client is the last X-Forwarded-For address that is not one of them (a hit's `ip`, "
        "the panel's sign-in throttle; else: the peer address)",
    )


@dataclass
class SpamConfig:
    """Verdicts added to inbound mail (X-Mailgun-Spf, -Dkim-Check-Result, -Sscore, -Sflag)."""

    spamd: str = setting("", "host:port of SpamAssassin's spamd; empty: no spam score")
    threshold: float = setting(5.0, "score from which a message is spam (X-Mailgun-Sflag: Yes)")
    timeout_s: float = setting(10.0, "time spamd has for one message")
    max_bytes: int = setting(512 * 1024, "larger messages are not sent to spamd")


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sending: SendingConfig = field(default_factory=SendingConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    lists: ListsConfig = field(default_factory=ListsConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    domains: DomainsConfig = field(default_factory=DomainsConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    spam: SpamConfig = field(default_factory=SpamConfig)

    @property
    def db_path(self) -> Path:
        return Path(self.store.path) if self.store.path else Path(self.server.data_dir) / "mta.db"

    @property
    def node_id(self) -> str:
        return self.server.node_id or socket.gethostname()

    @property
    def store_name(self) -> str:
        """The store as logs name it (a PostgreSQL URL without its password)."""
        if not self.store.url:
            return str(self.db_path)
        scheme, _, rest = self.store.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    @property
    def spf_record(self) -> str:
        return self.domains.spf_record or f"v=spf1 a:{self.server.hostname} ~all"

    @property
    def mx_hosts(self) -> list[str]:
        return list(self.domains.mx_hosts) or [self.server.hostname]

    @property
    def tracking_host(self) -> str:
        return self.domains.tracking_host or self.server.hostname


def sections() -> list[tuple[str, type]]:
    return [(f.name, f.default_factory) for f in dataclasses.fields(Config)]  # type: ignore[misc]


def _coerce(key: str, kind: type, value: Any) -> Any:
    """Check (TOML) or convert (environment strings) one value to the schema's type."""
    from_env = isinstance(value, str) and kind is not str
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value) if from_env or isinstance(value, int) else _bad("an integer")
        if kind is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            if from_env or isinstance(value, (int, float)):
                return float(value)
            return _bad("a number")
        if kind is str:
            return value if isinstance(value, str) else _bad("a string")
        if kind in (list, dict):
            if from_env and kind is list and not value.lstrip().startswith("["):
                value = [item.strip() for item in value.split(",") if item.strip()]
            elif from_env:
                value = json.loads(value)
            if not isinstance(value, kind):
                _bad("a list" if kind is list else "a table")
            return value
    except (ValueError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    raise ConfigError(f"{key}: unsupported type")


def _bad(what: str) -> Any:
    raise ValueError(f"expected {what}")


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Defaults, then the TOML file (if given), then MTA_<SECTION>_<KEY> variables."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    config = Config()
    known = dict(sections())
    for name in raw:
        if name not in known:
            raise ConfigError(f"{name}: unknown section")
    for name, cls in known.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a table")
        section = getattr(config, name)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise ConfigError(f"{name}.{key}: unknown setting")
        for key, f in fields.items():
            kind = (
                type(f.default_factory()) if f.default is dataclasses.MISSING else type(f.default)
            )  # type: ignore[misc]
            env_name = f"MTA_{name}_{key}".upper()
            if env_name in env:
                setattr(section, key, _coerce(env_name, kind, env[env_name]))
            elif key in values:
                setattr(section, key, _coerce(f"{name}.{key}", kind, values[key]))
    validate(config)
    return config


def parse_listen(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return host, int(port)


def parse_nameserver(key: str, value: str) -> tuple[str, int]:
    """'ip', 'ip:port', 'v6' or '[v6]:port' -> (address, port)."""
    text = str(value).strip()
    address, port = text, "53"
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        address, port = text.split(":")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"{key}: expected ip, ip:port or [ipv6]:port, got {value!r}") from None
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{key}: expected ip, ip:port or [ipv6]:port, got {value!r}")
    return address, int(port)


def validate(config: Config) -> None:
    parse_listen("api.listen", config.api.listen)
    for name in ("submission", "submission_tls", "submission_alt", "mx"):
        value = getattr(config.smtp, name)
        if value:
            parse_listen(f"smtp.{name}", value)
    if bool(config.smtp.tls_cert) != bool(config.smtp.tls_key):
        raise ConfigError("smtp.tls_cert/tls_key: give both or neither")
    if config.smtp.foreign_senders not in ("allow", "reject"):
        raise ConfigError("smtp.foreign_senders: expected allow or reject")
    if config.smtp.bare_lf not in ("normalise", "reject"):
        raise ConfigError("smtp.bare_lf: expected normalise or reject")
    for name in ("max_line_bytes", "max_header_bytes", "max_header_fields", "max_connections",
                 "max_connections_per_ip", "mx_max_connections_per_ip", "auth_failures",
                 "auth_login_failures", "auth_check_threads", "data_memory_bytes"):
        if getattr(config.smtp, name) < 1:
            raise ConfigError(f"smtp.{name}: must be positive")
    for name in ("auth_failure_window_s", "auth_login_backoff_s", "auth_failures_per_s"):
        if getattr(config.smtp, name) <= 0:
            raise ConfigError(f"smtp.{name}: must be positive")
    for name in ("auth_block_s", "auth_known_network_s", "auth_check_queue"):
        if getattr(config.smtp, name) < 0:
            raise ConfigError(f"smtp.{name}: must not be negative")
    if config.smtp.auth_login_backoff_max_s < config.smtp.auth_login_backoff_s:
        raise ConfigError("smtp.auth_login_backoff_max_s: must be at least auth_login_backoff_s")
    for server in config.dns.nameservers:
        parse_nameserver("dns.nameservers", server)
    if config.server.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("server.log_level: expected debug, info, warning or error")
    if config.domains.dkim_key_bits not in (1024, 2048):
        raise ConfigError("domains.dkim_key_bits: expected 1024 or 2048")
    if not 1 <= config.events.default_limit <= 300:
        raise ConfigError("events.default_limit: expected 1 to 300")
    if config.store.commit_window_ms < 0 or config.store.max_batch < 1:
        raise ConfigError("store.commit_window_ms/max_batch: must be positive")
    if config.store.url and not config.store.url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("store.url: expected postgresql://user:pass@host:port/db or empty")
    if config.store.pool_size < 2:
        raise ConfigError("store.pool_size: must be at least 2")
    if config.logs.events not in ("logfmt", "json", "off"):
        raise ConfigError('logs.events: expected "logfmt", "json" or "off"')
    if config.panel.session_hours <= 0 or config.panel.sign_in_failures < 1:
        raise ConfigError("panel.session_hours and panel.sign_in_failures: must be positive")
    if config.spam.spamd:
        parse_listen("spam.spamd", config.spam.spamd)
    if not config.inbound.retry_intervals_s or not all(
        isinstance(i, (int, float)) and i > 0 for i in config.inbound.retry_intervals_s
    ):
        raise ConfigError("inbound.retry_intervals_s: expected a list of positive numbers")
    if config.outbound.relay:
        parse_listen("outbound.relay", config.outbound.relay)
    for domain, hosts in config.dns.static_mx.items():
        if not isinstance(hosts, list) or not hosts:
            raise ConfigError(f"dns.static_mx: expected {domain!r} = [\"host:port\", ...]")
        for host in hosts:
            parse_listen(f"dns.static_mx.{domain}", str(host))
    intervals = config.outbound.retry_intervals_s
    if not intervals or not all(isinstance(i, (int, float)) and i > 0 for i in intervals):
        raise ConfigError("outbound.retry_intervals_s: expected a list of positive numbers")
    for name in ("lease_s", "site_slot_lease_s", "claim_batch", "max_in_flight", "poll_interval_s",
                 "connect_timeout_s", "command_timeout_s", "data_timeout_s", "max_age_s"):
        if getattr(config.outbound, name) <= 0:
            raise ConfigError(f"outbound.{name}: must be positive")
    for key, records in config.dns.answers.items():
        if len(key.split()) != 2 or not isinstance(records, list):
            raise ConfigError(f'dns.answers: expected "name TYPE" = [records], got {key!r}')
    if config.sending.max_accepting_bytes < config.sending.max_message_bytes:
        raise ConfigError("sending.max_accepting_bytes: must be at least max_message_bytes")
    for where, section, names in (("inbound", config.inbound, ("forward_allow", "forward_deny")),
                                  ("webhooks", config.webhooks, ("allow", "deny")),
                                  ("tracking", config.tracking, ("trusted_proxies",))):
        for name in names:
            for cidr in getattr(section, name):
                try:
                    ipaddress.ip_network(str(cidr), strict=False)
                except ValueError:
                    raise ConfigError(f"{where}.{name}: {cidr!r} is not a CIDR") from None
    hooks = config.webhooks
    if not hooks.retry_intervals_s or not all(
        isinstance(i, (int, float)) and i > 0 for i in hooks.retry_intervals_s
    ):
        raise ConfigError("webhooks.retry_intervals_s: expected a list of positive numbers")
    for name in ("timeout_s", "concurrency", "posts_per_url", "lease_s"):
        if getattr(hooks, name) <= 0:
            raise ConfigError(f"webhooks.{name}: must be positive")
    if hooks.timeout_s >= hooks.lease_s * 0.8:
        raise ConfigError("webhooks.timeout_s: must be under 80 % of webhooks.lease_s")
    tracking = config.tracking
    if tracking.public_url and not tracking.public_url.startswith(("http://", "https://")):
        raise ConfigError("tracking.public_url: expected an http:// or https:// URL, or empty")
    if tracking.link_lifetime_days <= 0:
        raise ConfigError("tracking.link_lifetime_days: must be positive")
    for name, limit in (
        ("sending.max_message_bytes", config.sending.max_message_bytes),
        ("sending.max_address_bytes", config.sending.max_address_bytes),
        ("inbound.max_mime_parts", config.inbound.max_mime_parts),
        ("inbound.max_mime_depth", config.inbound.max_mime_depth),
        ("sending.max_recipients", config.sending.max_recipients),
        ("api.max_request_bytes", config.api.max_request_bytes),
        ("lists.max_members", config.lists.max_members),
        ("lists.max_members_per_call", config.lists.max_members_per_call),
        ("lists.max_vars_bytes", config.lists.max_vars_bytes),
        ("lists.max_name_chars", config.lists.max_name_chars),
        ("lists.upload_chunk", config.lists.upload_chunk),
        ("lists.expansion_chunk", config.lists.expansion_chunk),
    ):
        if limit < 1:
            raise ConfigError(f"{name}: must be positive")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    return json.dumps(value)


def render_reference() -> str:
    """The default configuration as a commented TOML file (config/mta.toml is exactly this)."""
    lines = [
        "# mta configuration: every setting with its default and what it does.",
        "# Any key can be overridden by the environment as MTA_<SECTION>_<KEY>,",
        "# e.g. MTA_API_LISTEN=0.0.0.0:8080 (tables as JSON; lists as JSON or comma-separated).",
    ]
    for name, cls in sections():
        lines += ["", f"[{name}]  # {cls.__doc__}"]
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"
