"""Reading HTTP replies the same way everywhere: Retry-After and a short, safe body excerpt."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx


def retry_after_seconds(value: str | None, default: float, ceiling: float = 300) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), bounded to [0, ceiling]."""
    if not value:
        return default
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return default
    if seconds != seconds:  # NaN
        return default
    return min(max(seconds, 0.0), ceiling)


def body_snippet(response: httpx.Response, limit: int = 160) -> str:
    """The start of a reply body for an error message (HTML pages, error JSON)."""
    text = response.content[:limit].decode("utf-8", errors="replace").replace("\n", " ").strip()
    return repr(text) if text else "(empty body)"
