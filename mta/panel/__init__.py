"""The web control panel at /cp/ (issue 14): server-rendered pages on the API listener, signed
in with its own session (the API's key check does not apply to it).

Each page module owns its routes (`ROUTES`, paths under PREFIX) and templates; this module signs
people in and out, wraps every page with the session check, the panel's security headers and
its error page, and serves the two static files (no build step, nothing fetched elsewhere).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import ipaddress
import logging
import secrets

import jinja2
from aiohttp import web

from mta.api.context import SERVICES
from mta.api.tracking import client_ip
from mta.panel import domains, lists, logs, queue, routes, stats, suppressions, webhooks
from mta.panel.page import (
    COOKIE,
    PREFIX,
    SESSION,
    TEMPLATES,
    Handler,
    PanelError,
    datetime_text,
    field,
    form,
    redirect,
    render,
    segment,
    session,
)
from mta.panel.sessions import Sessions

log = logging.getLogger("mta.panel")

SESSIONS = web.AppKey("panel_sessions", Sessions)
PROXIES = web.AppKey("panel_proxies", tuple)  # whose X-Forwarded-For names the client
PRE_COOKIE = "mta_cp_pre"  # the sign-in form's CSRF token, before there is a session
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC = {"panel.css": "text/css", "panel.js": "text/javascript"}


def _secure_cookie(request: web.Request) -> bool:
    """Served over https, directly or behind a TLS proxy. A forged X-Forwarded-Proto only
    makes the forger's own cookie Secure."""
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    public_url = request.app[SERVICES].config.api.public_url
    return request.secure or proto == "https" or public_url.startswith("https://")


def _with_headers(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _guarded(handler: Handler, *, public: bool = False) -> Handler:
    """The page with the session check (unless public), the panel's headers and error page."""

    async def page(request: web.Request) -> web.StreamResponse:
        try:
            if not public:
                found = await request.app[SESSIONS].find(request.cookies.get(COOKIE, ""))
                if found is None:
                    if request.method == "GET":
                        return _with_headers(redirect("/sign-in", next=request.path_qs))
                    raise PanelError(403, "You are not signed in (or your session ended).")
                request[SESSION] = found
            response = await handler(request)
        except PanelError as exc:
            response = render(request, "error.html", status=exc.status, message=exc.message)
        return _with_headers(response)

    return page


def _safe_next(target: str) -> str:
    """Only a path inside the panel: a sign-in must not redirect anywhere else."""
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target[len(PREFIX):]
    return "/domains"


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    return _sign_in_form(request, 200, "")


def _sign_in_form(request: web.Request, status: int, message: str) -> web.Response:
    pre = secrets.token_urlsafe(24)
    response = render(request, "sign_in.html", status=status, message=message, pre=pre,
                      next=request.query.get("next", ""))
    response.set_cookie(PRE_COOKIE, pre, path=PREFIX, httponly=True, samesite="Strict",
                        secure=_secure_cookie(request), max_age=3600)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    """A primary API key or the admin password. Failures per address are throttled."""
    sessions = request.app[SESSIONS]
    posted = await request.post()
    address = client_ip(request, request.app[PROXIES])
    pre = request.cookies.get(PRE_COOKIE, "")
    token = field(posted, "csrf")
    if not pre or not hmac.compare_digest(
        hashlib.sha256(pre.encode()).digest(), hashlib.sha256(token.encode()).digest()
    ):
        raise PanelError(403, "This form has expired. Reload the page and try again.")
    if sessions.throttle.held(address):
        log.warning("panel sign-in from %s refused: too many failures", address)
        return _sign_in_form(request, 429, "Too many failed sign-ins from your address. "
                                           "Wait a minute and try again.")
    found = await sessions.sign_in(field(posted, "secret"))
    if found is None:
        sessions.throttle.failed(address)
        log.info("panel sign-in from %s failed", address)
        return _sign_in_form(request, 401, "Wrong API key or password. Sending keys of a "
                                           "domain cannot sign in.")
    log.info("panel sign-in from %s as %s", address, found.who)
    response = redirect(_safe_next(field(posted, "next")))
    response.set_cookie(COOKIE, found.token, path=PREFIX, httponly=True, samesite="Strict",
                        secure=_secure_cookie(request))
    response.del_cookie(PRE_COOKIE, path=PREFIX)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await form(request)
    await request.app[SESSIONS].end(session(request).token)
    response = redirect("/sign-in", "Signed out.")
    response.del_cookie(COOKIE, path=PREFIX)
    return response


async def home(request: web.Request) -> web.StreamResponse:
    return redirect("/domains")


async def not_found(request: web.Request) -> web.StreamResponse:
    raise PanelError(404, "There is no such page.")


def _static_handler(name: str, content_type: str) -> Handler:
    body = importlib.resources.files("mta.panel").joinpath("static", name).read_bytes()
    etag = hashlib.sha256(body).hexdigest()[:16]

    async def static(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type, charset="utf-8",
                            headers={"ETag": etag, "Cache-Control": "public, max-age=3600"})

    return static


def mount(app: web.Application) -> None:
    """Add the panel's routes to the API's application."""
    svc = app[SERVICES]
    app[SESSIONS] = Sessions(svc.store, svc.keys, svc.credentials.checks, svc.config.panel)
    app[PROXIES] = tuple(
        ipaddress.ip_network(str(c), strict=False) for c in svc.config.tracking.trusted_proxies
    )
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.PackageLoader("mta.panel", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    app[TEMPLATES].filters["datetime"] = datetime_text
    app[TEMPLATES].filters["segment"] = segment
    router = app.router
    router.add_get(PREFIX, _guarded(home, public=True))
    router.add_get(PREFIX + "/", _guarded(home, public=True))
    router.add_get(PREFIX + "/sign-in", _guarded(sign_in_page, public=True))
    router.add_post(PREFIX + "/sign-in", _guarded(sign_in, public=True))
    router.add_post(PREFIX + "/sign-out", _guarded(sign_out))
    for name, content_type in STATIC.items():
        router.add_get(f"{PREFIX}/static/{name}", _static_handler(name, content_type))
    for module in (domains, logs, stats, routes, webhooks, lists, suppressions, queue):
        for method, path, handler in module.ROUTES:
            router.add_route(method, PREFIX + path, _guarded(handler))
    router.add_route("*", PREFIX + "/{tail:.*}", _guarded(not_found, public=True))
