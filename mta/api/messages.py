"""POST /v3/<domain>/messages and /messages.mime: form fields -> Submission -> accept."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from mta.accept import AcceptError, Options, Submission
from mta.accept.mime import Attachment, Parts, guess_type
from mta.api.context import api_key, path_domain, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import Form, parse_bool, read_form
from mta.dates import parse_date

log = logging.getLogger("mta.api.messages")

QUEUED = "Queued. Thank you."


def _recipient_variables(form: Form) -> dict[str, Any] | None:
    raw = form.text("recipient-variables")
    if raw is None:
        return None
    try:
        value = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise ApiError(400, "'recipient-variables' parameter is not a valid JSON") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ApiError(400, "'recipient-variables' parameter is not a valid JSON")
    return value


def _options(form: Form) -> Options:
    opts = Options()
    opts.tags = form.texts("o:tag")
    opts.campaigns = [c for c in form.texts("o:campaign") if c.strip()]
    when = form.text("o:deliverytime")
    if when is not None and when.strip():
        opts.deliver_at = parse_date(when)
        if opts.deliver_at is None:
            raise ApiError(400, f"{when} is not an RFC-2822 compliant date")
    opts.dkim = _flag(form, "o:dkim")
    opts.test_mode = _flag(form, "o:testmode")
    opts.tracking = _flag(form, "o:tracking")
    opts.tracking_clicks = parse_bool(
        "o:tracking-clicks", form.text("o:tracking-clicks"), extra=("htmlonly",)
    )
    opts.tracking_opens = _flag(form, "o:tracking-opens")
    opts.tracking_pixel_top = _flag(form, "o:tracking-pixel-location-top")
    opts.require_tls = _flag(form, "o:require-tls")
    opts.skip_verification = _flag(form, "o:skip-verification")
    return opts


def _flag(form: Form, name: str) -> bool | None:
    value = parse_bool(name, form.text(name))
    return None if value is None else bool(value)


def _submission(request: web.Request, form: Form, domain: str) -> Submission:
    key = api_key(request)
    headers = [
        (name[2:], value)
        for name, value in form.items()
        if name.startswith("h:") and isinstance(value, str)
    ]
    user_variables: dict[str, Any] = {}
    for name, value in headers:
        if name.lower() == "x-mailgun-variables":
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ApiError(400, "'h:X-Mailgun-Variables' is not a valid JSON object") from None
            if not isinstance(parsed, dict):
                raise ApiError(400, "'h:X-Mailgun-Variables' is not a valid JSON object")
            user_variables.update(parsed)
    headers = [(n, v) for n, v in headers if n.lower() != "x-mailgun-variables"]
    for name, value in form.items():
        if name.startswith("v:") and isinstance(value, str):
            user_variables[name[2:]] = value
    return Submission(
        domain=domain,
        method="http",
        from_=form.texts("from"),
        to=form.texts("to"),
        cc=form.texts("cc"),
        bcc=form.texts("bcc"),
        headers=headers,
        user_variables=user_variables,
        recipient_variables=_recipient_variables(form),
        options=_options(form),
        originating_ip=request.remote,
        # a domain sending key speaks for its domain only, like an SMTP login
        principal=None if key.domain is None else f"sending key {key.id}",
    )


async def _accept(request: web.Request, submission: Submission) -> web.Response:
    try:
        message_id = await services(request).acceptor.accept(submission)
    except AcceptError as exc:
        raise ApiError(exc.status, exc.message) from None
    return json_response({"id": f"<{message_id}>", "message": QUEUED})


async def send_message(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    async with services(request).accepting.hold(request.content_length or 0):
        return await _send_message(request, domain.name)


async def _send_message(request: web.Request, domain: str) -> web.Response:
    form = await read_form(request)
    if form.text("template"):
        raise ApiError(400, "stored templates are not supported by this server yet")
    submission = _submission(request, form, domain)
    submission.parts = Parts(
        subject=form.text("subject", "") or "",
        text=form.text("text"),
        html=form.text("html"),
        amp_html=form.text("amp-html"),
        attachments=tuple(
            Attachment(u.filename, guess_type(u.filename, u.content_type), u.data, inline)
            for field, inline in (("attachment", False), ("inline", True))
            for u in form.uploads(field)
        ),
    )
    del form  # the submission holds what is needed (the accept path lets go of it)
    return await _accept(request, submission)


async def send_mime(request: web.Request) -> web.Response:
    domain = await path_domain(request)
    async with services(request).accepting.hold(request.content_length or 0):
        return await _send_mime(request, domain.name)


async def _send_mime(request: web.Request, domain: str) -> web.Response:
    form = await read_form(request)
    uploads = form.uploads("message")
    if not uploads:
        raise ApiError(400, "message parameter is missing")
    submission = _submission(request, form, domain)
    submission.from_ = []
    submission.mime = uploads[-1].data
    del form, uploads  # the submission holds what is needed (the accept path lets go of it)
    return await _accept(request, submission)


ROUTES = [
    ("POST", "/v3/{domain}/messages", send_message),
    ("POST", "/v3/{domain}/messages.mime", send_mime),
]
