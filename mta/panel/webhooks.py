"""The panel's Webhooks page: one domain's URLs per event name, setting, replacing and removing
them (mta.webhooks checks them as for the API), and sending a test: the webhooks runner's own
test post (signed with the account key, bounded by its timeout and its address policy,
`webhooks.allow` / `webhooks.deny`), whose answer is shown."""

from __future__ import annotations

from aiohttp import web

from mta import webpost
from mta.domains import Domain
from mta.panel.page import Handler, PanelError, field, form, redirect, render, services
from mta.webhooks import CURRENT_NAMES, LEGACY_NAMES, WebhookError, is_legacy


async def _domain(request: web.Request, name: str) -> Domain:
    domain = await services(request).domains.get(name)
    if domain is None:
        raise PanelError(404, f"Domain not found: {name}")
    return domain


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in CURRENT_NAMES and name not in LEGACY_NAMES:
        raise PanelError(404, "There is no such webhook.")
    return name


async def show_webhooks(request: web.Request) -> web.StreamResponse:
    """The chosen domain's webhooks (the first domain when none is chosen)."""
    domains = await services(request).domains.all()
    chosen = request.query.get("domain", "").strip()
    if not domains:
        return render(request, "webhooks.html", domains=[], domain=None, hooks=[])
    domain = await _domain(request, chosen) if chosen else domains[0]
    found = await services(request).webhooks.list(domain.name)
    hooks = [(name, found.get(name, []), is_legacy(name)) for name in (*CURRENT_NAMES,
                                                                      *LEGACY_NAMES)]
    return render(request, "webhooks.html", domains=domains, domain=domain, hooks=hooks)


async def set_urls(request: web.Request) -> web.StreamResponse:
    """The name's URLs become the lines given (created when it had none)."""
    posted = await form(request)
    domain = await _domain(request, request.match_info["domain"])
    name = _name(request)
    urls = field(posted, "urls").splitlines()
    hooks = services(request).webhooks
    try:
        if name in await hooks.list(domain.name):
            await hooks.update(domain.name, name, urls)
        else:
            await hooks.create(domain.name, name, urls)
    except WebhookError as exc:
        raise PanelError(exc.status, exc.message) from None
    return redirect("/webhooks", f"Webhook {name} saved.", domain=domain.name)


async def remove(request: web.Request) -> web.StreamResponse:
    await form(request)
    domain = await _domain(request, request.match_info["domain"])
    name = _name(request)
    try:
        await services(request).webhooks.delete(domain.name, name)
    except WebhookError as exc:
        raise PanelError(exc.status, exc.message) from None
    return redirect("/webhooks", f"Webhook {name} removed.", domain=domain.name)


async def send_test(request: web.Request) -> web.StreamResponse:
    """Post a signed sample event to one of the name's URLs now; the answer in the notice."""
    posted = await form(request)
    domain = await _domain(request, request.match_info["domain"])
    name = _name(request)
    url = field(posted, "url")
    try:
        if url not in await services(request).webhooks.get(domain.name, name):
            raise PanelError(400, "That URL is not one of this webhook's URLs.")
        code, message = await services(request).webhooks.test(domain.name, name, url)
    except WebhookError as exc:
        raise PanelError(exc.status, exc.message) from None
    answer = message if code == 0 or message.startswith("HTTP ") else f"{message} (HTTP {code})"
    return redirect("/webhooks", f"Test {name} post to {webpost.redact(url)}: {answer}",
                    domain=domain.name)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/webhooks", show_webhooks),
    ("POST", "/webhooks/{domain}/{name}", set_urls),
    ("POST", "/webhooks/{domain}/{name}/delete", remove),
    ("POST", "/webhooks/{domain}/{name}/test", send_test),
]
