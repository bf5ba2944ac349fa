"""The public tracking endpoints (mailgun-api.md §14): `/o/<token>` open pixel, `/c/<token>` click
redirect, `/u/<token>` unsubscribe page and RFC 8058 one-click unsubscribe.

No API key: the signed token is the authority. These answer people's browsers and mail clients,
so errors are HTML pages, never Mailgun's JSON: a tampered, expired or foreign token is a 404
page and records nothing. Every answer forbids caching, so each open and click reaches us.
`mount()` puts them on an application; `is_public()` tells its auth middleware to let them by.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from mta.suppressions import ALL_TAGS
from mta.tracking.hits import Hits
from mta.tracking.links import LIST_SCOPE, Link

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# a 1x1 transparent GIF (43 bytes)
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
}
_PAGE_HEADERS = {
    **NO_CACHE,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# what a browser drops from a URL it follows (WHATWG URL: tab and newline), and what it
# percent-encodes (other controls); a header cannot carry either
_DROPPED = re.compile(r"[\t\n\r]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_C0_OR_SPACE = "".join(map(chr, range(0x21)))  # trimmed from both ends (WHATWG URL)


@dataclass(frozen=True)
class Tracking:
    """What the endpoints use: the hits recorder, and the reverse proxies whose
    X-Forwarded-For is believed."""

    hits: Hits
    trusted_proxies: tuple[Network, ...] = ()


TRACKING: web.AppKey[Tracking] = web.AppKey("tracking", Tracking)


def mount(app: web.Application, hits: Hits, trusted_proxies: Iterable[str] = ()) -> None:
    """Serve the tracking endpoints from `app` (its auth middleware must let `is_public`
    requests by)."""
    proxies = tuple(ipaddress.ip_network(str(c), strict=False) for c in trusted_proxies)
    app[TRACKING] = Tracking(hits, proxies)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)


def is_public(request: web.Request) -> bool:
    """Whether the request is for a tracking endpoint (no API key needed)."""
    return request.match_info.route.handler in _HANDLERS


def client_ip(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The address a hit came from: the peer, or, when the peer is a trusted proxy, the last
    X-Forwarded-For hop that is not one (the hops left of it could be made up by anyone)."""
    peer = request.remote or ""
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", ()) for h in v.split(",")]
    found = peer
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        found = address
        if not _trusted(address, trusted):
            break
    return found


def _address(text: str) -> str | None:
    """An X-Forwarded-For hop as an address ("[v6]:port" and "v4:port" forms too)."""
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _tracking(request: web.Request) -> tuple[Hits, str, str]:
    tracking = request.app[TRACKING]
    return tracking.hits, request.match_info["token"], client_ip(request, tracking.trusted_proxies)


async def open_pixel(request: web.Request) -> web.Response:
    hits, token, ip = _tracking(request)
    if request.method == "HEAD":  # a prefetch or a check, never a person opening
        valid = hits.link("o", token) is not None
    else:
        valid = await hits.opened(token, ip, request.headers)
    if not valid:
        return _not_found()
    return web.Response(body=PIXEL, content_type="image/gif", headers=NO_CACHE)


async def click(request: web.Request) -> web.Response:
    hits, token, ip = _tracking(request)
    if request.method == "HEAD":
        link = hits.link("c", token)
        url = link.url if link is not None else None
    else:
        url = await hits.clicked(token, ip, request.headers)
    if not url:
        return _not_found()
    # the Location header itself: web.HTTPFound would re-encode the URL through yarl
    return web.Response(status=302, headers={"Location": _location(url), **NO_CACHE})


async def unsubscribe_page(request: web.Request) -> web.Response:
    """Asks first: scanners and prefetchers follow links, people press buttons."""
    hits, token, ip = _tracking(request)
    link = await hits.unsubscribe(token, ip, request.headers, confirm=False)
    if link is None:
        return _not_found()
    return _page(
        "Unsubscribe",
        f"<p>Stop sending {_what(link)} to <b>{_e(link.recipient)}</b>?</p>"
        '<form method="post"><button type="submit">Unsubscribe</button></form>',
    )


async def unsubscribe(request: web.Request) -> web.Response:
    """The page's button, or a mail client's RFC 8058 one-click POST
    (`List-Unsubscribe=One-Click`), which needs no page."""
    hits, token, ip = _tracking(request)
    form = await request.post()
    link = await hits.unsubscribe(token, ip, request.headers, confirm=True)
    if link is None:
        return _not_found()
    if form.get("List-Unsubscribe") == "One-Click":
        return web.Response(text="Unsubscribed\n", headers=NO_CACHE)
    return _page(
        "Unsubscribed",
        f"<p>You have been unsubscribed: <b>{_e(link.recipient)}</b> will get no more "
        f"{_what(link)}.</p>",
    )


def _what(link: Link) -> str:
    """Which mail the link is about, escaped for the page."""
    scope = link.scope
    if isinstance(scope, str) and scope.startswith(LIST_SCOPE):
        return f"mail from the list <b>{_e(scope[len(LIST_SCOPE) :])}</b>"
    tags = [str(t) for t in scope if t != ALL_TAGS] if isinstance(scope, list) else []
    domain = f"<b>{_e(link.domain)}</b>"
    if tags:
        return f"mail tagged {', '.join(f'<b>{_e(t)}</b>' for t in tags)} from {domain}"
    return f"mail from {domain}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>body{{font-family:sans-serif;max-width:36em;"
        "margin:3em auto;padding:0 1em;line-height:1.5}</style></head>"
        f"<body><h1>{title}</h1>{body}</body></html>"
    )
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8",
        headers=_PAGE_HEADERS,
    )


def _not_found() -> web.Response:
    return _page("Not found", "<p>This link is not valid, or it has expired.</p>", 404)


def _location(url: str) -> str:
    """The URL as a browser follows it from the message: byte for byte (query string,
    escapes, non-ASCII and fragment as written), less what cannot be in a header."""
    url = _DROPPED.sub("", url).strip(_C0_OR_SPACE)
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", url)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/o/{token}", open_pixel),
    ("HEAD", "/o/{token}", open_pixel),
    ("GET", "/c/{token}", click),
    ("HEAD", "/c/{token}", click),
    ("GET", "/u/{token}", unsubscribe_page),
    ("POST", "/u/{token}", unsubscribe),
]
_HANDLERS = frozenset(handler for _, _, handler in ROUTES)
