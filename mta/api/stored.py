"""Stored messages (a route's store() action): GET as parsed JSON or raw MIME, DELETE, and the
attachments, at the `storage.url` of their events (mailgun-api.md §3)."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web

from mta.api.context import path_domain, services
from mta.api.errors import ApiError, json_response
from mta.api.forms import whole_number
from mta.inbound import StoredMessage, attachments_json
from mta.inbound.parsed import parse_message


async def _message(request: web.Request) -> StoredMessage:
    domain = await path_domain(request, "name", name_in_message=False)
    inbound = services(request).inbound
    found = await inbound.stored(domain.name, request.match_info["key"])
    if found is None:
        raise ApiError(404, "Message not found")
    return found


async def get_message(request: web.Request) -> web.Response:
    message = await _message(request)
    envelope = {
        "recipients": message.recipient,
        "recipient": message.recipient,
        "sender": message.sender,
    }
    if "message/rfc2822" in request.headers.get("Accept", ""):
        return json_response(message.raw_fields() | envelope)
    parsed = await asyncio.to_thread(parse_message, message.mime)
    url = services(request).inbound.storage_url(message.domain, message.key)
    fields = dict(parsed.fields)
    fields.pop("attachment-count", None)
    return json_response(
        fields | envelope | {"domain": message.domain,
                             "attachments": attachments_json(url, parsed)}
    )


async def delete_message(request: web.Request) -> web.Response:
    message = await _message(request)
    await services(request).inbound.delete_stored(message.domain, message.key)
    return json_response({"message": "Message has been deleted"})


async def get_attachment(request: web.Request) -> web.Response:
    message = await _message(request)
    parsed = await asyncio.to_thread(parse_message, message.mime)
    raw = request.match_info["number"]
    number = whole_number(raw, len(parsed.attachments) - 1)
    if number is None:
        raise ApiError(404, "Attachment not found")
    attachment = parsed.attachments[number]
    name = attachment.filename or f"attachment-{raw}"
    return web.Response(
        body=attachment.data,
        content_type=attachment.content_type,
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"},
    )


ROUTES = [
    ("GET", "/v3/domains/{name}/messages/{key}", get_message),
    ("DELETE", "/v3/domains/{name}/messages/{key}", delete_message),
    ("GET", "/v3/domains/{name}/messages/{key}/attachments/{number}", get_attachment),
]
