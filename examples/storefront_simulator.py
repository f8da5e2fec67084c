"""A fake storefront receiving erpsync's webhook channel, for integration tests, demo and benchmarks.

Run with ``python -m examples.storefront_simulator --rate 5 --burst 5``.  It rate-limits with a token
bucket, verifies HMAC signatures, replays stored answers for repeated batch ids, keeps the latest
version of every (domain, key), counts version regressions and duplicates, and lets tests inject
faults through ``/_sim/...``.  Standard library only; binds 127.0.0.1 and prints one
``listening on http://127.0.0.1:PORT`` line.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import hmac
import json
import math
import os
import random
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from examples.erp_simulator import SimError, SimHandler, add_common_options, check_faults, require, serve

FAULT_DEFAULTS: dict[str, Any] = {
    "burst_429": 0, "error_500": 0, "error_503": 0, "error_rate": 0.0, "slow": 0.0,
    "outage": False, "garbage": 0, "reject_all": False,
}
OPS = ("upsert", "delete")
MAX_DETAILS = 50
MAX_REQUEST_TIMES = 2000


class Bucket:
    """Token bucket: capacity tokens, refilled at rate per second, one per request (rate 0 = no limit)."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = time.monotonic()

    def take(self) -> int:
        """Take a token: 0 if granted, else whole seconds (>= 1) until one is available."""
        if self.rate <= 0:
            return 0
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate))


class Stats:
    """Counters of webhook traffic."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        self.requests = 0
        self.accepted_batches = 0
        self.changes_applied = 0
        self.rate_limited = 0
        self.injected_429 = 0
        self.status_counts: collections.Counter[str] = collections.Counter()
        self.regressions = 0
        self.regression_details: list[dict[str, Any]] = []
        self.duplicates = 0
        self.replays = 0
        self.bad_signatures = 0
        self.max_batch = 0
        self.request_times: collections.deque[float] = collections.deque(maxlen=MAX_REQUEST_TIMES)

    def snapshot(self) -> dict[str, Any]:
        """The stats as JSON-ready data."""
        data = dict(vars(self))
        data["status_counts"] = dict(self.status_counts)
        data["regression_details"] = list(self.regression_details)
        data["request_times"] = list(self.request_times)
        return data


class Store:
    """All storefront state; every method expects the caller to hold self.lock."""

    def __init__(self, rate: float, burst: float, secret: bytes | None, faults: dict[str, Any]) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random()
        self.bucket = Bucket(rate, burst)
        self.secret = secret
        self.faults = faults
        self.stats = Stats()
        self.data: dict[str, dict[str, Any]] = {"product": {}, "price": {}, "inventory": {}}
        self.versions: dict[str, int] = {}
        self.responses: dict[str, dict[str, Any]] = {}  # batch_id -> stored answer

    def next_fault(self) -> str | None:
        """Decide (and consume) the fault for one webhook request."""
        faults = self.faults
        if faults["outage"]:
            return "outage"
        for name in ("burst_429", "error_500", "error_503", "garbage"):
            if faults[name] > 0:
                faults[name] -= 1
                return name
        if faults["error_rate"] and self.rng.random() < faults["error_rate"]:
            return "error_500"
        return None

    def signature_ok(self, body: bytes, header: str) -> bool:
        """Whether header is 'sha256=<hex HMAC-SHA256 of body>' (always true without a secret)."""
        if self.secret is None:
            return True
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(header.strip().encode(), expected.encode())

    def apply_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Apply a validated batch (or replay its stored answer); returns the response body."""
        stored = self.responses.get(batch["batch_id"])
        if stored is not None:
            self.stats.replays += 1
            return stored
        results = [self.apply_change(change) for change in batch["changes"]]
        response = {"results": results}
        self.responses[batch["batch_id"]] = response
        self.stats.accepted_batches += 1
        self.stats.max_batch = max(self.stats.max_batch, len(batch["changes"]))
        return response

    def apply_change(self, change: dict[str, Any]) -> dict[str, Any]:
        """Apply one change unless rejected or stale; returns its result."""
        domain, key, version = change["domain"], change["key"], change["version"]
        result = {"key": key, "domain": domain, "status": "ok", "reason": None, "retryable": False}
        data = change.get("data") or {}
        sku = data.get("sku") if isinstance(data.get("sku"), str) else key.split("@")[0]
        if self.faults["reject_all"] or sku.startswith("REJECT-"):
            return {**result, "status": "error", "reason": "VALIDATION"}
        slot = f"{domain}:{key}"
        had = self.versions.get(slot)
        if had is not None and version < had:
            self.stats.regressions += 1
            if len(self.stats.regression_details) < MAX_DETAILS:
                self.stats.regression_details.append({"domain": domain, "key": key, "had": had, "got": version})
            return result
        if had == version:
            self.stats.duplicates += 1
            return result
        self.versions[slot] = version
        live = self.data.setdefault(domain, {})
        if change["op"] == "upsert":
            live[key] = data
        else:
            live.pop(key, None)
        self.stats.changes_applied += 1
        return result

    def state(self) -> dict[str, Any]:
        """Live records per domain plus every remembered version (tombstones included)."""
        result: dict[str, Any] = {domain: dict(records) for domain, records in self.data.items()}
        result["versions"] = dict(self.versions)
        return result


def parse_batch(body: bytes, idempotency_key: str | None) -> dict[str, Any]:
    """The webhook body as a checked batch; SimError 400 describing the first problem."""
    try:
        batch = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SimError(400, "body is not valid JSON") from None
    require(isinstance(batch, dict), "body must be a JSON object")
    batch_id = batch.get("batch_id")
    require(isinstance(batch_id, str) and batch_id != "", "batch_id must be a non-empty string")
    require(idempotency_key is not None, "Idempotency-Key header is missing")
    require(idempotency_key == batch_id, "Idempotency-Key header does not match batch_id")
    require(isinstance(batch.get("channel"), str), "channel must be a string")
    changes = batch.get("changes")
    require(isinstance(changes, list), "changes must be a list")
    for index, change in enumerate(changes):
        check_change(index, change)
    return batch


def check_change(index: int, change: Any) -> None:
    """SimError 400 unless change has the documented shape."""
    where = f"changes[{index}]"
    require(isinstance(change, dict), f"{where} must be an object")
    require(isinstance(change.get("domain"), str) and change["domain"] != "", f"{where}.domain must be a string")
    require(isinstance(change.get("key"), str) and change["key"] != "", f"{where}.key must be a string")
    require(change.get("op") in OPS, f"{where}.op must be one of {list(OPS)}")
    version = change.get("version")
    require(isinstance(version, int) and not isinstance(version, bool), f"{where}.version must be an integer")
    data = change.get("data")
    if change["op"] == "upsert":
        require(isinstance(data, dict), f"{where}.data must be an object for an upsert")
    else:
        require(data is None or isinstance(data, dict), f"{where}.data must be an object or null")


class StoreHandler(SimHandler):
    """HTTP front of the Store state."""

    server_version = "storefront-simulator/1"
    webhook_path = "/erpsync"

    @property
    def store(self) -> Store:
        """The shared simulator state."""
        return self.server.sim

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        """Serve the GET control endpoints."""
        self.read_body()
        self.route({"/_sim/state": self.sim_state, "/_sim/stats": self.sim_stats})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        """Serve the webhook and the POST control endpoints."""
        self.read_body()
        if urlsplit(self.path).path == self.webhook_path:
            self.webhook()
            return
        self.route({"/_sim/faults": self.sim_faults, "/_sim/stats/reset": self.sim_stats_reset})

    # ---- the webhook

    def webhook(self) -> None:
        """One webhook POST: rate limit, faults, signature, shape, idempotency, apply."""
        store = self.store
        fault, slow = None, 0.0
        with store.lock:
            store.stats.requests += 1
            wait = store.bucket.take()
            if wait:
                store.stats.rate_limited += 1
            else:
                store.stats.request_times.append(time.time())
                fault, slow = store.next_fault(), store.faults["slow"]
        try:
            if wait:
                self.send_json(429, {"error": "rate limited"}, {"Retry-After": str(wait)})
            elif fault is not None:
                self.send_fault(fault)
            else:
                self.route({self.webhook_path: lambda: self.accept(slow)})
        finally:
            if self.status_sent is not None:
                with store.lock:
                    store.stats.status_counts[str(self.status_sent)] += 1

    def send_fault(self, fault: str) -> None:
        """Answer with an injected fault (or drop the connection)."""
        if fault == "outage":
            self.drop()
        elif fault == "burst_429":
            with self.store.lock:
                self.store.stats.injected_429 += 1
            self.send_json(429, {"error": "too many requests"}, {"Retry-After": "1"})
        elif fault == "error_500":
            self.send_html(500, "<html><body><h1>500 Internal Server Error</h1></body></html>")
        elif fault == "error_503":
            self.send_html(503, "<html><body><h1>503 Service Unavailable</h1></body></html>", {"Retry-After": "1"})
        else:
            self.send_html(200, "<html>oops</html>")

    def accept(self, slow: float) -> None:
        """Check signature and shape, apply (or replay), sleep `slow`, then answer."""
        store = self.store
        with store.lock:
            signed = store.signature_ok(self.raw_body, self.headers.get("X-Erpsync-Signature", ""))
            if not signed:
                store.stats.bad_signatures += 1
        if not signed:
            raise SimError(401, "bad signature")
        batch = parse_batch(self.raw_body, self.headers.get("Idempotency-Key"))
        with store.lock:
            body = json.dumps(store.apply_batch(batch)).encode()
        if slow:
            time.sleep(slow)
        self.send(200, body, "application/json")

    # ---- /_sim

    def control(self, action: Any) -> None:
        """Run action(body) under the lock and answer its result as JSON."""
        payload = self.json_body()
        with self.store.lock:
            body = json.dumps(action(payload)).encode()
        self.send(200, body, "application/json")

    def sim_faults(self) -> None:
        """POST /_sim/faults: update and return the faults."""
        def update(payload: dict[str, Any]) -> dict[str, Any]:
            """Merge the new faults."""
            self.store.faults = check_faults(self.store.faults, payload)
            return self.store.faults
        self.control(update)

    def sim_state(self) -> None:
        """GET /_sim/state."""
        self.control(lambda payload: self.store.state())

    def sim_stats(self) -> None:
        """GET /_sim/stats."""
        self.control(lambda payload: self.store.stats.snapshot())

    def sim_stats_reset(self) -> None:
        """POST /_sim/stats/reset."""
        def reset(payload: dict[str, Any]) -> dict[str, Any]:
            """Zero the counters."""
            self.store.stats.reset()
            return self.store.stats.snapshot()
        self.control(reset)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(prog="python -m examples.storefront_simulator",
                                     description=__doc__.splitlines()[0])
    add_common_options(parser)
    parser.add_argument("--path", default="/erpsync", help="webhook path (default /erpsync)")
    parser.add_argument("--rate", type=float, default=5.0, help="bucket refill, requests/second (default 5; 0 = no limit)")
    parser.add_argument("--burst", type=float, default=5.0, help="bucket capacity (default 5)")
    parser.add_argument("--secret-env", default=None, help="environment variable holding the HMAC secret")
    parser.add_argument("--burst-429", type=int, default=0, help="the next N webhook POSTs answer 429")
    parser.add_argument("--error-500", type=int, default=0, help="the next N webhook POSTs answer 500")
    parser.add_argument("--error-503", type=int, default=0, help="the next N webhook POSTs answer 503")
    parser.add_argument("--error-rate", type=float, default=0.0, help="probability of a 500 per webhook POST")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds to sleep before each webhook answer")
    parser.add_argument("--outage", action="store_true", help="start with webhook connections being dropped")
    parser.add_argument("--garbage", type=int, default=0, help="the next N webhook POSTs answer 200 text/html")
    parser.add_argument("--reject-all", action="store_true", help="answer every change VALIDATION error")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build the storefront and serve it."""
    args = parse_args(argv)
    if args.rate < 0 or args.burst < 1 or not args.path.startswith("/"):
        sys.exit("storefront_simulator: need --rate >= 0, --burst >= 1 and a --path starting with /")
    secret = None
    if args.secret_env:
        value = os.environ.get(args.secret_env)
        if not value:
            sys.exit(f"storefront_simulator: environment variable {args.secret_env} is not set")
        secret = value.encode()
    try:
        faults = check_faults(FAULT_DEFAULTS, {name: getattr(args, name) for name in FAULT_DEFAULTS})
    except SimError as error:
        sys.exit(f"storefront_simulator: {error.message}")
    handler = type("ConfiguredStoreHandler", (StoreHandler,), {"webhook_path": args.path})
    serve(handler, Store(args.rate, args.burst, secret, faults), args.port, args.parent_pid)


if __name__ == "__main__":
    main()
