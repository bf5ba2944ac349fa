"""Routes API (mailgun-api.md §6.3): /v3/routes, account-wide (the primary key only).

Lists are paged with skip/limit (scheme A), in evaluation order (priority, then creation).
Expressions and actions are checked when given; a bad one is a 400 naming the problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from mta.api.context import query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import Form, read_form
from mta.dates import rfc2822
from mta.inbound.routes import MAX_PRIORITY, Route, RouteSyntaxError

NOT_FOUND = "Route not found"


def route_json(route: Route) -> dict[str, Any]:
    return {
        "id": route.id,
        "priority": route.priority,
        "description": route.description,
        "expression": route.expression,
        "actions": list(route.actions),
        "created_at": rfc2822(route.created_at),
    }


@contextmanager
def _refusals() -> Iterator[None]:
    try:
        yield
    except RouteSyntaxError as exc:
        raise ApiError(400, str(exc)) from None


def _priority(form: Form) -> int | None:
    raw = form.text("priority")
    if raw is None:
        return None
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"'priority' must be an integer, got {raw!r}") from None
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise ApiError(400, f"'priority' must be an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}")
    return value


def _actions(form: Form) -> list[str] | None:
    if "action" not in form:
        return None
    actions = [a for a in form.texts("action") if a.strip()]
    if not actions:
        raise ApiError(400, "action parameter is missing")
    return actions


async def _path_route(request: web.Request) -> Route:
    route = await services(request).routes.get(request.match_info["id"])
    if route is None:
        raise ApiError(404, NOT_FOUND)
    return route


async def list_routes(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1000)
    skip = query_int(request, "skip", 0, 10**9)
    total, page = await services(request).routes.list(skip, limit)
    return json_response({"total_count": total, "items": [route_json(r) for r in page]})


async def get_route(request: web.Request) -> web.Response:
    return json_response({"route": route_json(await _path_route(request))})


async def create_route(request: web.Request) -> web.Response:
    form = await read_form(request)
    priority = _priority(form)
    expression = form.text("expression")
    if not expression or not expression.strip():
        raise ApiError(400, "expression parameter is missing")
    actions = _actions(form)
    if actions is None:
        raise ApiError(400, "action parameter is missing")
    with _refusals():
        route = await services(request).routes.create(
            0 if priority is None else priority,
            form.text("description", "") or "",
            expression,
            actions,
        )
    return json_response({"message": "Route has been created", "route": route_json(route)})


async def update_route(request: web.Request) -> web.Response:
    current = await _path_route(request)
    form = await read_form(request)
    expression = form.text("expression")
    if expression is not None and not expression.strip():
        raise ApiError(400, "expression must not be empty")
    with _refusals():
        route = await services(request).routes.update(
            current.id,
            priority=_priority(form),
            description=form.text("description"),
            expression=expression,
            actions=_actions(form),
        )
    if route is None:
        raise ApiError(404, NOT_FOUND)
    return json_response({"message": "Route has been updated", **route_json(route)})


async def delete_route(request: web.Request) -> web.Response:
    route = await _path_route(request)
    if not await services(request).routes.delete(route.id):
        raise ApiError(404, NOT_FOUND)
    return json_response({"message": "Route has been deleted", "id": route.id})


async def match_route(request: web.Request) -> web.Response:
    """The first route a message to `address` would run (header filters see no headers)."""
    address = (request.query.get("address") or "").strip()
    if not address:
        raise ApiError(400, "address parameter is missing")
    matches = await services(request).routes.evaluate(address, [])
    if not matches:
        raise ApiError(404, NOT_FOUND)
    return json_response({"route": route_json(matches[0].route)})


ROUTES = [
    ("GET", "/v3/routes", list_routes),
    ("POST", "/v3/routes", create_route),
    ("GET", "/v3/routes/match", match_route),  # before {id}
    ("GET", "/v3/routes/{id}", get_route),
    ("PUT", "/v3/routes/{id}", update_route),
    ("DELETE", "/v3/routes/{id}", delete_route),
]
