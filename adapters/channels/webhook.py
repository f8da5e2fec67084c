"""The generic webhook channel: the contract in DESIGN.md, byte for byte."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping

import httpx

from connector.changes import Batch, ChangeResult, SendError
from connector.config import WebhookChannel as WebhookConfig
from connector.http_replies import body_snippet, retry_after_seconds


def webhook_body(batch: Batch) -> bytes:
    """The request body: compact JSON, changes in outbox order."""
    document = {
        "channel": batch.channel,
        "batch_id": batch.batch_id,
        "changes": [
            {"domain": c.domain, "key": c.key, "op": c.op, "version": c.version, "data": c.data}
            for c in batch.changes
        ],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(secret: str, body: bytes) -> str:
    """The X-Erpsync-Signature value: sha256=<hex HMAC-SHA256 of the raw body>."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookChannel:
    """POSTs each batch to one URL and reads back per-change results."""

    def __init__(self, name: str, cfg: WebhookConfig, client: httpx.AsyncClient, env: Mapping[str, str]) -> None:
        self.name = name
        self.cfg = cfg
        self.client = client
        self.secret = env[cfg.secret_env] if cfg.secret_env else None

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()

    async def send(self, batch: Batch) -> list[ChangeResult]:
        """Deliver one batch; raise SendError when the batch as a whole was not applied."""
        body = webhook_body(batch)
        headers = {"Content-Type": "application/json", "Idempotency-Key": batch.batch_id}
        if self.secret is not None:
            headers["X-Erpsync-Signature"] = signature(self.secret, body)
        try:
            response = await self.client.post(self.cfg.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise SendError("transient", "TIMEOUT", f"no answer from {self.cfg.url} within {self.cfg.timeout}") from None
        except httpx.TransportError as exc:
            raise SendError("unreachable", "UNREACHABLE", f"cannot reach {self.cfg.url}: {exc or type(exc).__name__}") from None
        status = response.status_code
        if status in (429, 503):
            wait = retry_after_seconds(response.headers.get("retry-after"), default=1.0)
            raise SendError("rate_limited", f"HTTP_{status}", f"{self.cfg.url} answered {status}", retry_after=wait)
        if status >= 500:
            raise SendError("transient", f"HTTP_{status}", f"{self.cfg.url} answered {status}: {body_snippet(response)}")
        if not 200 <= status < 300:
            raise SendError("permanent", f"HTTP_{status}", f"{self.cfg.url} answered {status}: {body_snippet(response)}")
        return per_change_results(batch, response)


def per_change_results(batch: Batch, response: httpx.Response) -> list[ChangeResult]:
    """Read `{"results": [...]}` if the body has it; a change it does not mention was accepted."""
    try:
        document = response.json()
    except (ValueError, UnicodeDecodeError):
        document = None
    results = document.get("results") if isinstance(document, dict) else None
    verdicts: dict[tuple[str | None, str], dict] = {}
    for item in results if isinstance(results, list) else []:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            verdicts[(item.get("domain") if isinstance(item.get("domain"), str) else None, item["key"])] = item
    out = []
    for change in batch.changes:
        item = verdicts.get((change.domain, change.key)) or verdicts.get((None, change.key))
        if item is None or item.get("status", "ok") == "ok":
            out.append(ChangeResult(change.domain, change.key, "ok"))
            continue
        reason = str(item.get("reason") or "REJECTED")
        message = str(item.get("message") or f"{reason} from the channel")
        if item.get("retryable") is True:
            retry_after = item.get("retry_after")
            out.append(ChangeResult(change.domain, change.key, "retry", reason, message,
                                    float(retry_after) if isinstance(retry_after, (int, float)) else None))
        else:
            out.append(ChangeResult(change.domain, change.key, "dead", reason, message))
    return out

