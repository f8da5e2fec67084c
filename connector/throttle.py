"""Token buckets and stop-aware sleeping: the pacing every loop shares."""

from __future__ import annotations

import asyncio
import time


class Stopping(Exception):
    """The daemon is shutting down; unwind without starting new work."""


async def sleep_or_stop(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep, but raise Stopping as soon as `stop` is set."""
    if stop is None:
        await asyncio.sleep(max(seconds, 0))
        return
    if stop.is_set():
        raise Stopping()
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0))
    except TimeoutError:
        return
    raise Stopping()


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; waiters are served first come, first served."""

    def __init__(self, rate: float, burst: float = 1) -> None:
        self.rate = rate
        self.capacity = max(burst, 1)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, stop: asyncio.Event | None = None) -> None:
        """Wait for a token (and for any pause to end), then spend it."""
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await sleep_or_stop(self._paused_until - now, stop)
                    continue
                self._refill(now)
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await sleep_or_stop((1 - self._tokens) / self.rate, stop)

    def pause(self, seconds: float) -> None:
        """Spend nothing for `seconds` (a 429 or 503 said so); the saved-up burst is forfeited."""
        now = time.monotonic()
        self._paused_until = max(self._paused_until, now + seconds)
        self._tokens = 0
        self._stamp = max(self._stamp, now + seconds)
