"""The push side of the store: claiming batches, recording results, dead letters, push runs."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlite_utils import Database

from state.db import parse_stamp, stamp, transaction, utc_now


@dataclass(frozen=True)
class OutboxRow:
    id: int
    domain: str
    key: str
    version: int
    op: str
    data: dict
    attempts: int


@dataclass(frozen=True)
class ClaimedBatch:
    batch_id: str
    channel: str
    rows: list[OutboxRow]
    resumed: bool  # claimed by an earlier process that stopped before it finished


@dataclass(frozen=True)
class RowOutcome:
    """What became of one outbox row after a send."""

    row: OutboxRow
    status: str  # "ok" | "retry" | "dead"
    reason: str | None = None
    message: str | None = None
    retry_at: datetime | None = None


def claim_batch(db: Database, channel: str, size: int) -> ClaimedBatch | None:
    """The channel's unfinished batch if there is one (sent again as it was), else a new one."""
    with transaction(db) as conn:
        row = conn.execute(
            "SELECT batch_id FROM outbox WHERE channel = ? AND batch_id IS NOT NULL ORDER BY id LIMIT 1", [channel]
        ).fetchone()
        if row:
            return ClaimedBatch(row[0], channel, _batch_rows(conn, channel, row[0]), resumed=True)
        batch_id = str(uuid.uuid4())
        conn.execute(
            "UPDATE outbox SET batch_id = ? WHERE id IN (SELECT id FROM outbox WHERE channel = ? "
            "AND batch_id IS NULL AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id LIMIT ?)",
            [batch_id, channel, stamp(), size],
        )
        rows = _batch_rows(conn, channel, batch_id)
        return ClaimedBatch(batch_id, channel, rows, resumed=False) if rows else None


def _batch_rows(conn: sqlite3.Connection, channel: str, batch_id: str) -> list[OutboxRow]:
    return [
        OutboxRow(id_, domain, key, version, op, json.loads(payload), attempts)
        for id_, domain, key, version, op, payload, attempts in conn.execute(
            "SELECT id, domain, key, version, op, payload, attempts FROM outbox "
            "WHERE channel = ? AND batch_id = ? ORDER BY id",
            [channel, batch_id],
        )
    ]


def next_due(db: Database, channel: str) -> datetime | None:
    """When the earliest waiting row of a channel may be sent (None: nothing waits)."""
    row = db.execute(
        "SELECT min(COALESCE(next_attempt_at, created_at)) FROM outbox WHERE channel = ? AND batch_id IS NULL",
        [channel],
    ).fetchone()
    return parse_stamp(row[0]) if row and row[0] else None


def finish_batch(
    db: Database,
    batch: ClaimedBatch,
    outcomes: Sequence[RowOutcome],
    *,
    started_at: datetime,
    requests: int,
    status: str,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    """Record a batch's outcome per row, and its push run, in one transaction."""
    now = stamp()
    with transaction(db) as conn:
        for outcome in outcomes:
            row = outcome.row
            if outcome.status == "ok":
                conn.execute("DELETE FROM outbox WHERE id = ?", [row.id])
                conn.execute(
                    "UPDATE dead_letters SET resolved_at = ?, resolved_by_version = ? WHERE channel = ? "
                    "AND domain = ? AND key = ? AND version < ? AND resolved_at IS NULL",
                    [now, row.version, batch.channel, row.domain, row.key, row.version],
                )
            elif outcome.status == "dead":
                conn.execute("DELETE FROM outbox WHERE id = ?", [row.id])
                conn.execute(
                    "INSERT INTO dead_letters (channel, domain, key, version, op, payload, reason, message, "
                    "batch_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [batch.channel, row.domain, row.key, row.version, row.op, json.dumps(row.data),
                     outcome.reason or "REJECTED", outcome.message or "", batch.batch_id, now],
                )
            else:
                newer = conn.execute(
                    "SELECT 1 FROM outbox WHERE channel = ? AND domain = ? AND key = ? AND batch_id IS NULL",
                    [batch.channel, row.domain, row.key],
                ).fetchone()
                if newer:  # a newer version already waits; this one is superseded
                    conn.execute("DELETE FROM outbox WHERE id = ?", [row.id])
                else:
                    conn.execute(
                        "UPDATE outbox SET batch_id = NULL, attempts = attempts + 1, next_attempt_at = ?, "
                        "last_error = ? WHERE id = ?",
                        [stamp(outcome.retry_at), f"{outcome.reason}: {outcome.message}", row.id],
                    )
        counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("ok", "retry", "dead")}
        conn.execute(
            "INSERT INTO push_runs (channel, batch_id, started_at, finished_at, changes, accepted, retried, dead, "
            "requests, status, reason, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [batch.channel, batch.batch_id, stamp(started_at), now, len(batch.rows), counts["ok"],
             counts["retry"], counts["dead"], requests, status, reason, message],
        )


def record_push_failure(db: Database, channel: str, batch_id: str, changes: int, *, reason: str, message: str) -> None:
    """A send that has not settled (the channel is unreachable): the batch stays claimed, the attempt is logged."""
    now = stamp()
    with transaction(db) as conn:
        conn.execute(
            "INSERT INTO push_runs (channel, batch_id, started_at, finished_at, changes, accepted, retried, dead, "
            "requests, status, reason, message) VALUES (?, ?, ?, ?, ?, 0, 0, 0, 1, 'unreachable', ?, ?)",
            [channel, batch_id, now, now, changes, reason, message],
        )


def retry_delay(attempts: int) -> timedelta:
    """Backoff for a change the channel asked to retry: 5s, 10s, 20s ... capped at 10 minutes."""
    return timedelta(seconds=min(5 * 2 ** attempts, 600))


def retry_at(attempts: int, retry_after: float | None) -> datetime:
    """When a retryable change is due again: the channel's own delay first, else our backoff."""
    delay = timedelta(seconds=retry_after) if retry_after is not None else retry_delay(attempts)
    return utc_now() + delay
