"""The tags API (mailgun-api.md)."""

from __future__ import annotations

from typing import Any

ROUTES: list[tuple[str, str, Any]] = []
