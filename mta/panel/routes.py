"""The panel's routes page."""

from __future__ import annotations

from mta.panel.page import Handler

ROUTES: list[tuple[str, str, Handler]] = []
