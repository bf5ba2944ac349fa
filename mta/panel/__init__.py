"""The web control panel at /cp/ (issue 14): server-rendered pages on the API listener, signed
in with its own session (the API's key check does not apply to it)."""

from __future__ import annotations

from aiohttp import web

PREFIX = "/cp"


def mount(app: web.Application) -> None:
    """Add the panel's routes to the API's application."""
