"""The pusher: one loop per channel that drains the outbox in batches, at the channel's pace."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlite_utils import Database
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from connector.changes import Batch, Change, ChangeResult, SendError
from connector.throttle import Stopping, TokenBucket, sleep_or_stop
from state import outbox
from state.db import utc_now

log = logging.getLogger("erpsync.push")

RATE_LIMIT_WAITS = 20  # 429/503 answers in a row before a batch is dead-lettered RATE_LIMIT_EXHAUSTED
UNREACHABLE_MAX_WAIT = 60.0
IDLE_WAIT = 1.0


@dataclass
class _Tries:
    """Counts per batch: transient failures count toward max_attempts, rate-limit waits do not."""

    transient: int = 0
    rate_limited: int = 0
    unreachable: int = 0
    requests: int = 0


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, SendError) and exc.kind != "permanent"


class Pusher:
    """Sends one channel's outbox through its adapter."""

    def __init__(self, db: Database, name: str, cfg, adapter, stop: asyncio.Event) -> None:
        self.db = db
        self.name = name
        self.cfg = cfg
        self.adapter = adapter
        self.stop = stop
        self.bucket = TokenBucket(cfg.max_requests_per_second, cfg.burst)
        self.wake = asyncio.Event()
        self._backoff = wait_exponential_jitter(multiplier=1, max=30, jitter=1)
        self._unreachable_backoff = wait_exponential_jitter(multiplier=1, max=UNREACHABLE_MAX_WAIT, jitter=1)

    async def run(self) -> None:
        """Push until stopped."""
        try:
            while not self.stop.is_set():
                if not await self.push_once():
                    await self._idle()
        except Stopping:
            return

    async def _idle(self) -> None:
        self.wake.clear()
        due = outbox.next_due(self.db, self.name)
        wait = IDLE_WAIT if due is None else min(max((due - utc_now()).total_seconds(), 0.05), IDLE_WAIT)
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=wait)
        except TimeoutError:
            pass
        if self.stop.is_set():
            raise Stopping()

    async def push_once(self) -> bool:
        """Send one batch if one is due; False when there was nothing to send."""
        claimed = outbox.claim_batch(self.db, self.name, self.cfg.batch_size)
        if claimed is None:
            return False
        if claimed.resumed:
            log.info("[%s] resending batch %s (%d changes) left unfinished", self.name, claimed.batch_id, len(claimed.rows))
        batch = Batch(self.name, claimed.batch_id, [
            Change(row.domain, row.key, row.op, row.version, row.data) for row in claimed.rows
        ])
        started = utc_now()
        tries = _Tries()
        try:
            results = await self._send_with_retries(batch, tries)
        except SendError as exc:
            reason = "RATE_LIMIT_EXHAUSTED" if exc.kind == "rate_limited" else exc.reason
            log.warning("[%s] batch %s dead-lettered: %s: %s", self.name, batch.batch_id, reason, exc)
            outcomes = [outbox.RowOutcome(row, "dead", reason, str(exc)) for row in claimed.rows]
            outbox.finish_batch(self.db, claimed, outcomes, started_at=started, requests=tries.requests,
                                status="failed", reason=reason, message=str(exc))
            return True
        outcomes = _outcomes(claimed, results, self.cfg.max_attempts)
        dead = [o for o in outcomes if o.status == "dead"]
        for o in dead:
            log.warning("[%s] batch %s: %s %s dead-lettered: %s: %s", self.name, batch.batch_id,
                        o.row.domain, o.row.key, o.reason, o.message)
        outbox.finish_batch(
            self.db, claimed, outcomes, started_at=started, requests=tries.requests,
            status="partial" if dead else "ok", reason=dead[0].reason if dead else None,
            message=f"{len(dead)} change(s) dead-lettered, first: {dead[0].row.key}: {dead[0].message}" if dead else None,
        )
        return True

    async def _send_with_retries(self, batch: Batch, tries: _Tries) -> list[ChangeResult]:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retryable),
            stop=lambda state: self._give_up(state, tries),
            wait=lambda state: self._wait(state, tries),
            sleep=lambda seconds: sleep_or_stop(seconds, self.stop),
            before_sleep=lambda state: self._note_failure(batch, state),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.bucket.take(self.stop)
                tries.requests += 1
                try:
                    return await self.adapter.send(batch)
                except SendError as exc:
                    if exc.kind == "transient":
                        tries.transient += 1
                    elif exc.kind == "rate_limited":
                        tries.rate_limited += 1
                        self.bucket.pause(_retry_after(exc))
                    elif exc.kind == "unreachable":
                        tries.unreachable += 1
                        outbox.record_push_failure(self.db, batch.channel, batch.batch_id, len(batch.changes),
                                                   reason=exc.reason, message=str(exc))
                    raise
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _give_up(self, state: RetryCallState, tries: _Tries) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if not isinstance(exc, SendError):
            return True
        if exc.kind == "transient":
            return tries.transient >= self.cfg.max_attempts
        if exc.kind == "rate_limited":
            return tries.rate_limited > RATE_LIMIT_WAITS
        return False  # unreachable: wait for the channel to come back, however long

    def _wait(self, state: RetryCallState, tries: _Tries) -> float:
        exc = state.outcome.exception()
        if exc.kind == "rate_limited":
            return _retry_after(exc)  # the bucket is paused for as long; take() waits it out
        if exc.kind == "unreachable":
            return self._unreachable_backoff(_attempt_state(state, tries.unreachable))
        return self._backoff(_attempt_state(state, tries.transient))

    def _note_failure(self, batch: Batch, state: RetryCallState) -> None:
        exc = state.outcome.exception()
        log.warning("[%s] batch %s: %s (%s), retrying in %.1fs", self.name, batch.batch_id, exc.reason, exc,
                    state.upcoming_sleep)


def _retry_after(exc: SendError) -> float:
    """The channel's Retry-After in seconds; 0 means "now", only a missing one defaults to 1 s."""
    return 1.0 if exc.retry_after is None else exc.retry_after


def _attempt_state(state: RetryCallState, attempt_number: int) -> RetryCallState:
    """A copy of the retry state whose attempt number counts only failures of one kind."""
    copy = RetryCallState(state.retry_object, state.fn, state.args, state.kwargs)
    copy.attempt_number = max(attempt_number, 1)
    return copy


def _outcomes(claimed: outbox.ClaimedBatch, results: list[ChangeResult], max_attempts: int) -> list[outbox.RowOutcome]:
    """Pair each outbox row with the adapter's verdict; a change retried max_attempts times is dead."""
    verdicts = {(r.domain, r.key): r for r in results}
    outcomes = []
    for row in claimed.rows:
        verdict = verdicts.get((row.domain, row.key))
        if verdict is None or verdict.status == "ok":
            outcomes.append(outbox.RowOutcome(row, "ok"))
        elif verdict.status == "retry" and row.attempts + 1 < max_attempts:
            outcomes.append(outbox.RowOutcome(row, "retry", verdict.reason, verdict.message,
                                              outbox.retry_at(row.attempts, verdict.retry_after)))
        else:
            outcomes.append(outbox.RowOutcome(row, "dead", verdict.reason, verdict.message))
    return outcomes
