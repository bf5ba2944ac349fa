"""The one HTTP error helper: Mailgun's `{"message": ...}` bodies with the right status."""

from __future__ import annotations

import orjson
from aiohttp import web


def error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"message": message}), content_type="application/json"
    )


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into `error(status, message)`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def forbidden() -> web.Response:
    """Mailgun answers a missing or wrong key with a plain-text 401 `Forbidden`."""
    return web.Response(
        status=401,
        text="Forbidden",
        headers={"WWW-Authenticate": 'Basic realm="MG API"'},
    )


def json_response(data: object, *, pretty: bool = False) -> web.Response:
    option = orjson.OPT_INDENT_2 if pretty else 0
    return web.Response(body=orjson.dumps(data, option=option), content_type="application/json")
