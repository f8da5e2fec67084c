"""A fake ERP REST API for erpsync's integration tests, demo and benchmarks.

Run with ``python -m examples.erp_simulator --products 200``.  It serves products, prices and
inventory under ``/api/...`` (sorted by ``(modified, id)``, paged by keyset cursor, offset or page),
changes records in the background, and lets tests inject faults and edits through ``/_sim/...``.
Standard library only; binds 127.0.0.1 and prints one ``listening on http://127.0.0.1:PORT`` line.

The generic server plumbing (``SimHandler``, ``serve``, ``SimError``...) is shared with
``examples.storefront_simulator``.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import collections
import hmac
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)
RESOURCES = ("products", "prices", "inventory")
DOMAIN = {"products": "product", "prices": "price", "inventory": "inventory"}
STATUSES = ("active", "draft", "discontinued")
ADJECTIVES = ("sturdy", "compact", "deluxe", "budget", "classic", "modern", "rugged", "tiny")


# --------------------------------------------------------------------------- shared plumbing


class SimError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SimServer(ThreadingHTTPServer):
    """Threading HTTP server with daemon threads, a deep backlog and a ``sim`` state object."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    sim: Any = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away; report anything else on stderr."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class SimHandler(BaseHTTPRequestHandler):
    """Request handler with JSON helpers, quiet logging and HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms stalls
    server: SimServer
    status_sent: int | None = None
    raw_body: bytes = b""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Log nothing per request."""

    def read_body(self) -> bytes:
        """Read the request body (Content-Length only) so keep-alive connections stay in sync."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # unsupported framing: never reuse this connection
            return b""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        self.raw_body = self.rfile.read(length) if length > 0 else b""
        return self.raw_body

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object ({} when empty); SimError 400 otherwise."""
        if not self.raw_body.strip():
            return {}
        try:
            payload = json.loads(self.raw_body)
        except (ValueError, UnicodeDecodeError):
            raise SimError(400, "body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise SimError(400, "body must be a JSON object")
        return payload

    def send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        """Send a complete response with Content-Length."""
        self.status_sent = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Send a JSON response."""
        self.send(status, json.dumps(payload).encode(), "application/json", headers)

    def send_html(self, status: int, html: str, headers: dict[str, str] | None = None) -> None:
        """Send an HTML response."""
        self.send(status, html.encode(), "text/html; charset=utf-8", headers)

    def drop(self) -> None:
        """Close the connection without sending any HTTP response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def route(self, routes: dict[str, Callable[[], None]]) -> None:
        """Run the handler for this path, answering SimErrors and crashes as JSON."""
        handler = routes.get(urlsplit(self.path).path)
        try:
            if handler is None:
                raise SimError(404, f"no such endpoint: {self.command} {urlsplit(self.path).path}")
            handler()
        except SimError as error:
            self.send_json(error.status, {"error": error.message})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # a simulator bug must not kill the connection silently
            self.send_json(500, {"error": f"simulator crashed: {type(error).__name__}: {error}"})


def require(condition: bool, message: str) -> None:
    """Raise SimError 400 with message unless condition holds."""
    if not condition:
        raise SimError(400, message)


def parent_alive(parent_pid: int, direct_child: bool) -> bool:
    """Whether parent_pid still runs (for a direct child: whether we were not re-parented)."""
    if direct_child and os.getppid() != parent_pid:
        return False  # re-parented: the parent died, even if it is still an unreaped zombie
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return True


def watch_parent(parent_pid: int) -> None:
    """Start a thread that exits the process (os._exit) within 0.25 s of parent_pid going away."""
    direct_child = os.getppid() == parent_pid

    def loop() -> None:
        """Poll the parent; exit when it is gone."""
        while parent_alive(parent_pid, direct_child):
            time.sleep(0.25)
        os._exit(0)

    threading.Thread(target=loop, name="parent-watchdog", daemon=True).start()


def _raise_exit(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind serve_forever in the main thread."""
    raise SystemExit(0)


def serve(handler: type[SimHandler], sim: Any, port: int, parent_pid: int | None) -> None:
    """Bind 127.0.0.1:port, announce the URL, serve until SIGTERM/SIGINT, then exit 0."""
    server = SimServer(("127.0.0.1", port), handler)
    server.sim = sim
    signal.signal(signal.SIGTERM, _raise_exit)
    if parent_pid:
        watch_parent(parent_pid)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # daemon threads may be mid-request; do not let finalization trip over them


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add --port and --parent-pid."""
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")


# --------------------------------------------------------------------------- time helpers


def iso(us: int) -> str:
    """Microseconds since the epoch as '2026-11-25T10:00:00.123456+00:00'."""
    return (EPOCH + us * MICROSECOND).isoformat(timespec="microseconds")


def parse_us(value: str) -> int:
    """ISO 8601 (naive = UTC) to microseconds since the epoch; ValueError if unparseable."""
    value = value.strip()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = datetime.fromisoformat(value.replace(" ", "+"))  # an unencoded '+' became a space
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - EPOCH) // MICROSECOND


def now_us() -> int:
    """Wall clock in microseconds since the epoch."""
    return time.time_ns() // 1000


class Clock:
    """Hands out strictly increasing microsecond timestamps."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self) -> int:
        """Now, or last + 1 µs if the wall clock has not moved past the last stamp."""
        self.last = max(now_us(), self.last + 1)
        return self.last


# --------------------------------------------------------------------------- data


class Table:
    """One resource: records by id, an index by key and a (modified, id) list for keyset paging."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, Any]] = {}
        self.ids: dict[str, int] = {}
        self.stamps: dict[int, int] = {}
        self.order: list[tuple[int, int]] = []
        self.invalid: set[int] = set()  # ids of records erpsync would reject
        self.next_id = 1

    def add(self, key: str, fields: dict[str, Any], us: int, stamp: str, *, bulk: bool = False) -> dict[str, Any]:
        """Create a record modified at us (= stamp as text); bulk=True appends, call sort() afterwards."""
        rid, self.next_id = self.next_id, self.next_id + 1
        record = {"id": rid, **fields, "modified": stamp}
        self.records[rid], self.ids[key], self.stamps[rid] = record, rid, us
        if bulk:
            self.order.append((us, rid))
        else:
            bisect.insort(self.order, (us, rid))
        return record

    def sort(self) -> None:
        """Sort the order list after bulk adds."""
        self.order.sort()

    def get(self, key: str) -> dict[str, Any] | None:
        """The record with this key, or None."""
        rid = self.ids.get(key)
        return None if rid is None else self.records[rid]

    def touch(self, record: dict[str, Any], us: int) -> None:
        """Give a record a new modified timestamp and move it in the order list."""
        rid = record["id"]
        self._unlink(rid)
        self.stamps[rid] = us
        record["modified"] = iso(us)
        bisect.insort(self.order, (us, rid))

    def remove(self, key: str) -> dict[str, Any] | None:
        """Delete the record with this key; returns it, or None if unknown."""
        rid = self.ids.pop(key, None)
        if rid is None:
            return None
        self._unlink(rid)
        del self.stamps[rid]
        self.invalid.discard(rid)
        return self.records.pop(rid)

    def _unlink(self, rid: int) -> None:
        """Drop (stamp, rid) from the order list."""
        index = bisect.bisect_left(self.order, (self.stamps[rid], rid))
        del self.order[index]

    def start_at(self, modified_after: int | None) -> int:
        """Index of the first record with modified >= modified_after."""
        return 0 if modified_after is None else bisect.bisect_left(self.order, (modified_after,))

    def start_after(self, us: int, rid: int) -> int:
        """Index of the first record strictly after (us, rid)."""
        return bisect.bisect_right(self.order, (us, rid))

    def slice(self, start: int, limit: int) -> list[dict[str, Any]]:
        """Records order[start:start+limit]."""
        return [self.records[rid] for _, rid in self.order[start : start + limit]]

    def random_record(self, rng: random.Random) -> dict[str, Any] | None:
        """A random valid record, or None when there is none (gives up after a few tries)."""
        for _ in range(10 if self.order else 0):
            rid = rng.choice(self.order)[1]
            if rid not in self.invalid:
                return self.records[rid]
        return None

    def mark(self, record: dict[str, Any], valid: bool) -> None:
        """Remember whether a record is valid."""
        if valid:
            self.invalid.discard(record["id"])
        else:
            self.invalid.add(record["id"])


def record_key(resource: str, record: dict[str, Any]) -> str:
    """Key of a record inside its table: item_code, or item_code@warehouse for inventory."""
    if resource == "inventory":
        return f"{record['item_code']}@{record['warehouse']}"
    return record["item_code"]


def sku(number: int) -> str:
    """SKU-00001 style item code (more digits past 99999)."""
    return f"SKU-{number:05d}"


def random_rate(rng: random.Random) -> str:
    """A price like '12.50'."""
    cents = 100 + int(rng.random() * 99_900)
    return f"{cents // 100}.{cents % 100:02d}"


def random_quantities(rng: random.Random) -> tuple[int, int]:
    """(on_hand, reserved); reserved <= on_hand nine times out of ten."""
    on_hand = int(rng.random() * 501)
    if rng.random() < 0.9:
        return on_hand, int(rng.random() * (on_hand + 1))
    return on_hand, on_hand + 1 + int(rng.random() * 5)


# --------------------------------------------------------------------------- canonical truth


def as_int(value: Any) -> int:
    """An int from an int or integer string; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


def as_text(value: Any) -> str | None:
    """Strip strings, stringify numbers, keep None."""
    if value is None or isinstance(value, str):
        return value.strip() if value else value
    return str(value)


def canonical(resource: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record as erpsync pushes it; ValueError when it would fail validation."""
    code = as_text(record["item_code"])
    if resource == "products":
        if record.get("status") not in STATUSES:
            raise ValueError("bad status")
        return {"sku": code, "title": as_text(record.get("item_name")),
                "description": as_text(record.get("description")), "status": record["status"]}
    if resource == "prices":
        currency = record.get("currency")
        if not (isinstance(currency, str) and len(currency.strip()) == 3 and currency.strip().isalpha()):
            raise ValueError("bad currency")
        try:
            amount = Decimal(str(record.get("rate")).strip())
        except InvalidOperation:
            raise ValueError("bad rate") from None
        if not amount.is_finite():
            raise ValueError("bad rate")
        return {"sku": code, "currency": currency.strip().upper(), "amount": format(amount, "f")}
    on_hand, reserved = as_int(record.get("qty_on_hand")), as_int(record.get("qty_reserved") or 0)
    return {"sku": code, "location": as_text(record["warehouse"]), "on_hand": on_hand,
            "reserved": reserved, "available": max(on_hand - reserved, 0)}


def is_valid(resource: str, record: dict[str, Any]) -> bool:
    """Whether erpsync would accept this record."""
    try:
        canonical(resource, record)
    except (ValueError, TypeError, KeyError):
        return False
    return True


# --------------------------------------------------------------------------- the simulated ERP


FAULT_DEFAULTS: dict[str, Any] = {
    "burst_429": 0, "error_500": 0, "error_rate": 0.0, "slow": 0.0,
    "outage": False, "html": 0, "rate_limit": 0.0,
}


def check_faults(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Validate a faults update against the types of current; returns the merged faults."""
    merged = dict(current)
    for name, value in changes.items():
        require(name in current, f"unknown fault {name!r}; known: {sorted(current)}")
        kind = type(current[name])
        if kind is bool:
            require(isinstance(value, bool), f"{name} must be true or false")
        elif kind is int:
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"{name} must be a non-negative integer")
        else:
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                    f"{name} must be a non-negative number")
            value = float(value)
        merged[name] = value
    require(merged.get("error_rate", 0) <= 1, "error_rate must be between 0 and 1")
    return merged


class Stats:
    """Request counters of /api traffic."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.changes = 0
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the request counters (not changes, not requests still in flight)."""
        self.requests = 0
        self.by_path: collections.Counter[str] = collections.Counter()
        self.status_counts: collections.Counter[str] = collections.Counter()
        self.max_concurrent = self.in_flight
        self.recent: collections.deque[float] = collections.deque()
        self.max_per_second = 0

    def begin(self, path: str) -> None:
        """Count a request that starts now."""
        now = time.monotonic()
        self.requests += 1
        self.by_path[path] += 1
        self.in_flight += 1
        self.max_concurrent = max(self.max_concurrent, self.in_flight)
        self.recent.append(now)
        while self.recent[0] <= now - 1.0:
            self.recent.popleft()
        self.max_per_second = max(self.max_per_second, len(self.recent))

    def end(self, status: int | None) -> None:
        """Count a finished request (status None = connection dropped)."""
        self.in_flight -= 1
        if status is not None:
            self.status_counts[str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        """The stats as JSON-ready data."""
        return {"requests": self.requests, "by_path": dict(self.by_path),
                "status_counts": dict(self.status_counts), "max_concurrent": self.max_concurrent,
                "max_per_second": self.max_per_second, "changes": self.changes,
                "started_at": self.started_at}


class Erp:
    """All simulator state; every method expects the caller to hold self.lock."""

    def __init__(self, products: int, locations: list[str], seed: int, token: str | None,
                 max_limit: int, faults: dict[str, Any]) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.locations = locations
        self.token = token
        self.max_limit = max_limit
        self.faults = faults
        self.frozen = False
        self.stats = Stats()
        self.tables = {name: Table() for name in RESOURCES}
        self.product_count = 0
        self.allowed: collections.deque[float] = collections.deque()  # rate_limit sliding window
        start = now_us()
        for number in range(1, products + 1):
            self.add_product(number, start - self.rng.randrange(3600 * 10**6), bulk=True)
        for table in self.tables.values():
            table.sort()
        self.product_count = products
        self.clock = Clock(max((t.order[-1][0] for t in self.tables.values() if t.order), default=0))

    # ---- building and changing records

    def add_product(self, number: int, us: int, *, bulk: bool = False) -> str:
        """Create product number with its price and one inventory record per location."""
        code, stamp = sku(number), iso(us)
        rng = self.rng
        self.tables["products"].add(code, {
            "item_code": code, "item_name": f"Widget {number}",
            "description": f"Widget {number} is a {rng.choice(ADJECTIVES)} widget.",
            "status": rng.choices(STATUSES, weights=(8, 1, 1))[0]}, us, stamp, bulk=bulk)
        self.tables["prices"].add(code, {"item_code": code, "currency": "EUR",
                                         "rate": random_rate(rng)}, us, stamp, bulk=bulk)
        for location in self.locations:
            on_hand, reserved = random_quantities(rng)
            self.tables["inventory"].add(f"{code}@{location}", {
                "item_code": code, "warehouse": location,
                "qty_on_hand": on_hand, "qty_reserved": reserved}, us, stamp, bulk=bulk)
        return code

    def vary(self, resource: str, record: dict[str, Any]) -> None:
        """Really change a record's values (not its timestamp)."""
        rng = self.rng
        if resource == "prices":
            old = record["rate"]
            while record["rate"] == old:
                record["rate"] = random_rate(rng)
        elif resource == "inventory":
            old = (record["qty_on_hand"], record["qty_reserved"])
            while (record["qty_on_hand"], record["qty_reserved"]) == old:
                record["qty_on_hand"], record["qty_reserved"] = random_quantities(rng)
        elif rng.random() < 0.5:
            name = str(record["item_name"])
            base = name.split(" mk")[0]
            record["item_name"] = f"{base} mk{rng.randint(2, 99)}" if name == base else base
        else:
            record["status"] = rng.choice([s for s in STATUSES if s != record["status"]])

    def background_change(self) -> None:
        """Change one random valid record and stamp it now."""
        resource = self.rng.choice(RESOURCES)
        record = self.tables[resource].random_record(self.rng)
        if record is not None:
            self.vary(resource, record)
            self.tables[resource].touch(record, self.clock.next())
            self.stats.changes += 1

    def find(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(resource, record) named by payload's resource/item_code/warehouse; SimError if unknown."""
        resource = payload.get("resource")
        require(resource in RESOURCES, f"resource must be one of {list(RESOURCES)}")
        code = payload.get("item_code")
        require(isinstance(code, str), "item_code is required")
        key = code
        if resource == "inventory":
            key = f"{code}@{payload.get('warehouse') or self.locations[0]}"
        record = self.tables[resource].get(key)
        if record is None:
            raise SimError(404, f"no {resource} record {key}")
        return resource, record

    # ---- /api

    def next_fault(self) -> str | None:
        """Decide (and consume) the fault for one /api request."""
        faults = self.faults
        if faults["outage"]:
            return "outage"
        for name in ("burst_429", "error_500", "html"):
            if faults[name] > 0:
                faults[name] -= 1
                return name
        if faults["error_rate"] and self.rng.random() < faults["error_rate"]:
            return "error_500"
        if faults["rate_limit"] > 0:
            now = time.monotonic()
            while self.allowed and self.allowed[0] <= now - 1.0:
                self.allowed.popleft()
            if len(self.allowed) >= faults["rate_limit"]:
                return "burst_429"
            self.allowed.append(now)
        return None

    def page(self, resource: str, modified_after: int | None, limit: int,
             position: tuple[str, Any]) -> tuple[dict[str, Any], str | None]:
        """One page of resource (see parse_query): (response, next cursor or None)."""
        table = self.tables[resource]
        first = table.start_at(modified_after)
        total = len(table.order) - first
        kind, value = position
        if kind == "cursor":
            start = max(first, table.start_after(*value))
        else:
            start = first + value
        records = table.slice(start, limit)
        cursor = None
        if records and start + len(records) < len(table.order):
            last = records[-1]["id"]
            cursor = encode_cursor(table.stamps[last], last)
        return {"data": records, "next_cursor": cursor, "total": total}, cursor

    # ---- /_sim

    def mutate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Apply payload['set'] to one record and stamp it (now, given, or late)."""
        resource, record = self.find(payload)
        changes = payload.get("set") or {}
        require(isinstance(changes, dict), "set must be an object")
        fixed = {"id", "modified", "item_code", "warehouse"}
        for name in changes:
            require(name in record and name not in fixed, f"cannot set {name!r} on {resource}")
        if payload.get("modified") is not None:
            us = parse_timestamp(payload["modified"], "modified")
        elif payload.get("late_seconds") is not None:
            late = payload["late_seconds"]
            require(isinstance(late, (int, float)) and not isinstance(late, bool), "late_seconds must be a number")
            us = now_us() - int(late * 1_000_000)
        else:
            us = self.clock.next()
        record.update(changes)
        self.tables[resource].mark(record, is_valid(resource, record))
        self.tables[resource].touch(record, us)
        self.stats.changes += 1
        return record

    def tie(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Change count distinct records of a resource, all with one identical new timestamp."""
        resource = payload.get("resource")
        require(resource in RESOURCES, f"resource must be one of {list(RESOURCES)}")
        count = payload.get("count", 2)
        require(isinstance(count, int) and not isinstance(count, bool) and count > 0, "count must be a positive integer")
        table = self.tables[resource]
        candidates = [rid for _, rid in table.order if rid not in table.invalid]
        chosen = [table.records[rid] for rid in self.rng.sample(candidates, min(count, len(candidates)))]
        us = self.clock.next()
        for record in chosen:
            self.vary(resource, record)
            table.touch(record, us)
        self.stats.changes += len(chosen)
        return {"modified": iso(us), "count": len(chosen),
                "keys": sorted(record_key(resource, record) for record in chosen)}

    def corrupt(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Make one record fail downstream validation and stamp it now."""
        resource, record = self.find(payload)
        field, value = {"inventory": ("qty_on_hand", "lots"), "prices": ("currency", "EURO"),
                        "products": ("status", "weird")}[resource]
        record[field] = value
        self.tables[resource].mark(record, False)
        self.tables[resource].touch(record, self.clock.next())
        self.stats.changes += 1
        return record

    def delete(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Remove a record (inventory without warehouse: every location of the item)."""
        resource = payload.get("resource")
        require(resource in RESOURCES, f"resource must be one of {list(RESOURCES)}")
        code = payload.get("item_code")
        require(isinstance(code, str), "item_code is required")
        keys = [code]
        if resource == "inventory":
            warehouse = payload.get("warehouse")
            keys = [f"{code}@{w}" for w in ([warehouse] if warehouse else self.locations)]
        deleted = [key for key in keys if self.tables[resource].remove(key) is not None]
        if not deleted:
            raise SimError(404, f"no {resource} record {code}")
        return {"deleted": deleted}

    def add(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Add count new products, each with a price and inventory per location, stamped now."""
        require(payload.get("resource", "products") == "products", "only products can be added")
        count = payload.get("count", 1)
        require(isinstance(count, int) and not isinstance(count, bool) and count > 0, "count must be a positive integer")
        added = []
        for _ in range(count):
            self.product_count += 1
            added.append(self.add_product(self.product_count, self.clock.next()))
        self.stats.changes += count
        return {"added": added}

    def truth(self) -> dict[str, Any]:
        """Current data in canonical form, keyed like erpsync's pushes; bad records under 'invalid'."""
        result: dict[str, Any] = {"product": {}, "price": {}, "inventory": {}, "invalid": []}
        for resource, table in self.tables.items():
            domain = DOMAIN[resource]
            for key, rid in table.ids.items():
                try:
                    result[domain][key] = canonical(resource, table.records[rid])
                except (ValueError, TypeError, KeyError):
                    result["invalid"].append(f"{domain}:{key}")
        result["invalid"].sort()
        return result


# --------------------------------------------------------------------------- query parsing


def encode_cursor(us: int, rid: int) -> str:
    """Opaque keyset cursor for (modified, id)."""
    return base64.urlsafe_b64encode(f"{us}.{rid}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[int, int]:
    """(modified, id) from a cursor; SimError 400 if it is not one of ours."""
    try:
        us, rid = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split(".")
        return int(us), int(rid)
    except (ValueError, UnicodeDecodeError):
        raise SimError(400, "invalid cursor") from None


def parse_timestamp(value: Any, name: str) -> int:
    """ISO 8601 to microseconds; SimError 400 if unparseable."""
    try:
        return parse_us(value)
    except (ValueError, TypeError, AttributeError):
        raise SimError(400, f"{name} is not an ISO 8601 timestamp: {value!r}") from None


def parse_int(query: dict[str, str], name: str, minimum: int) -> int | None:
    """Integer query parameter >= minimum, or None when absent; SimError 400 otherwise."""
    if name not in query:
        return None
    try:
        value = int(query[name])
    except ValueError:
        value = minimum - 1
    require(value >= minimum, f"{name} must be an integer >= {minimum}")
    return value


def parse_query(query: dict[str, str], max_limit: int) -> tuple[int | None, int, tuple[str, Any]]:
    """(modified_after µs, limit, position) where position is ('cursor', (us, id)) or ('offset', n)."""
    modified_after = None
    if "modified_after" in query:
        modified_after = parse_timestamp(query["modified_after"], "modified_after")
    limit = min(parse_int(query, "limit", 1) or 100, max_limit)
    given = [name for name in ("cursor", "offset", "page") if name in query]
    require(len(given) <= 1, "use only one of cursor, offset and page")
    if "cursor" in query:
        return modified_after, limit, ("cursor", decode_cursor(query["cursor"]))
    page = parse_int(query, "page", 1)
    offset = (page - 1) * limit if page is not None else parse_int(query, "offset", 0) or 0
    return modified_after, limit, ("offset", offset)


# --------------------------------------------------------------------------- HTTP


class ErpHandler(SimHandler):
    """HTTP front of the Erp state."""

    server_version = "erp-simulator/1"

    @property
    def erp(self) -> Erp:
        """The shared simulator state."""
        return self.server.sim

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        """Serve /api resources and the GET control endpoints."""
        self.read_body()
        if urlsplit(self.path).path.startswith("/api/"):
            self.api()
            return
        self.route({"/_sim/truth": self.sim_truth, "/_sim/stats": self.sim_stats})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        """Serve the POST control endpoints."""
        self.read_body()
        if urlsplit(self.path).path.startswith("/api/"):
            self.send_json(405, {"error": "the ERP API is read-only"})
            return
        self.route({
            "/_sim/faults": self.sim_faults, "/_sim/mutate": self.sim_mutate, "/_sim/tie": self.sim_tie,
            "/_sim/bad": self.sim_bad, "/_sim/freeze": self.sim_freeze, "/_sim/unfreeze": self.sim_unfreeze,
            "/_sim/delete": self.sim_delete, "/_sim/add": self.sim_add, "/_sim/stats/reset": self.sim_stats_reset,
        })

    # ---- /api

    def api(self) -> None:
        """One /api request: stats, faults, auth, then data."""
        path = urlsplit(self.path).path
        with self.erp.lock:
            self.erp.stats.begin(path)
            fault, slow = self.erp.next_fault(), self.erp.faults["slow"]
        try:
            if fault == "outage":
                self.drop()
                return
            if slow:
                time.sleep(slow)
            if fault is not None:
                self.send_fault(fault)
                return
            self.route({path: self.api_data})
        finally:
            with self.erp.lock:
                self.erp.stats.end(self.status_sent)

    def send_fault(self, fault: str) -> None:
        """Answer with an injected error."""
        if fault == "burst_429":
            self.send_json(429, {"error": "too many requests"}, {"Retry-After": "1"})
        elif fault == "error_500":
            self.send_html(500, "<html><body><h1>500 Internal Server Error</h1></body></html>")
        else:
            self.send_html(200, "<html><body><h1>Maintenance</h1><p>Back soon.</p></body></html>")

    def authorized(self) -> bool:
        """Whether the request carries the configured bearer token (always true without one)."""
        token = self.erp.token
        if token is None:
            return True
        return hmac.compare_digest(self.headers.get("Authorization", "").encode(), f"Bearer {token}".encode())

    def api_data(self) -> None:
        """GET /api/<resource> with paging."""
        if not self.authorized():
            raise SimError(401, "unauthorized")
        parts = urlsplit(self.path)
        resource = parts.path.removeprefix("/api/").strip("/")
        if resource not in RESOURCES:
            raise SimError(404, f"no such resource: {resource}")
        query = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        modified_after, limit, position = parse_query(query, self.erp.max_limit)
        with self.erp.lock:
            response, cursor = self.erp.page(resource, modified_after, limit, position)
            body = json.dumps(response).encode()
        headers = {"Link": f'<{self.next_url(parts.path, query, cursor)}>; rel="next"'} if cursor else None
        self.send(200, body, "application/json", headers)

    def next_url(self, path: str, query: dict[str, str], cursor: str) -> str:
        """Absolute URL of the next page: same parameters, positioned by cursor."""
        params = {k: v for k, v in query.items() if k not in ("cursor", "offset", "page")}
        params["cursor"] = cursor
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        return f"http://{host}{path}?{urlencode(params)}"

    # ---- /_sim

    def control(self, action: Callable[[dict[str, Any]], Any]) -> None:
        """Run action(body) under the lock and answer its result as JSON."""
        payload = self.json_body()
        with self.erp.lock:
            result = action(payload)
            body = json.dumps(result).encode()
        self.send(200, body, "application/json")

    def sim_faults(self) -> None:
        """POST /_sim/faults: update and return the faults."""
        def update(payload: dict[str, Any]) -> dict[str, Any]:
            """Merge the new faults."""
            self.erp.faults = check_faults(self.erp.faults, payload)
            return self.erp.faults
        self.control(update)

    def sim_mutate(self) -> None:
        """POST /_sim/mutate."""
        self.control(self.erp.mutate)

    def sim_tie(self) -> None:
        """POST /_sim/tie."""
        self.control(self.erp.tie)

    def sim_bad(self) -> None:
        """POST /_sim/bad."""
        self.control(self.erp.corrupt)

    def sim_delete(self) -> None:
        """POST /_sim/delete."""
        self.control(self.erp.delete)

    def sim_add(self) -> None:
        """POST /_sim/add."""
        self.control(self.erp.add)

    def sim_freeze(self) -> None:
        """POST /_sim/freeze: stop background changes."""
        self.control(lambda payload: self.set_frozen(True))

    def sim_unfreeze(self) -> None:
        """POST /_sim/unfreeze: restart background changes."""
        self.control(lambda payload: self.set_frozen(False))

    def set_frozen(self, frozen: bool) -> dict[str, bool]:
        """Set the frozen flag (lock held)."""
        self.erp.frozen = frozen
        return {"frozen": frozen}

    def sim_truth(self) -> None:
        """GET /_sim/truth."""
        with self.erp.lock:
            truth = self.erp.truth()
        self.send_json(200, truth)

    def sim_stats(self) -> None:
        """GET /_sim/stats."""
        self.control(lambda payload: self.erp.stats.snapshot())

    def sim_stats_reset(self) -> None:
        """POST /_sim/stats/reset."""
        def reset(payload: dict[str, Any]) -> dict[str, Any]:
            """Zero the counters."""
            self.erp.stats.reset()
            return self.erp.stats.snapshot()
        self.control(reset)


def run_changes(erp: Erp, rate: float) -> None:
    """Background thread body: rate changes per second unless frozen."""
    interval = 1.0 / rate
    due = time.monotonic()
    while True:
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:
            due = time.monotonic()  # fell far behind (suspended?): do not burst to catch up
        try:
            with erp.lock:
                if not erp.frozen:
                    erp.background_change()
        except Exception as error:  # a record mutated into an odd shape must not stop the thread
            print(f"erp_simulator: background change failed: {error!r}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(prog="python -m examples.erp_simulator", description=__doc__.splitlines()[0])
    add_common_options(parser)
    parser.add_argument("--products", type=int, default=200, help="number of products (default 200)")
    parser.add_argument("--locations", default="MAIN", help="comma separated warehouses (default MAIN)")
    parser.add_argument("--change-rate", type=float, default=2.0, help="background changes per second (0 = none)")
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' on /api")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--max-limit", type=int, default=1000, help="largest page size (default 1000)")
    parser.add_argument("--burst-429", type=int, default=0, help="the next N /api requests answer 429")
    parser.add_argument("--error-500", type=int, default=0, help="the next N /api requests answer 500")
    parser.add_argument("--error-rate", type=float, default=0.0, help="probability of a 500 per /api request")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds to sleep before each /api answer")
    parser.add_argument("--outage", action="store_true", help="start with /api connections being dropped")
    parser.add_argument("--html", type=int, default=0, help="the next N /api requests answer 200 text/html")
    parser.add_argument("--rate-limit", type=float, default=0.0, help="enforce N /api requests per second (0 = off)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build the ERP and serve it."""
    args = parse_args(argv)
    locations = [name.strip() for name in args.locations.split(",") if name.strip()]
    if args.products < 0 or not locations or args.max_limit < 1 or args.change_rate < 0:
        sys.exit("erp_simulator: need --products >= 0, --locations, --max-limit >= 1, --change-rate >= 0")
    try:
        faults = check_faults(FAULT_DEFAULTS, {name: getattr(args, name) for name in FAULT_DEFAULTS})
    except SimError as error:
        sys.exit(f"erp_simulator: {error.message}")
    erp = Erp(args.products, locations, args.seed, args.token, args.max_limit, faults)
    if args.change_rate > 0:
        threading.Thread(target=run_changes, args=(erp, args.change_rate), name="changes", daemon=True).start()
    serve(ErpHandler, erp, args.port, args.parent_pid)


if __name__ == "__main__":
    main()
