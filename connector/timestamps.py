"""Timestamps as ERPs write them (ISO 8601, epoch seconds or ms, strftime patterns) <-> aware UTC."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo


class TimestampError(ValueError):
    """A value that is not a timestamp in the configured format."""


def parse_timestamp(value: Any, fmt: str = "iso8601", zone: str = "UTC") -> datetime:
    """Read an ERP timestamp as an aware UTC datetime; naive values are taken in `zone`."""
    if value is None or value == "" or isinstance(value, bool):
        raise TimestampError(f"{value!r} is not a timestamp")
    if fmt in ("epoch_s", "epoch_ms"):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise TimestampError(f"{value!r} is not an epoch timestamp") from None
        if not number.is_finite():
            raise TimestampError(f"{value!r} is not an epoch timestamp")
        seconds = number / 1000 if fmt == "epoch_ms" else number
        try:
            return datetime.fromtimestamp(float(seconds), timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise TimestampError(f"{value!r} is out of range") from None
    if not isinstance(value, str):
        raise TimestampError(f"{value!r} is not a timestamp")
    text = value.strip()
    try:
        if fmt == "iso8601":
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        else:
            moment = datetime.strptime(text, fmt)
    except ValueError:
        raise TimestampError(f"{value!r} is not a timestamp in the format {fmt}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment.astimezone(timezone.utc)


def format_timestamp(moment: datetime, fmt: str = "iso8601", zone: str = "UTC") -> str:
    """Write an instant the way the ERP's modified-since parameter expects it."""
    local = moment.astimezone(ZoneInfo(zone))
    if fmt == "iso8601":
        return local.isoformat(timespec="microseconds")
    if fmt == "epoch_s":
        return str(int(moment.timestamp()))  # floor: asking from a second earlier never misses
    if fmt == "epoch_ms":
        return str(int(moment.timestamp() * 1000))
    return local.strftime(fmt)
