"""What made a tracking hit and where it came from: `client-info` and `geolocation`.

`client-info` comes from the User-Agent, parsed by `ua-parser` (the maintained uap-core rules),
mapped to Mailgun's words: client-type browser, mobile browser, email client, library, robot,
other or unknown; device-type desktop, mobile, tablet, other or unknown.

Beyond Mailgun, `bot` names a machine that fetched the pixel or link on the recipient's behalf,
so stats can leave machine opens and clicks out ("" for a person):

- "gmail": Gmail's image proxy (its User-Agent says `GoogleImageProxy`);
- "yahoo": Yahoo Mail's image proxy (`YahooMailProxy`);
- "apple": Apple Mail Privacy Protection. Its proxy fetches every image when the message
  arrives with the bare User-Agent `Mozilla/5.0` and nothing after it, which no browser or mail
  client sends; we match on that string alone. Its addresses are those of iCloud Private Relay
  (Apple's and partner CDNs' egress ranges, a long list that changes), which we do not ship;
- "scanner": a crawler (ua-parser's device family Spider), an HTTP library (curl, Wget,
  python-requests, Go, Java, ...), a mail security gateway that names itself in its
  User-Agent (Barracuda, Proofpoint, Mimecast, Cisco IronPort, Office's link check), no
  User-Agent at all, or a click within `[tracking] scanner_window_s` of the message's delivery
  (gateways that pose as browsers still click every link at once).

`geolocation` comes from a MaxMind-format database when `[tracking] geoip_database` names one
(GeoLite2/GeoIP2 City or Country, DB-IP Lite, ...: country, region as the ISO subdivision code,
city); otherwise the country alone comes from `iptocc`, which ships the Regional Internet
Registries' allocations (refreshed with each release, read offline); region and city are then
"unknown". Nothing is ever downloaded at run time.

Both are looked up once per distinct User-Agent or address (LRU caches): the same few repeat.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

import iptocc
import maxminddb
import ua_parser

from mta.events import ClientInfo, Geolocation

CACHE_SIZE = 4096  # distinct User-Agents and addresses remembered
MAX_USER_AGENT = 1024  # characters of a User-Agent kept (a header may be 8 KB)
UNKNOWN = "unknown"
_NOWHERE = Geolocation()

_EMAIL_CLIENTS = frozenset({
    "Airmail", "Apple Mail", "Lotus Notes", "Outlook", "Postbox", "Thunderbird",
    "Windows Live Mail",
})
_BROWSERS = frozenset({
    "Brave", "Chrome", "Chromium", "Edge", "Firefox", "IE", "Opera", "Safari", "Vivaldi",
    "Yandex Browser", "Samsung Internet", "UC Browser", "Silk", "Puffin", "DuckDuckGo Mobile",
})
_LIBRARIES = frozenset({
    "AHC", "Apache-HttpClient", "HTTPClient", "HTTPie", "Go-http-client", "Java",
    "PostmanRuntime", "PycURL", "Python Requests", "Python aiohttp", "Python-urllib", "Wget",
    "aria2", "axios", "curl", "go-resty", "libcurl-agent", "libwww-perl", "okhttp", "reqwest",
    "wget2",
})
_MOBILE_OS = frozenset({
    "Android", "BlackBerry OS", "Firefox OS", "HarmonyOS", "KaiOS", "Symbian OS", "Tizen",
    "Windows Phone", "iOS", "iPadOS", "webOS",
})
_DESKTOP_OS = frozenset({
    "Chrome OS", "Debian", "Fedora", "FreeBSD", "Linux", "Mac OS X", "NetBSD", "OpenBSD",
    "Solaris", "Ubuntu", "Windows",
})
# security gateways and Office's pre-open link check, where they say who they are (lower case)
_SCANNER_MARKS = (
    "barracuda", "proofpoint", "urldefense", "mimecast", "ironport", "existence discovery",
)
_PROXIES = (("GoogleImageProxy", "gmail"), ("YahooMailProxy", "yahoo"))
_APPLE_PROXY_AGENT = "Mozilla/5.0"


def _family(part: Any) -> str | None:
    family = part.family if part is not None else None
    return None if family in (None, "Other") else family


def _device_type(result: ua_parser.Result, user_agent: str, os: str | None) -> str:
    device = result.device
    if device is not None and device.family == "Spider":
        return "other"
    marks = f"{device.family} {device.brand} {device.model}" if device is not None else ""
    if "iPad" in marks or "Tablet" in marks or "Kindle" in marks:
        return "tablet"
    if os == "Android" and "Mobile" not in user_agent:
        return "tablet"  # Android tablets leave "Mobile" out (Google's advice to browsers)
    if os in _MOBILE_OS:
        return "mobile"
    if os in _DESKTOP_OS:
        return "desktop"
    return "mobile" if _family(device) is not None else UNKNOWN


def _client_type(name: str | None, device_type: str, spider: bool) -> str:
    if spider:
        return "robot"
    if name is None:
        return UNKNOWN
    if name in _LIBRARIES:
        return "library"
    if name in _EMAIL_CLIENTS:
        return "email client"
    if name in _BROWSERS or "Mobile" in name or "Safari" in name:
        mobile = "Mobile" in name or device_type in ("mobile", "tablet")
        return "mobile browser" if mobile else "browser"
    return "other"


@functools.lru_cache(maxsize=CACHE_SIZE)
def _describe(user_agent: str) -> ClientInfo:
    """client-info for a User-Agent as it stands (the delivery-time rule is applied later)."""
    for mark, bot in _PROXIES:
        if mark in user_agent:
            # a proxy's own OS and device say nothing about the reader's
            return ClientInfo(client_type="other", client_name=mark, user_agent=user_agent,
                              bot=bot)
    if user_agent.strip() == _APPLE_PROXY_AGENT:
        return ClientInfo(user_agent=user_agent, bot="apple")
    result = ua_parser.parse(user_agent)
    name, os = _family(result.user_agent), _family(result.os)
    spider = result.device is not None and result.device.family == "Spider"
    device_type = _device_type(result, user_agent, os)
    client_type = _client_type(name, device_type, spider)
    lowered = user_agent.lower()
    machine = (
        not user_agent.strip()
        or client_type in ("robot", "library")
        or any(mark in lowered for mark in _SCANNER_MARKS)
    )
    return ClientInfo(
        client_type=client_type,
        client_os=os or UNKNOWN,
        device_type=device_type,
        client_name=name or UNKNOWN,
        user_agent=user_agent,
        bot="scanner" if machine else "",
    )


class ClientDescriber:
    """Describes tracking hits. Holds the geolocation database, opened once, read only."""

    def __init__(self, geoip_database: str = "", scanner_window_s: float = 0.0) -> None:
        self._scanner_window_s = scanner_window_s
        self._reader = maxminddb.open_database(geoip_database) if geoip_database else None
        self._where = functools.lru_cache(maxsize=CACHE_SIZE)(
            self._from_database if self._reader is not None else _from_registries
        )
        ua_parser.parse("")  # load the rules now, not on the first hit (about 0.3 s)

    def client_info(self, user_agent: str, since_delivery: float | None = None) -> ClientInfo:
        """`since_delivery`: seconds from the message's delivery to a click (None for opens
        and unsubscribes), so a click too quick for a person is marked as a scanner's."""
        info = _describe(user_agent[:MAX_USER_AGENT])
        if (
            since_delivery is not None
            and not info.bot
            and since_delivery < self._scanner_window_s
        ):
            return ClientInfo(
                client_type=info.client_type,
                client_os=info.client_os,
                device_type=info.device_type,
                client_name=info.client_name,
                user_agent=info.user_agent,
                bot="scanner",
            )
        return info

    def geolocation(self, ip: str) -> Geolocation:
        return self._where(ip) if ip else _NOWHERE

    def _from_database(self, ip: str) -> Geolocation:
        assert self._reader is not None
        try:
            record = self._reader.get(ip)
        except ValueError:  # not an address
            return _NOWHERE
        if not isinstance(record, dict):
            return _NOWHERE
        country = (record.get("country") or record.get("registered_country") or {}).get(
            "iso_code"
        )
        subdivisions = record.get("subdivisions") or [{}]
        region = subdivisions[0].get("iso_code")
        city = (record.get("city") or {}).get("names", {}).get("en")
        return Geolocation(
            country=country or UNKNOWN, region=region or UNKNOWN, city=city or UNKNOWN
        )

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def _from_registries(ip: str) -> Geolocation:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return _NOWHERE
    country = iptocc.country_code(ip)
    return Geolocation(country=country) if country else _NOWHERE
