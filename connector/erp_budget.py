"""The ERP budget: every request of every domain passes one token bucket and one concurrency cap."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from connector.config import ErpConfig
from connector.http_replies import retry_after_seconds
from connector.throttle import TokenBucket


class ErpBudget:
    """Shared by all domains. Requests are spaced 1/rate apart (no saved-up burst), FIFO."""

    def __init__(self, rate: float, concurrency: int, stop: asyncio.Event | None = None) -> None:
        self.bucket = TokenBucket(rate, burst=1)
        self.slots = asyncio.Semaphore(concurrency)
        self.stop = stop
        self.requests: Counter[str] = Counter()  # per domain
        self.throttled: Counter[str] = Counter()  # 429/503 answers per domain

    def backoff(self, seconds: float) -> None:
        """The ERP said slow down: nobody sends for `seconds`."""
        self.bucket.pause(seconds)


class BudgetTransport(httpx.AsyncBaseTransport):
    """An httpx transport that makes each request wait for the shared budget first."""

    def __init__(self, inner: httpx.AsyncBaseTransport, budget: ErpBudget, domain: str) -> None:
        self.inner = inner
        self.budget = budget
        self.domain = domain

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self.budget.slots:
            await self.budget.bucket.take(self.budget.stop)
            self.budget.requests[self.domain] += 1
            raw = await self.inner.handle_async_request(request)
            try:
                # hold the slot until the body is in; raw bytes, the client decodes them once
                body = b"".join([chunk async for chunk in raw.aiter_raw()])
            finally:
                await raw.aclose()
        response = httpx.Response(raw.status_code, headers=raw.headers, content=body, request=request)
        if response.status_code in (429, 503):
            self.budget.throttled[self.domain] += 1
            self.budget.backoff(retry_after_seconds(response.headers.get("retry-after"), default=2.0, ceiling=120))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def erp_client(erp: ErpConfig, budget: ErpBudget, domain: str) -> httpx.AsyncClient:
    """An HTTP client for one domain's requests, paced by the shared budget."""
    transport = BudgetTransport(httpx.AsyncHTTPTransport(), budget, domain)
    return httpx.AsyncClient(
        base_url=erp.base_url,
        transport=transport,
        timeout=erp.timeout.total_seconds(),
        headers={"User-Agent": "erpsync", "Accept": "application/json", **erp.headers},
        follow_redirects=False,
    )
