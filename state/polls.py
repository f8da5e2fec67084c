"""The poll side of the store: watermarks, snapshots, page commits, quarantine, poll runs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlite_utils import Database

from state.db import parse_stamp, stamp, transaction, utc_now


@dataclass(frozen=True)
class DomainState:
    domain: str
    watermark: datetime | None
    watermark_seen_at: datetime | None
    settled: datetime | None
    first_polled_at: datetime | None
    last_full_resync_at: datetime | None
    resync_requested: bool


@dataclass(frozen=True)
class Snapshot:
    hash: str
    version: int
    deleted: bool


@dataclass(frozen=True)
class SnapshotWrite:
    """A record as the differ decided to store it; `op` is None when only its sighting is new."""

    key: str
    hash: str
    version: int
    payload: dict
    updated: datetime | None
    op: str | None  # "upsert" | "delete" | None (unchanged)


@dataclass(frozen=True)
class Rejected:
    """A raw record that could not become a canonical one."""

    ref: str
    reason: str
    message: str
    raw: str
    raw_hash: str


def domain_state(db: Database, domain: str) -> DomainState:
    """The watermark and schedule facts of a domain (empty for a domain never polled)."""
    row = db.execute(
        "SELECT watermark, watermark_seen_at, settled, first_polled_at, last_full_resync_at, resync_requested "
        "FROM domains WHERE domain = ?",
        [domain],
    ).fetchone()
    if row is None:
        return DomainState(domain, None, None, None, None, None, False)
    return DomainState(domain, *(parse_stamp(value) for value in row[:5]), bool(row[5]))


def snapshots(conn: sqlite3.Connection, domain: str, keys: Sequence[str]) -> dict[str, Snapshot]:
    """The stored snapshot of each key that has one."""
    found: dict[str, Snapshot] = {}
    for start in range(0, len(keys), 500):
        chunk = list(keys[start : start + 500])
        marks = ",".join("?" * len(chunk))
        for key, hash_, version, deleted in conn.execute(
            f"SELECT key, hash, version, deleted FROM snapshots WHERE domain = ? AND key IN ({marks})",
            [domain, *chunk],
        ):
            found[key] = Snapshot(hash_, version, bool(deleted))
    return found


def start_poll(db: Database, domain: str, since: datetime | None, full_resync: bool) -> int:
    """Record that a poll began; returns its run id."""
    now = stamp()
    with transaction(db) as conn:
        conn.execute(
            "INSERT INTO domains (domain, first_polled_at) VALUES (?, ?) "
            "ON CONFLICT (domain) DO UPDATE SET first_polled_at = COALESCE(first_polled_at, excluded.first_polled_at)",
            [domain, now],
        )
        cursor = conn.execute(
            "INSERT INTO poll_runs (domain, started_at, since, full_resync, status) VALUES (?, ?, ?, ?, 'running')",
            [domain, now, stamp(since) if since else None, int(full_resync)],
        )
        return int(cursor.lastrowid)


def commit_page(
    db: Database,
    *,
    domain: str,
    run_id: int,
    decide,
    keys: Sequence[str],
    rejected: Iterable[Rejected],
    accepted_refs: Iterable[str],
    channels: Sequence[str],
    watermark: datetime | None,
    read_at: datetime,
    scan_id: int | None,
    records: int,
    requests: int,
) -> list[SnapshotWrite]:
    """Store one page in ONE transaction: snapshots, versions, outbox rows, quarantine, watermark.

    `read_at` is when the page was read; it is remembered with a raised watermark.

    `decide(existing_snapshots) -> list[SnapshotWrite]` runs inside the transaction, so the
    snapshots it diffs against cannot change underneath it. Returns the writes it made.
    """
    now = stamp()
    rejected = list(rejected)
    with transaction(db) as conn:
        writes = decide(snapshots(conn, domain, keys))
        conn.executemany(
            "INSERT INTO snapshots (domain, key, hash, version, payload, updated, seen_at, seen_scan, deleted) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (domain, key) DO UPDATE SET "
            "hash = excluded.hash, version = excluded.version, payload = excluded.payload, "
            "updated = excluded.updated, seen_at = excluded.seen_at, "
            "seen_scan = COALESCE(excluded.seen_scan, snapshots.seen_scan), deleted = excluded.deleted",
            [
                (domain, w.key, w.hash, w.version, _json(w.payload), stamp(w.updated) if w.updated else None,
                 now, scan_id, int(w.op == "delete"))
                for w in writes if w.op is not None
            ],
        )
        conn.executemany(
            "UPDATE snapshots SET seen_at = ?, seen_scan = COALESCE(?, seen_scan) WHERE domain = ? AND key = ?",
            [(now, scan_id, domain, w.key) for w in writes if w.op is None],
        )
        changed = [w for w in writes if w.op is not None]
        _enqueue(conn, domain, changed, channels, now)
        quarantined = _quarantine(conn, domain, rejected, now)
        _resolve_quarantine(conn, domain, accepted_refs, now)
        if watermark is not None:
            conn.execute(
                "UPDATE domains SET watermark = ?, watermark_seen_at = ? "
                "WHERE domain = ? AND (watermark IS NULL OR watermark < ?)",
                [stamp(watermark), stamp(read_at), domain, stamp(watermark)],
            )
        conn.execute(
            "UPDATE poll_runs SET pages = pages + 1, records = records + ?, changed = changed + ?, "
            "quarantined = quarantined + ?, requests = ? WHERE id = ?",
            [records, len(changed), quarantined, requests, run_id],
        )
    return writes


def _enqueue(conn: sqlite3.Connection, domain: str, changed: Sequence[SnapshotWrite], channels: Sequence[str], now: str) -> None:
    """Outbox rows for every subscribed channel; a waiting row for the same key takes the newer version."""
    conn.executemany(
        "INSERT INTO outbox (channel, domain, key, version, op, payload, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (channel, domain, key) WHERE batch_id IS NULL DO UPDATE SET "
        "version = excluded.version, op = excluded.op, payload = excluded.payload, "
        "attempts = 0, next_attempt_at = NULL, last_error = NULL "
        "WHERE excluded.version > outbox.version",
        [
            (channel, domain, w.key, w.version, w.op, _json(w.payload), now)
            for w in changed
            for channel in channels
        ],
    )


def _quarantine(conn: sqlite3.Connection, domain: str, rejected: Sequence[Rejected], now: str) -> int:
    conn.executemany(
        "INSERT INTO quarantine (domain, ref, reason, message, raw, raw_hash, first_seen, last_seen) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (domain, ref, raw_hash) DO UPDATE SET "
        "last_seen = excluded.last_seen, seen_count = seen_count + 1, resolved_at = NULL",
        [(domain, r.ref, r.reason, r.message, r.raw, r.raw_hash, now, now) for r in rejected],
    )
    return len(rejected)


def _resolve_quarantine(conn: sqlite3.Connection, domain: str, refs: Iterable[str], now: str) -> None:
    """A record that maps cleanly now clears its earlier quarantine entries."""
    conn.executemany(
        "UPDATE quarantine SET resolved_at = ? WHERE domain = ? AND ref = ? AND resolved_at IS NULL",
        [(now, domain, ref) for ref in refs],
    )


def lower_watermark(db: Database, domain: str, ceiling: datetime, now: datetime) -> None:
    """Pull the watermark (and what counts as settled) back to `ceiling` when a poll read past a gap."""
    with transaction(db) as conn:
        conn.execute(
            "UPDATE domains SET watermark = ?, watermark_seen_at = ?, settled = MIN(settled, ?) "
            "WHERE domain = ? AND watermark > ?",
            [stamp(ceiling), stamp(now), stamp(ceiling), domain, stamp(ceiling)],
        )


def vanished(db: Database, domain: str, scan_id: int) -> tuple[list[tuple[str, int, dict]], int]:
    """Live snapshots a completed full scan did not see, and how many live snapshots there are."""
    rows = db.execute(
        "SELECT key, version, payload FROM snapshots WHERE domain = ? AND deleted = 0 "
        "AND (seen_scan IS NULL OR seen_scan != ?)",
        [domain, scan_id],
    ).fetchall()
    live = db.execute("SELECT count(*) FROM snapshots WHERE domain = ? AND deleted = 0", [domain]).fetchone()[0]
    return [(key, version, json.loads(payload)) for key, version, payload in rows], live


def commit_deletes(db: Database, domain: str, run_id: int, deletes: Sequence[SnapshotWrite], channels: Sequence[str]) -> None:
    """Mark vanished records deleted and queue delete changes, in one transaction."""
    now = stamp()
    with transaction(db) as conn:
        conn.executemany(
            "UPDATE snapshots SET deleted = 1, version = ?, hash = ?, seen_at = ? WHERE domain = ? AND key = ?",
            [(w.version, w.hash, now, domain, w.key) for w in deletes],
        )
        _enqueue(conn, domain, deletes, channels, now)
        conn.execute("UPDATE poll_runs SET deleted = deleted + ? WHERE id = ?", [len(deletes), run_id])


def finish_poll(
    db: Database,
    run_id: int,
    *,
    status: str,
    requests: int,
    reason: str | None = None,
    message: str | None = None,
    full_resync_done: bool = False,
    settled: datetime | None = None,
) -> None:
    """Close a poll run with its outcome ("ok", "failed", "interrupted"), and what it proved settled."""
    now = stamp()
    with transaction(db) as conn:
        conn.execute(
            "UPDATE poll_runs SET finished_at = ?, status = ?, requests = ?, reason = ?, message = ? WHERE id = ?",
            [now, status, requests, reason, message, run_id],
        )
        if full_resync_done:
            conn.execute(
                "UPDATE domains SET last_full_resync_at = ?, resync_requested = 0 "
                "WHERE domain = (SELECT domain FROM poll_runs WHERE id = ?)",
                [now, run_id],
            )
        if settled is not None:
            conn.execute(
                "UPDATE domains SET settled = ? WHERE domain = (SELECT domain FROM poll_runs WHERE id = ?) "
                "AND (settled IS NULL OR settled < ?)",
                [stamp(settled), run_id, stamp(settled)],
            )


def close_abandoned_polls(db: Database) -> None:
    """Runs left 'running' by a process that died are marked interrupted."""
    with transaction(db) as conn:
        conn.execute(
            "UPDATE poll_runs SET status = 'interrupted', finished_at = COALESCE(finished_at, ?) WHERE status = 'running'",
            [stamp()],
        )


def prune_runs(db: Database, keep: timedelta = timedelta(days=7)) -> None:
    """Forget run records older than `keep` (the status views look back an hour)."""
    cutoff = stamp(utc_now() - keep)
    with transaction(db) as conn:
        conn.execute("DELETE FROM poll_runs WHERE started_at < ? AND status != 'running'", [cutoff])
        conn.execute("DELETE FROM push_runs WHERE started_at < ?", [cutoff])


def _json(value: dict) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
