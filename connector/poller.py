"""The poller: one loop per domain that reads changed records, diffs them, and commits per page."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlite_utils import Database

from adapters.sources.rest import SourceError
from connector.config import DomainConfig
from connector.differ import deletions, diff, latest_per_key
from connector.mapping import BadTimestamp, Mapped, MappingError, map_record, raw_hash, record_ref
from connector.throttle import Stopping, sleep_or_stop
from state import polls
from state.db import utc_now

log = logging.getLogger("erpsync.poll")


@dataclass
class PollOutcome:
    status: str  # "ok" | "failed" | "interrupted"
    pages: int = 0
    records: int = 0
    changed: int = 0
    quarantined: int = 0
    deleted: int = 0
    reason: str | None = None
    message: str | None = None


@dataclass
class _Reading:
    """What a poll remembers across its pages to keep the watermark honest."""

    first_seen: dict[str, tuple[datetime | None, datetime | None]] = field(default_factory=dict)
    ceiling: datetime | None = None
    previous_max: datetime | None = None
    unsorted: bool = False
    quarantined_refs: set[str] = field(default_factory=set)


def full_resync_due(cfg: DomainConfig, state: polls.DomainState, now: datetime) -> bool:
    """A full scan is due on the first poll, on request, or every `full_resync`."""
    if state.watermark is None or state.resync_requested:
        return True
    if cfg.full_resync is None:
        return False
    last = state.last_full_resync_at or state.first_polled_at
    return last is None or now - last >= cfg.full_resync


async def poll_once(
    db: Database,
    domain: str,
    cfg: DomainConfig,
    source,
    channels: Sequence[str],
    *,
    stop: asyncio.Event | None = None,
    on_change: Callable[[], None] = lambda: None,
    clock: Callable[[], datetime] = utc_now,
) -> PollOutcome:
    """Read every record changed since watermark - lookback (or what is settled) and commit page by page."""
    state = polls.domain_state(db, domain)
    started = clock()
    full = full_resync_due(cfg, state, started)
    since = None if full else poll_since(state, cfg.lookback)
    run_id = polls.start_poll(db, domain, since, full)
    requests_before = source.requests
    outcome = PollOutcome("ok")
    reading = _Reading()
    try:
        async for page in source.pages(since):
            _commit_page(db, domain, cfg, page.records, channels, run_id, full, reading, outcome,
                         source.requests - requests_before, read_at=clock())
            if stop is not None and stop.is_set():
                raise Stopping()
        if full:
            _detect_deletions(db, domain, cfg, channels, run_id, reading, outcome)
        if reading.ceiling is not None:
            polls.lower_watermark(db, domain, reading.ceiling, now=clock())
        if reading.unsorted:
            outcome.reason, outcome.message = "SOURCE_UNSORTED", (
                "pages did not come in ascending order of the updated field; sort the ERP query by it "
                "(the watermark relies on it)")
            log.warning("[%s] %s: %s", domain, outcome.reason, outcome.message)
    except (SourceError, BadTimestamp) as exc:
        outcome.status = "failed"
        outcome.reason = exc.reason if isinstance(exc, SourceError) else "BAD_TIMESTAMP"
        outcome.message = str(exc)
    except (Stopping, asyncio.CancelledError):
        outcome.status = "interrupted"
        raise
    except Exception as exc:  # a bug must not kill the other loops; it is logged with its traceback
        log.exception("[%s] poll failed unexpectedly", domain)
        outcome.status, outcome.reason, outcome.message = "failed", "INTERNAL", f"{type(exc).__name__}: {exc}"
    finally:
        polls.finish_poll(
            db, run_id, status=outcome.status, requests=source.requests - requests_before,
            reason=outcome.reason, message=outcome.message,
            full_resync_done=full and outcome.status == "ok",
            settled=settled_by(state, cfg.lookback, started)
            if outcome.status == "ok" and reading.ceiling is None and not reading.unsorted else None,
        )
    if outcome.changed or outcome.deleted:
        on_change()  # once per poll, so a poll's changes go out in full batches (pushers also look every second)
    if outcome.status == "failed":
        log.warning("[%s] poll failed: %s: %s", domain, outcome.reason, outcome.message)
    elif outcome.changed or outcome.quarantined or outcome.deleted:
        log.info("[%s] poll: %d records, %d changed, %d quarantined, %d deleted", domain,
                 outcome.records, outcome.changed, outcome.quarantined, outcome.deleted)
    return outcome


def poll_since(state: polls.DomainState, lookback: timedelta) -> datetime:
    """Where a poll starts reading: watermark - lookback, but never before what is already settled."""
    since = state.watermark - lookback
    return max(since, state.settled) if state.settled else since


def settled_by(state: polls.DomainState, lookback: timedelta, started: datetime) -> datetime | None:
    """What a complete poll that began at `started` proves was all read, so later polls need not re-read it.

    The record at the watermark existed when we read it (`watermark_seen_at`), so the ERP's clock
    then stood at or past the watermark. A record stamped at time t commits by t + lookback (what
    the lookback promises), so every record stamped up to watermark + (started - seen_at) - lookback
    had committed before this poll began, and the poll, reading from at most watermark - lookback,
    saw it. Only elapsed time on our clock is used, never the ERP's clock, so skew does not matter.
    Without this, an idle domain would re-read the last lookback window of changes on every poll.
    """
    if state.watermark is None or state.watermark_seen_at is None:
        return None
    return min(state.watermark, state.watermark + (started - state.watermark_seen_at) - lookback)


def _commit_page(db, domain, cfg, raw_records, channels, run_id, full, reading, outcome, requests, *,
                 read_at: datetime) -> None:
    mapped: list[Mapped] = []
    rejected: list[polls.Rejected] = []
    accepted_refs: list[str] = []
    for raw in raw_records:
        try:
            record = map_record(raw, domain, cfg)  # BadTimestamp propagates: the page is not committed
        except MappingError as exc:
            ref = record_ref(raw, cfg)
            reading.quarantined_refs.add(ref)
            rejected.append(polls.Rejected(ref, exc.reason, str(exc), json.dumps(raw, default=str), raw_hash(raw)))
            continue
        mapped.append(record)
        accepted_refs.append(record_ref(raw, cfg))
    stamps = [record.updated for record in mapped if record.updated is not None]
    page_max = max(stamps, default=None)
    _watch_order(reading, mapped, stamps, page_max)
    records = latest_per_key(mapped)
    writes = polls.commit_page(
        db, domain=domain, run_id=run_id, decide=lambda known: diff(records, known),
        keys=[record.key for record in records], rejected=rejected, accepted_refs=accepted_refs,
        channels=channels, watermark=page_max, read_at=read_at, scan_id=run_id if full else None,
        records=len(raw_records), requests=requests,
    )
    outcome.pages += 1
    outcome.records += len(raw_records)
    outcome.changed += sum(1 for write in writes if write.op)
    outcome.quarantined += len(rejected)
    for reject in rejected:
        log.warning("[%s] quarantined %s: %s: %s", domain, reject.ref, reject.reason, reject.message)


def _watch_order(reading: _Reading, mapped: list[Mapped], stamps: list[datetime], page_max: datetime | None) -> None:
    """Notice the two ways a source can make the watermark skip records, and guard against them.

    A key read again later in the same poll with a newer time means the record moved while we
    paged; under offset paging that shifts the rest of the list left by one, so a record at the
    page boundary may have gone unread. The watermark is pulled back to where the key was first
    read, so the next poll reads that stretch again.
    """
    if stamps and reading.previous_max is not None and min(stamps) < reading.previous_max:
        reading.unsorted = True
    for record in mapped:
        first = reading.first_seen.get(record.key)
        if first is None:
            reading.first_seen[record.key] = (record.updated, page_max)
        elif record.updated and first[0] and record.updated > first[0] and first[1] is not None:
            reading.ceiling = first[1] if reading.ceiling is None else min(reading.ceiling, first[1])
    if page_max is not None:
        reading.previous_max = max(reading.previous_max or page_max, page_max)


def _detect_deletions(db, domain, cfg, channels, run_id, reading: _Reading, outcome: PollOutcome) -> None:
    """After a complete scan, records not seen have vanished from the ERP: queue deletes."""
    gone, live = polls.vanished(db, domain, run_id)
    # a record that failed mapping was not "seen", but it still exists: never delete it
    gone = [item for item in gone if item[0].split("@")[0] not in reading.quarantined_refs
            and item[0] not in reading.quarantined_refs]
    if not gone:
        return
    if reading.ceiling is not None:
        log.warning("[%s] records moved during the full scan; deletions wait for a calmer scan", domain)
        return
    if live and len(gone) > cfg.max_delete_fraction * live:
        outcome.reason = "RESYNC_DELETE_GUARD"
        outcome.message = (f"the full scan misses {len(gone)} of {live} records, more than max_delete_fraction = "
                           f"{cfg.max_delete_fraction}; no deletes were sent. If they are really gone, raise it")
        log.warning("[%s] %s: %s", domain, outcome.reason, outcome.message)
        return
    polls.commit_deletes(db, domain, run_id, deletions(gone), channels)
    outcome.deleted = len(gone)


async def run_domain(
    db: Database,
    domain: str,
    cfg: DomainConfig,
    source,
    channels: Sequence[str],
    stop: asyncio.Event,
    on_change: Callable[[], None] = lambda: None,
) -> None:
    """Poll a domain on its interval (±10% jitter) until stopped; failures back off, never crash."""
    failures = 0
    interval = cfg.interval.total_seconds()
    try:
        while not stop.is_set():
            outcome = await poll_once(db, domain, cfg, source, channels, stop=stop, on_change=on_change)
            if outcome.status == "failed":
                failures += 1
                delay = min(interval, 2.0 * 2 ** (failures - 1))
            else:
                failures = 0
                delay = interval * random.uniform(0.9, 1.1)
            await sleep_or_stop(delay, stop)
    except Stopping:
        return

