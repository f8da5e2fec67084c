"""The generic REST source: pages of raw records changed since an instant, all shaped by TOML."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from connector.config import BasicAuth, BearerAuth, DomainConfig, ErpConfig, HeaderAuth
from connector.mapping import MISSING, dig
from connector.http_replies import body_snippet
from connector.throttle import sleep_or_stop
from connector.timestamps import format_timestamp

RATE_LIMIT_RETRIES = 8
TRANSIENT_ATTEMPTS = 3


@dataclass(frozen=True)
class Page:
    number: int  # 1-based
    records: list[Any]


class SourceError(Exception):
    """The ERP did not give a usable answer; the poll fails softly and is tried again next interval."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class _Transient(Exception):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def auth_headers(erp: ErpConfig, env: Mapping[str, str]) -> dict[str, str]:
    """The headers that authenticate every request, built from the environment."""
    auth = erp.auth
    if isinstance(auth, BearerAuth):
        return {"Authorization": f"Bearer {env[auth.token_env]}"}
    if isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{env[auth.password_env]}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if isinstance(auth, HeaderAuth):
        return {auth.name: auth.value.format(**{name: env[var] for name, var in auth.env.items()})}
    return {}


class RestSource:
    """Lists one domain's records from an ordinary REST API, following its pagination to the end."""

    def __init__(
        self,
        erp: ErpConfig,
        domain_cfg: DomainConfig,
        client: httpx.AsyncClient,
        env: Mapping[str, str],
        stop: asyncio.Event | None = None,
    ) -> None:
        self.erp = erp
        self.request = domain_cfg.request
        self.client = client
        self.headers = auth_headers(erp, env)
        self.stop = stop
        self.requests = 0

    async def pages(self, since: datetime | None) -> AsyncIterator[Page]:
        """Yield pages of raw records updated at or after `since` (everything when None)."""
        request = self.request
        pagination = request.pagination
        style = pagination.style
        params: dict[str, Any] | None = dict(request.params)
        if since is not None and request.modified_param:
            params[request.modified_param] = format_timestamp(since, request.modified_format, request.timezone)
        limit_param = getattr(pagination, "limit_param", None)
        if limit_param:
            params[limit_param] = request.page_size
        headers = dict(self.headers)
        if style == "odata":
            headers["Prefer"] = f"odata.maxpagesize={request.page_size}"

        url: str = request.path
        received = 0
        seen_tokens: set[str] = set()
        for number in range(1, request.max_pages + 1):
            if style == "page":
                params[pagination.page_param] = pagination.first_page + number - 1
            elif style == "offset":
                params[pagination.offset_param] = received
            response, body = await self._get(url, params, headers)
            records = self._records(body)
            received += len(records)
            yield Page(number, records)

            if style == "none":
                return
            if style in ("page", "offset"):
                if len(records) < request.page_size:
                    return
                continue
            if style == "cursor":
                token = dig(body, pagination.next_cursor) if isinstance(body, dict) else MISSING
                if token is MISSING or token in (None, "") or not records:
                    return
                token = str(token)
                if token in seen_tokens:
                    raise SourceError("PAGINATION_LOOP", f"the ERP gave the cursor {token!r} twice")
                seen_tokens.add(token)
                params[pagination.cursor_param] = token
                continue
            # link_header and odata: the next URL is complete, parameters included
            if style == "link_header":
                next_url = response.links.get("next", {}).get("url")
            else:
                next_url = body.get(pagination.next_link) if isinstance(body, dict) else None
            if not next_url:
                return
            url = self._same_origin(str(next_url))
            if url in seen_tokens:
                raise SourceError("PAGINATION_LOOP", f"the ERP sent the next link {url} twice")
            seen_tokens.add(url)
            params = None  # httpx would clear the link's own query string for params={}
        raise SourceError(
            "PAGINATION_RUNAWAY",
            f"stopped after request.max_pages = {request.max_pages} pages; raise it if the ERP really has that many",
        )

    def _records(self, body: Any) -> list[Any]:
        path = self.request.records
        records = dig(body, path) if path else body
        if isinstance(records, list):
            return records
        where = f"at {path!r}" if path else "as the body"
        keys = f" (its keys: {', '.join(list(body)[:8])})" if isinstance(body, dict) else ""
        raise SourceError("ERP_RECORDS_PATH", f"the answer has no list of records {where}{keys}; check request.records")

    def _same_origin(self, url: str) -> str:
        target = self.client.base_url.join(url)
        base = self.client.base_url
        if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            raise SourceError("ERP_BAD_RESPONSE", f"the next-page link {url} leaves {base}; refusing to follow it")
        return str(target)

    async def _get(self, url: str, params: dict | None, headers: dict) -> tuple[httpx.Response, Any]:
        """One page request, with the rate-limit waits and transient retries it needs."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(TRANSIENT_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=0.5, max=5),
            sleep=lambda seconds: sleep_or_stop(seconds, self.stop),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._send_through_rate_limits(url, params, headers)
        except _Transient as exc:
            raise SourceError(exc.reason, str(exc)) from None
        return response, _json_body(response)

    async def _send_through_rate_limits(self, url: str, params: dict | None, headers: dict) -> httpx.Response:
        for _ in range(RATE_LIMIT_RETRIES + 1):
            try:
                self.requests += 1
                response = await self.client.get(url, params=params, headers=headers)
            except httpx.TimeoutException as exc:
                raise _Transient("ERP_TIMEOUT", f"no answer within erp.timeout ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                raise _Transient("ERP_UNREACHABLE", f"cannot reach {self.erp.base_url}: {exc or type(exc).__name__}") from None
            status = response.status_code
            if status in (429, 503):
                continue  # the budget transport has paused every domain for Retry-After
            if status >= 500:
                raise _Transient(f"ERP_HTTP_{status}", f"the ERP answered {status}: {body_snippet(response)}")
            if status in (401, 403):
                raise SourceError("ERP_AUTH", f"the ERP refused the credentials ({status}): {body_snippet(response)}")
            if status >= 300:
                raise SourceError(f"ERP_HTTP_{status}", f"the ERP answered {status} for {response.url.path}: {body_snippet(response)}")
            return response
        raise SourceError("ERP_RATE_LIMITED", f"the ERP kept answering {status} after {RATE_LIMIT_RETRIES} waits")


def _json_body(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        kind = response.headers.get("content-type", "no content type")
        raise SourceError("ERP_BAD_RESPONSE", f"the answer is not JSON ({kind}): {body_snippet(response)}") from None

