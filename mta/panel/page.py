"""What every panel page uses: the signed-in session, CSRF-checked forms, rendering, redirects
with a one-time notice, and the panel's own error page.

Templates autoescape everything (subjects, addresses and reply texts are chosen by strangers);
a page never marks request or stored text safe.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from mta.api.context import SERVICES
from mta.panel.sessions import Session
from mta.services import Services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFIX = "/cp"
COOKIE = "mta_cp"
NOTICE_COOKIE = "mta_cp_notice"
SESSION = web.RequestKey("panel_session", Session)
TEMPLATES = web.AppKey("panel_templates", jinja2.Environment)
# the navigation, in order: (label, path under PREFIX)
NAV = (
    ("Domains", "/domains"),
    ("Logs", "/logs"),
    ("Stats", "/stats"),
    ("Routes", "/routes"),
    ("Webhooks", "/webhooks"),
    ("Mailing lists", "/lists"),
    ("Suppressions", "/suppressions"),
    ("Queue", "/queue"),
)


class PanelError(Exception):
    """A refused action or a missing thing: the panel's error page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def session(request: web.Request) -> Session:
    return request[SESSION]


def segment(value: str) -> str:
    """A stored value (an address, a list name) as one path segment of a panel URL."""
    return quote(value, safe="@")


def datetime_text(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def url(path: str, **query: str | int | None) -> str:
    """A panel URL: PREFIX + path, with the query's non-empty values."""
    pairs = [
        f"{quote(k)}={quote(str(v), safe='')}" for k, v in query.items() if v not in (None, "")
    ]
    return PREFIX + path + ("?" + "&".join(pairs) if pairs else "")


async def form(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form, after its CSRF token matched the session's (else 403)."""
    posted = await request.post()
    token = posted.get("csrf")
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), session(request).csrf.encode()
    ):
        raise PanelError(403, "This form has expired or did not come from this panel. Reload "
                              "the page and try again.")
    return posted


def field(posted: MultiDictProxy[Any], name: str, default: str = "") -> str:
    """A text field of a form (a file or a missing field reads as `default`)."""
    value = posted.get(name, default)
    return value.strip() if isinstance(value, str) else default


def checked(posted: MultiDictProxy[Any], name: str) -> bool:
    """A checkbox of a form."""
    return field(posted, name) in ("on", "yes", "true")


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    """A page in the panel's layout; a pending notice from the last redirect is shown once."""
    notice = request.cookies.get(NOTICE_COOKIE, "")
    current = request.get(SESSION)
    html = request.app[TEMPLATES].get_template(template).render(
        nav=NAV,
        prefix=PREFIX,
        path=request.path,
        signed_in=current,
        csrf=current.csrf if current is not None else "",
        notice=notice[:300],
        url=url,
        **values,
    )
    response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
    if notice:
        response.del_cookie(NOTICE_COOKIE, path=PREFIX)
    return response


def redirect(path: str, notice: str = "", **query: str | int | None) -> web.Response:
    """303 to a panel page (after a POST), carrying `notice` to be shown once there."""
    response = web.Response(status=303, headers={"Location": url(path, **query)})
    if notice:
        response.set_cookie(NOTICE_COOKIE, notice[:300], path=PREFIX, max_age=60, httponly=True,
                            samesite="Strict")
    return response
