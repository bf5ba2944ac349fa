"""Domains API, served under both /v3 and /v4 (clients use either)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mta.api.context import path_domain, query_int, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import parse_bool, read_form
from mta.credentials import CredentialError, check_password_length
from mta.dates import rfc2822
from mta.domains import DnsRecord, Domain, DomainError

_SPAM_ALIASES = {"delete": "block", "mark": "tag"}


def domain_json(domain: Domain) -> dict[str, Any]:
    return {
        "id": domain.id,
        "name": domain.name,
        "created_at": rfc2822(domain.created_at),
        "state": domain.state,
        "type": domain.type,
        "is_disabled": domain.is_disabled,
        "spam_action": domain.spam_action,
        "wildcard": domain.wildcard,
        "require_tls": domain.require_tls,
        "skip_verification": domain.skip_verification,
        "smtp_login": f"postmaster@{domain.name}",
        "web_prefix": domain.web_prefix,
        "web_scheme": domain.web_scheme,
    }


def record_json(domain: Domain, record: DnsRecord) -> dict[str, Any]:
    found = domain.dns_results.get(record.key, {})
    out: dict[str, Any] = {
        "record_type": record.record_type,
        "name": record.name,
        "value": record.value,
        "valid": found.get("valid", "unknown"),
        "cached": found.get("cached", []),
        "is_active": True,
    }
    if record.priority is not None:
        out["priority"] = record.priority
    return out


def _full(request: web.Request, domain: Domain, **extra: Any) -> dict[str, Any]:
    domains = services(request).domains
    return extra | {
        "domain": domain_json(domain),
        "receiving_dns_records": [
            record_json(domain, r) for r in domains.receiving_records(domain)
        ],
        "sending_dns_records": [record_json(domain, r) for r in domains.sending_records(domain)],
    }


async def list_domains(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1000)
    skip = query_int(request, "skip", 0, 10**9)
    state = request.query.get("state")
    domains = await services(request).domains.all()
    if state:
        domains = [d for d in domains if d.state == state]
    return json_response(
        {
            "total_count": len(domains),
            "items": [domain_json(d) for d in domains[skip : skip + limit]],
        }
    )


async def create_domain(request: web.Request) -> web.Response:
    form = await read_form(request)
    name = form.text("name")
    if not name:
        raise ApiError(400, "name parameter is missing")
    spam_action = (form.text("spam_action") or "disabled").strip().lower()
    key_size = form.text("dkim_key_size")
    if key_size is not None and key_size.strip() not in ("1024", "2048"):
        raise ApiError(400, "dkim_key_size must be 1024 or 2048")
    smtp_password = form.text("smtp_password")
    try:
        if smtp_password is not None:
            check_password_length(smtp_password)  # before the domain exists: no half-created domain
        domain = await services(request).domains.create(
            name,
            spam_action=_SPAM_ALIASES.get(spam_action, spam_action),
            wildcard=bool(parse_bool("wildcard", form.text("wildcard"))),
            dkim_key_bits=int(key_size) if key_size else None,
            dkim_selector=form.text("dkim_selector") or None,
            web_scheme=(form.text("web_scheme") or "http").lower(),
            web_prefix=form.text("web_prefix") or "email",
        )
        if smtp_password is not None:
            await services(request).credentials.create(
                domain.name, f"postmaster@{domain.name}", smtp_password
            )
    except (DomainError, CredentialError) as exc:
        raise ApiError(400, str(exc)) from None
    return json_response(_full(request, domain, message="Domain has been created"))


async def get_domain(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    return json_response(_full(request, domain))


async def delete_domain(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    await services(request).delete_domain(domain.name)
    return json_response({"message": "Domain has been deleted"})


async def verify_domain(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    updated = await services(request).domains.verify(domain.name)
    return json_response(_full(request, updated, message="Domain DNS records have been updated"))


async def get_connection(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    return json_response(
        {
            "connection": {
                "require_tls": domain.require_tls,
                "skip_verification": domain.skip_verification,
            }
        }
    )


async def update_connection(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    form = await read_form(request)
    try:
        updated = await services(request).domains.set_connection(
            domain.name,
            require_tls=parse_bool("require_tls", form.text("require_tls")),
            skip_verification=parse_bool("skip_verification", form.text("skip_verification")),
        )
    except DomainError as exc:
        raise ApiError(404, str(exc)) from None
    return json_response(
        {
            "message": "Domain connection settings have been updated, may take 10 minutes to"
            " fully propagate",
            "require-tls": updated.require_tls,
            "skip-verification": updated.skip_verification,
        }
    )


async def update_domain(request: web.Request) -> web.Response:
    """PUT /v3|v4/domains/<d>: spam_action, wildcard, web_scheme, web_prefix."""
    domain = await path_domain(request, "name", name_in_message=False)
    form = await read_form(request)
    spam_action = form.text("spam_action")
    if spam_action is not None:
        spam_action = spam_action.strip().lower()
        spam_action = _SPAM_ALIASES.get(spam_action, spam_action)
    web_scheme = form.text("web_scheme")
    wildcard = parse_bool("wildcard", form.text("wildcard"))
    try:
        updated = await services(request).domains.update(
            domain.name,
            spam_action=spam_action,
            wildcard=None if wildcard is None else bool(wildcard),
            web_scheme=web_scheme.strip().lower() if web_scheme is not None else None,
            web_prefix=form.text("web_prefix") or request.query.get("web_prefix"),
        )
    except DomainError as exc:
        raise ApiError(400, str(exc)) from None
    return json_response(_full(request, updated, message="Domain has been updated"))


async def update_web_prefix(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    form = await read_form(request)
    prefix = form.text("web_prefix") or request.query.get("web_prefix")
    if not prefix:
        raise ApiError(400, "web_prefix is required")
    try:
        await services(request).domains.update(domain.name, web_prefix=prefix)
    except DomainError as exc:
        raise ApiError(400, str(exc)) from None
    return json_response({"message": "Domain web prefix updated"})


_TRACKING_UPDATED = "Domain tracking settings have been updated"


async def get_tracking(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    return json_response({"tracking": domain.tracking.render()})


async def update_open_tracking(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    form = await read_form(request)
    active = parse_bool("active", form.text("active"))
    top = parse_bool("place_at_the_top", form.text("place_at_the_top"))
    updated = await services(request).domains.set_tracking(
        domain.name,
        opens=None if active is None else bool(active),
        opens_at_top=None if top is None else bool(top),
    )
    return json_response(
        {"message": _TRACKING_UPDATED, "open": {"active": updated.tracking.opens}}
    )


async def update_click_tracking(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    form = await read_form(request)
    active = parse_bool("active", form.text("active"), extra=("htmlonly",))
    updated = await services(request).domains.set_tracking(domain.name, clicks=active)
    return json_response(
        {"message": _TRACKING_UPDATED, "click": {"active": updated.tracking.clicks}}
    )


async def update_unsubscribe_tracking(request: web.Request) -> web.Response:
    domain = await path_domain(request, "name", name_in_message=False)
    form = await read_form(request)
    active = parse_bool("active", form.text("active"))
    try:
        updated = await services(request).domains.set_tracking(
            domain.name,
            unsubscribes=None if active is None else bool(active),
            html_footer=form.text("html_footer"),
            text_footer=form.text("text_footer"),
        )
    except DomainError as exc:
        raise ApiError(400, str(exc)) from None
    settings = updated.tracking
    return json_response(
        {
            "message": _TRACKING_UPDATED,
            "unsubscribe": {
                "active": settings.unsubscribes,
                "html_footer": settings.html_footer,
                "text_footer": settings.text_footer,
            },
        }
    )


ROUTES = [
    route
    for version in ("v3", "v4")
    for route in (
        ("GET", f"/{version}/domains", list_domains),
        ("POST", f"/{version}/domains", create_domain),
        ("GET", f"/{version}/domains/{{name}}", get_domain),
        ("DELETE", f"/{version}/domains/{{name}}", delete_domain),
        ("PUT", f"/{version}/domains/{{name}}/verify", verify_domain),
        ("GET", f"/{version}/domains/{{name}}/connection", get_connection),
        ("PUT", f"/{version}/domains/{{name}}/connection", update_connection),
        ("PUT", f"/{version}/domains/{{name}}", update_domain),
        ("PUT", f"/{version}/domains/{{name}}/web_prefix", update_web_prefix),
        ("GET", f"/{version}/domains/{{name}}/tracking", get_tracking),
        ("PUT", f"/{version}/domains/{{name}}/tracking/open", update_open_tracking),
        ("PUT", f"/{version}/domains/{{name}}/tracking/click", update_click_tracking),
        ("PUT", f"/{version}/domains/{{name}}/tracking/unsubscribe", update_unsubscribe_tracking),
    )
]
