"""SMTP credentials API (mailgun-api.md §13): the logins and passwords SMTP AUTH checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from mta.api.context import path_domain, query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import read_form
from mta.credentials import CredentialError
from mta.dates import rfc2822


@contextmanager
def _refusals() -> Iterator[None]:
    """The credentials store's refusals carry their own status and client-facing text."""
    try:
        yield
    except CredentialError as exc:
        raise ApiError(exc.status, str(exc)) from None


def _required(value: str | None, name: str) -> str:
    if not value:
        raise ApiError(400, f"{name} parameter is missing")
    return value


async def list_credentials(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    limit = query_int(request, "limit", 100, 1000)
    skip = query_int(request, "skip", 0, 10**9)
    found = await services(request).credentials.list(domain.name)
    items = [
        {
            "login": c.login,
            "mailbox": c.login,
            "size_bytes": 0,
            "created_at": rfc2822(c.created_at),
        }
        for c in found[skip : skip + limit]
    ]
    return json_response({"total_count": len(found), "items": items})


async def create_credential(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    form = await read_form(request)
    login = _required(form.text("login"), "login")
    password = _required(form.text("password"), "password")
    with _refusals():
        await services(request).credentials.create(domain.name, login, password)
    return json_response({"message": "Created 1 credentials pair(s)"})


async def change_password(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    form = await read_form(request)
    password = _required(form.text("password"), "password")
    with _refusals():
        await services(request).credentials.set_password(
            domain.name, request.match_info["login"], password
        )
    return json_response({"message": "Password changed"})


async def delete_credential(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    with _refusals():
        login = await services(request).credentials.delete(domain.name, request.match_info["login"])
    return json_response({"message": "Credentials have been deleted", "spec": login})


async def delete_all_credentials(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    count = await services(request).credentials.delete_all(domain.name)
    return json_response({"message": "All domain credentials have been deleted", "count": count})


ROUTES = [
    route
    for version in ("v3", "v4")
    for route in (
        ("GET", f"/{version}/domains/{{name}}/credentials", list_credentials),
        ("POST", f"/{version}/domains/{{name}}/credentials", create_credential),
        ("DELETE", f"/{version}/domains/{{name}}/credentials", delete_all_credentials),
        ("PUT", f"/{version}/domains/{{name}}/credentials/{{login}}", change_password),
        ("DELETE", f"/{version}/domains/{{name}}/credentials/{{login}}", delete_credential),
    )
]
# the newer user manual changes a password here (no `domains/`); route it too (§16 #22)
ROUTES.append(("PUT", "/v3/{name}/credentials/{login}", change_password))
