"""The `erpsync status` tables, rendered with rich from what the state database says."""

from __future__ import annotations

from datetime import datetime

from rich.console import Group
from rich.table import Table
from rich.text import Text

from connector.config import Config
from connector.durations import format_duration
from state import status
from state.db import utc_now


def _age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    return "<1s ago" if seconds < 1 else f"{format_duration(round(seconds))} ago"


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    return moment.strftime("%H:%M:%S" if moment.date() == now.date() else "%Y-%m-%d %H:%M")


def status_tables(db, config: Config) -> Group:
    """Per-domain and per-channel tables for one look at the daemon."""
    now = utc_now()
    domains = Table(title="domains", title_justify="left", expand=False, caption_justify="left",
                    caption="seen, changed: the last poll; 1h: changes in the last hour; "
                            "quar.: records in quarantine; records: records known")
    for column in ("domain", "last poll", "result", "watermark", "lag", "seen", "changed", "1h", "quar.", "records"):
        domains.add_column(column, justify="right" if column not in ("domain", "result") else "left")
    for row, (name, cfg) in zip(status.domain_statuses(db, [d for d, _ in config.domains.items()]), config.domains.items()):
        lag = (now - row.watermark).total_seconds() if row.watermark else None
        stale = lag is None or lag > 3 * cfg.interval.total_seconds() + cfg.lookback.total_seconds()
        if row.polling_now:
            result = Text("polling", style="cyan")
        elif row.last_status == "ok":
            result = Text("ok" + (f" ({row.last_reason})" if row.last_reason else ""), style="green" if not row.last_reason else "yellow")
        elif row.last_status:
            result = Text(f"{row.last_status}: {row.last_reason}", style="red")
        else:
            result = Text("not polled yet", style="dim")
        domains.add_row(
            name, _age(row.last_poll_at, now), result, _when(row.watermark, now),
            Text("-" if lag is None else format_duration(round(lag)), style="yellow" if stale and lag is not None else ""),
            str(row.records), str(row.changed), str(row.changed_last_hour),
            Text(str(row.quarantined_open), style="red" if row.quarantined_open else ""), str(row.snapshots),
        )
    channels = Table(title="channels", title_justify="left", expand=False, caption_justify="left",
                     caption="pending: changes waiting; oldest: age of the oldest; dead: dead letters not resolved")
    for column in ("channel", "pending", "oldest", "sent", "1h", "dead", "last push", "last error"):
        channels.add_column(column, justify="left" if column in ("channel", "last error") else "right")
    for row in status.channel_statuses(db, list(config.channels)):
        channels.add_row(
            row.channel, str(row.pending), _age(row.oldest_pending, now) if row.pending else "-",
            str(row.sent), str(row.sent_last_hour),
            Text(str(row.dead_letters_open), style="red" if row.dead_letters_open else ""),
            _age(row.last_push_at, now), Text(row.last_error or "-", style="yellow" if row.last_error else "dim"),
        )
    return Group(domains, channels)
