"""The panel's logs page."""

from __future__ import annotations

from mta.panel.page import Handler

ROUTES: list[tuple[str, str, Handler]] = []
