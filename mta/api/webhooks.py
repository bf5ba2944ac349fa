"""Webhooks API (mailgun-api.md §5.6): each domain's webhook URLs, v3 per name and v4 per URL.

Current names answer `{"urls": [...]}`, legacy names `{"url": "..."}` (what each generation of
clients reads). v4's reply shape is not documented anywhere we could find: it answers the
message and the domain's whole set of webhooks, as `GET …/webhooks` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from mta.api.context import path_domain, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import read_form
from mta.webhooks import WebhookError, is_legacy


@contextmanager
def _refusals() -> Iterator[None]:
    try:
        yield
    except WebhookError as exc:
        raise ApiError(exc.status, exc.message) from None


def _shown(name: str, urls: list[str]) -> dict[str, object]:
    return {"url": urls[0]} if is_legacy(name) else {"urls": urls}


async def _all(request: web.Request, domain: str) -> dict[str, object]:
    found = await services(request).webhooks.list(domain)
    return {name: _shown(name, urls) for name, urls in found.items()}


async def list_webhooks(request: web.Request) -> web.Response:
    domain = await path_domain(request, name_in_message=False)
    return json_response({"webhooks": await _all(request, domain.name)})


async def get_webhook(request: web.Request) -> web.Response:
    domain = await path_domain(request, name_in_message=False)
    name = request.match_info["name"]
    with _refusals():
        urls = await services(request).webhooks.get(domain.name, name)
    return json_response({"webhook": _shown(name, urls)})


async def create_webhook(request: web.Request) -> web.Response:
    domain = await path_domain(request, name_in_message=False)
    form = await read_form(request)
    name = form.text("id") or ""
    if not name:
        raise ApiError(400, "id parameter is missing")
    with _refusals():
        urls = await services(request).webhooks.create(domain.name, name, form.texts("url"))
    return json_response({"message": "Webhook has been created", "webhook": _shown(name, urls)})


async def update_webhook(request: web.Request) -> web.Response:
    domain = await path_domain(request, name_in_message=False)
    form = await read_form(request)
    name = request.match_info["name"]
    with _refusals():
        urls = await services(request).webhooks.update(domain.name, name, form.texts("url"))
    return json_response({"message": "Webhook has been updated", "webhook": _shown(name, urls)})


async def delete_webhook(request: web.Request) -> web.Response:
    domain = await path_domain(request, name_in_message=False)
    name = request.match_info["name"]
    with _refusals():
        urls = await services(request).webhooks.delete(domain.name, name)
    return json_response({"message": "Webhook has been deleted", "webhook": _shown(name, urls)})


async def test_webhook(request: web.Request) -> web.Response:
    """Posts a sample event now and tells how the receiver answered."""
    domain = await path_domain(request, name_in_message=False)
    form = await read_form(request)
    with _refusals():
        code, message = await services(request).webhooks.test(
            domain.name, request.match_info["name"], form.text("url")
        )
    return json_response({"code": code, "message": message})


async def _set_url(request: web.Request, *, only: bool, message: str) -> web.Response:
    domain = await path_domain(request, name_in_message=False)
    form = await read_form(request)
    url = form.text("url") or ""
    if not url:
        raise ApiError(400, "url parameter is missing")
    with _refusals():
        await services(request).webhooks.set_url(
            domain.name, url, form.texts("event_types"), only=only
        )
    return json_response({"message": message, "webhooks": await _all(request, domain.name)})


async def create_v4(request: web.Request) -> web.Response:
    """One URL for several names (added to what each name has)."""
    return await _set_url(request, only=False, message="Webhook has been created")


async def update_v4(request: web.Request) -> web.Response:
    """The URL fires on exactly the names given."""
    return await _set_url(request, only=True, message="Webhook has been updated")


_BASE = "/v3/domains/{domain}/webhooks"
ROUTES = [
    ("GET", _BASE, list_webhooks),
    ("POST", _BASE, create_webhook),
    ("GET", _BASE + "/{name}", get_webhook),
    ("PUT", _BASE + "/{name}", update_webhook),
    ("DELETE", _BASE + "/{name}", delete_webhook),
    ("PUT", _BASE + "/{name}/test", test_webhook),
    ("POST", "/v4/domains/{domain}/webhooks", create_v4),
    ("PUT", "/v4/domains/{domain}/webhooks", update_v4),
]
