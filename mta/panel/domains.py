"""The panel's Domains pages: the list, adding one (with the DNS records to publish), verifying,
tracking and connection settings, SMTP credentials, deleting. Each action calls the same
domain and credential functions as the API."""

from __future__ import annotations

from aiohttp import web

from mta.credentials import CredentialError
from mta.domains import Domain, DomainError
from mta.panel.page import Handler, PanelError, checked, field, form, redirect, render, services


async def _domain(request: web.Request) -> Domain:
    domain = await services(request).domains.get(request.match_info["name"])
    if domain is None:
        raise PanelError(404, f"Domain not found: {request.match_info['name']}")
    return domain


async def list_domains(request: web.Request) -> web.StreamResponse:
    return render(request, "domains.html", domains=await services(request).domains.all())


async def add_domain(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    bits = field(posted, "dkim_key_size", "2048")
    try:
        domain = await services(request).domains.create(
            field(posted, "name"),
            sandbox=checked(posted, "sandbox"),
            dkim_key_bits=int(bits) if bits in ("1024", "2048") else 0,
        )
    except DomainError as exc:
        raise PanelError(400, str(exc)) from None
    return redirect(f"/domains/{domain.name}",
                    f"Added {domain.name}. Publish the DNS records below, then verify.")


async def show_domain(request: web.Request) -> web.StreamResponse:
    domain = await _domain(request)
    svc = services(request)
    records = [
        (record, domain.dns_results.get(record.key, {}).get("valid", "unknown"))
        for record in svc.domains.sending_records(domain) + svc.domains.receiving_records(domain)
    ]
    return render(
        request, "domain.html", domain=domain, records=records,
        credentials=await svc.credentials.list(domain.name),
    )


async def verify_domain(request: web.Request) -> web.StreamResponse:
    await form(request)
    domain = await services(request).domains.verify((await _domain(request)).name)
    verdict = "verified" if domain.state == "active" else "not verified yet"
    return redirect(f"/domains/{domain.name}", f"DNS records checked: {verdict}.")


async def set_tracking(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    domain = await _domain(request)
    clicks = field(posted, "clicks")
    try:
        await services(request).domains.set_tracking(
            domain.name,
            opens=checked(posted, "opens"),
            opens_at_top=checked(posted, "opens_at_top"),
            clicks="htmlonly" if clicks == "htmlonly" else clicks == "yes",
            unsubscribes=checked(posted, "unsubscribes"),
            html_footer=field(posted, "html_footer"),
            text_footer=field(posted, "text_footer"),
        )
    except DomainError as exc:
        raise PanelError(400, str(exc)) from None
    return redirect(f"/domains/{domain.name}", "Tracking settings saved.")


async def set_connection(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    domain = await _domain(request)
    await services(request).domains.set_connection(
        domain.name,
        require_tls=checked(posted, "require_tls"),
        skip_verification=checked(posted, "skip_verification"),
    )
    return redirect(f"/domains/{domain.name}", "Connection settings saved.")


async def add_credential(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    domain = await _domain(request)
    try:
        credential = await services(request).credentials.create(
            domain.name, field(posted, "login"), field(posted, "password")
        )
    except CredentialError as exc:
        raise PanelError(exc.status, str(exc)) from None
    return redirect(f"/domains/{domain.name}", f"SMTP login {credential.login} created.")


async def change_password(request: web.Request) -> web.StreamResponse:
    posted = await form(request)
    domain = await _domain(request)
    login = request.match_info["login"]
    try:
        await services(request).credentials.set_password(
            domain.name, login, field(posted, "password")
        )
    except CredentialError as exc:
        raise PanelError(exc.status, str(exc)) from None
    return redirect(f"/domains/{domain.name}", f"Password of {login} changed.")


async def delete_credential(request: web.Request) -> web.StreamResponse:
    await form(request)
    domain = await _domain(request)
    try:
        login = await services(request).credentials.delete(domain.name,
                                                           request.match_info["login"])
    except CredentialError as exc:
        raise PanelError(exc.status, str(exc)) from None
    return redirect(f"/domains/{domain.name}", f"SMTP login {login} deleted.")


async def delete_domain(request: web.Request) -> web.StreamResponse:
    await form(request)
    domain = await _domain(request)
    await services(request).delete_domain(domain.name)
    return redirect("/domains", f"Deleted {domain.name}.")


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/domains", list_domains),
    ("POST", "/domains", add_domain),
    ("GET", "/domains/{name}", show_domain),
    ("POST", "/domains/{name}/verify", verify_domain),
    ("POST", "/domains/{name}/tracking", set_tracking),
    ("POST", "/domains/{name}/connection", set_connection),
    ("POST", "/domains/{name}/credentials", add_credential),
    ("POST", "/domains/{name}/credentials/{login}/password", change_password),
    ("POST", "/domains/{name}/credentials/{login}/delete", delete_credential),
    ("POST", "/domains/{name}/delete", delete_domain),
]
