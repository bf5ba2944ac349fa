"""The panel's queue page."""

from __future__ import annotations

from mta.panel.page import Handler

ROUTES: list[tuple[str, str, Handler]] = []
