"""One log line per committed event (issue 14): logfmt or JSON, per `logs.events`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mta.store import CommitObserver


def event_logger(style: str) -> CommitObserver:
    """The commit observer that logs each committed event in `style` ("logfmt" or "json")."""

    def observe(observed: Sequence[Any]) -> None:
        pass

    return observe
