"""Reads for the status views: what each domain and channel has been doing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlite_utils import Database

from state.db import parse_stamp, stamp, utc_now


@dataclass(frozen=True)
class DomainStatus:
    domain: str
    watermark: datetime | None
    last_poll_at: datetime | None
    last_status: str | None
    last_reason: str | None
    last_message: str | None
    records: int
    changed: int
    changed_last_hour: int
    quarantined_open: int
    snapshots: int
    polling_now: bool


@dataclass(frozen=True)
class ChannelStatus:
    channel: str
    pending: int
    oldest_pending: datetime | None
    sent: int
    sent_last_hour: int
    dead_letters_open: int
    last_push_at: datetime | None
    last_error: str | None


def domain_statuses(db: Database, domains: list[str]) -> list[DomainStatus]:
    """One row per domain, in the order given."""
    hour_ago = stamp(utc_now() - timedelta(hours=1))
    rows = []
    for domain in domains:
        watermark = db.execute("SELECT watermark FROM domains WHERE domain = ?", [domain]).fetchone()
        last = db.execute(
            "SELECT finished_at, status, reason, message, records, changed FROM poll_runs "
            "WHERE domain = ? AND status != 'running' ORDER BY id DESC LIMIT 1",
            [domain],
        ).fetchone() or (None, None, None, None, 0, 0)
        running = db.execute(
            "SELECT 1 FROM poll_runs WHERE domain = ? AND status = 'running' LIMIT 1", [domain]
        ).fetchone()
        changed_hour = db.execute(
            "SELECT COALESCE(sum(changed + deleted), 0) FROM poll_runs WHERE domain = ? AND started_at >= ?",
            [domain, hour_ago],
        ).fetchone()[0]
        quarantined = db.execute(
            "SELECT count(*) FROM quarantine WHERE domain = ? AND resolved_at IS NULL", [domain]
        ).fetchone()[0]
        snapshots = db.execute(
            "SELECT count(*) FROM snapshots WHERE domain = ? AND deleted = 0", [domain]
        ).fetchone()[0]
        rows.append(DomainStatus(
            domain, parse_stamp(watermark[0]) if watermark else None, parse_stamp(last[0]), last[1], last[2],
            last[3], last[4], last[5], changed_hour, quarantined, snapshots, running is not None,
        ))
    return rows


def channel_statuses(db: Database, channels: list[str]) -> list[ChannelStatus]:
    """One row per channel, in the order given."""
    hour_ago = stamp(utc_now() - timedelta(hours=1))
    rows = []
    for channel in channels:
        pending, oldest = db.execute(
            "SELECT count(*), min(created_at) FROM outbox WHERE channel = ?", [channel]
        ).fetchone()
        sent, sent_hour = db.execute(
            "SELECT COALESCE(sum(accepted), 0), COALESCE(sum(CASE WHEN started_at >= ? THEN accepted END), 0) "
            "FROM push_runs WHERE channel = ?",
            [hour_ago, channel],
        ).fetchone()
        dead = db.execute(
            "SELECT count(*) FROM dead_letters WHERE channel = ? AND resolved_at IS NULL", [channel]
        ).fetchone()[0]
        last = db.execute(
            "SELECT finished_at FROM push_runs WHERE channel = ? ORDER BY id DESC LIMIT 1", [channel]
        ).fetchone()
        error = db.execute(
            "SELECT reason, message FROM push_runs WHERE channel = ? AND status != 'ok' ORDER BY id DESC LIMIT 1",
            [channel],
        ).fetchone()
        rows.append(ChannelStatus(
            channel, pending, parse_stamp(oldest), sent, sent_hour, dead, parse_stamp(last[0]) if last else None,
            f"{error[0]}: {error[1]}" if error and error[0] else None,
        ))
    return rows


def pending_total(db: Database) -> int:
    """Changes waiting in every channel's outbox."""
    return db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def last_finished_poll(db: Database, domain: str) -> tuple[int, datetime | None]:
    """The id and start time of the newest finished ok poll of a domain (0 if none)."""
    row = db.execute(
        "SELECT id, started_at FROM poll_runs WHERE domain = ? AND status = 'ok' ORDER BY id DESC LIMIT 1", [domain]
    ).fetchone()
    return (row[0], parse_stamp(row[1])) if row else (0, None)
