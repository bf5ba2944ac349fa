"""Dates as Mailgun's API takes them (RFC 2822 or epoch seconds) and gives them back."""

from __future__ import annotations

import email.utils
import math
import time
from datetime import UTC


def parse_date(value: str) -> float | None:
    """Epoch seconds for an RFC 2822 date (any zone form) or an epoch number; None if neither."""
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number if math.isfinite(number) and number >= 0 else None
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # "-0000" and unknown zones: UTC, as RFC 2822 says
        return parsed.replace(tzinfo=UTC).timestamp()
    return parsed.timestamp()


def rfc2822(ts: float | None = None) -> str:
    """'Wed, 15 Feb 2012 13:03:31 GMT' (objects in API responses)."""
    return email.utils.formatdate(time.time() if ts is None else ts, usegmt=True)


def message_date(ts: float) -> str:
    """A Date: header value."""
    return email.utils.formatdate(ts, localtime=False)
