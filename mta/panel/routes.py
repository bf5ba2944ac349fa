"""The panel's Routes page (account-wide): the routes in evaluation order, creating one (checked
as the API checks it, with the API's messages), deleting, and a "test this recipient" box that
runs the real evaluation (mta.inbound.routes) without receiving or sending anything."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mta.inbound.expressions import Action
from mta.inbound.routes import MAX_PRIORITY, RouteMatch, RoutesOutOfTime, RouteSyntaxError
from mta.panel.page import Handler, PanelError, field, form, redirect, render, services

PAGE_SIZE = 100
MAX_SKIP = 10**9


class _Refused(Exception):
    """The form's input is refused: the page again with this message, nothing saved."""


def _skip(request: web.Request) -> int:
    try:
        return min(max(0, int(request.query.get("skip", "0"))), MAX_SKIP)
    except ValueError:
        return 0


def _priority(raw: str) -> int:
    """As the API reads `priority` (blank is 0), with its messages."""
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise _Refused(f"'priority' must be an integer, got {raw!r}") from None
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise _Refused(f"'priority' must be an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}")
    return value


def action_text(action: Action) -> str:
    """What an action would do, in words (the texts are escaped by the template)."""
    if action.kind == "forward":
        return "forward to " + ", ".join(action.destinations)
    if action.kind == "store":
        return "store" + (f", notify {action.notify}" if action.notify else "")
    return action.kind


async def _page(
    request: web.Request, status: int = 200, error: str = "", entered: dict[str, str] | None = None
) -> web.Response:
    """The routes page; `entered` refills the create form after a refusal."""
    skip = _skip(request)
    total, found = await services(request).routes.list(skip, PAGE_SIZE)
    recipient = request.query.get("recipient", "").strip()
    sender = request.query.get("sender", "").strip()
    subject = request.query.get("subject", "").strip()
    matches: list[RouteMatch] | None = None
    test_error = ""
    if recipient:
        headers = [(name, value) for name, value in (("From", sender), ("Subject", subject))
                   if value]
        try:
            matches = await services(request).routes.evaluate(recipient, headers)
        except RoutesOutOfTime:
            test_error = ("Matching ran out of time before any route matched: a message would "
                          "be refused for now and tried again later.")
    values: dict[str, Any] = {
        "priority": "0", "description": "", "expression": "", "actions": "",
    } | (entered or {})
    return render(
        request, "routes.html", status=status, routes=found, total=total, skip=skip,
        page_size=PAGE_SIZE, error=error, entered=values, recipient=recipient, sender=sender,
        subject=subject, matches=matches, test_error=test_error, action_text=action_text,
    )


async def list_routes(request: web.Request) -> web.StreamResponse:
    return await _page(request)


async def create_route(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    entered = {name: field(posted, name)
               for name in ("priority", "description", "expression", "actions")}
    actions = [line.strip() for line in entered["actions"].splitlines() if line.strip()]
    try:
        priority = _priority(entered["priority"])
        if not entered["expression"]:
            raise _Refused("expression parameter is missing")
        if not actions:
            raise _Refused("action parameter is missing")
        route = await services(request).routes.create(
            priority, entered["description"], entered["expression"], actions
        )
    except (_Refused, RouteSyntaxError) as exc:
        return await _page(request, 400, str(exc), entered)
    return redirect("/routes", f"Route {route.id} created.")


async def delete_route(request: web.Request) -> web.StreamResponse:
    await form(request)
    route_id = request.match_info["id"]
    if not await services(request).routes.delete(route_id):
        raise PanelError(404, "Route not found")
    return redirect("/routes", f"Route {route_id} deleted.")


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/routes", list_routes),
    ("POST", "/routes", create_route),
    ("POST", "/routes/{id}/delete", delete_route),
]
