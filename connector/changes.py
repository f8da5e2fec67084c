"""What travels from the outbox to a channel adapter, and what the adapter says back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Change:
    domain: str
    key: str
    op: Literal["upsert", "delete"]
    version: int
    data: dict


@dataclass(frozen=True)
class Batch:
    channel: str
    batch_id: str  # also the Idempotency-Key: identical on every retry of the batch
    changes: list[Change]


@dataclass(frozen=True)
class ChangeResult:
    """A channel's verdict on one change of a batch."""

    domain: str
    key: str
    status: Literal["ok", "retry", "dead"]
    reason: str | None = None
    message: str | None = None
    retry_after: float | None = None


class SendError(Exception):
    """A whole batch was not applied.

    kind: "rate_limited" (429/503: wait retry_after, not counted as an attempt),
          "transient" (5xx, timeout: backoff, counted, dead letter after max_attempts),
          "unreachable" (no connection: wait and retry, never dead-lettered),
          "permanent" (other 4xx: every change is dead-lettered with `reason`).
    """

    def __init__(self, kind: str, reason: str, message: str, retry_after: float | None = None) -> None:
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(message)
