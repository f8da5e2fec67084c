"""The pusher against a real SQLite store, filled through the poller's write path.

The channel is either a scripted fake adapter (FakeChannel) or the real WebhookChannel with
respx or a tiny storefront on 127.0.0.1. Backoff waits are set to zero on the Pusher instance
(its `_backoff` / `_unreachable_backoff` attributes) so retries cost no wall-clock time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import respx
from tenacity import wait_none

import connector.pusher as pusher_module
from adapters.channels.webhook import WebhookChannel
from adapters.sources.rest import Page
from connector.changes import Batch, ChangeResult, SendError
from connector.config import parse_config
from connector.poller import poll_once
from connector.pusher import Pusher
from state import outbox
from state.db import open_state, parse_stamp, stamp, utc_now

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
CHANNEL = "shop"
URL = "http://127.0.0.1:9000/erpsync"
TIME_LIMIT = 5.0  # seconds any single scenario step may take before the test fails


# -- configuration and the write path -------------------------------------------------


def config(url: str = URL, *, batch_size: int = 100, max_attempts: int = 3, rate: float = 1000, burst: int = 10):
    """A one-domain (inventory), one-channel ("shop") configuration."""
    return parse_config(f"""
[erp]
base_url = "http://127.0.0.1:8080"
[domains.inventory]
interval = "10s"
record = {{ key = "code", updated = "modified" }}
fields = {{ sku = "code", location = "loc", on_hand = {{ path = "qty", type = "int" }} }}
[domains.inventory.request]
path = "/stock"
modified_param = "since"
[channels.{CHANNEL}]
kind = "webhook"
url = "{url}"
domains = ["inventory"]
max_requests_per_second = {rate}
burst = {burst}
batch_size = {batch_size}
max_attempts = {max_attempts}
timeout = "5s"
""", Path("pusher.toml"), {})


def rec(code: str, qty: int, minute: int = 0) -> dict:
    """A raw ERP stock record; its key becomes `<code>@MAIN`."""
    return {"code": code, "loc": "MAIN", "qty": qty, "modified": (T0 + timedelta(minutes=minute)).isoformat()}


class ScriptedSource:
    """A source adapter that serves the given pages on every poll."""

    def __init__(self, *pages: list[dict]) -> None:
        self.script = [list(p) for p in pages]
        self.requests = 0

    async def pages(self, since):
        for number, records in enumerate(self.script, start=1):
            self.requests += 1
            yield Page(number, records)


async def erp_changes(db, cfg, *pages: list[dict]) -> None:
    """One real poll (poller -> differ -> commit_page) that writes the outbox rows."""
    outcome = await poll_once(db, "inventory", cfg.domains.inventory, ScriptedSource(*pages), [CHANNEL])
    assert outcome.status == "ok", outcome


# -- channels --------------------------------------------------------------------------


class FakeChannel:
    """A channel adapter that records every Batch it gets and plays a script of replies.

    A reply is a SendError (raised) or a dict {key: (status, reason, message, retry_after)}
    giving per-change verdicts; keys it does not name are accepted. No script left: all ok.
    """

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.batches: list[Batch] = []
        self.sent_at: list[float] = []

    async def send(self, batch: Batch) -> list[ChangeResult]:
        self.batches.append(batch)
        self.sent_at.append(time.monotonic())
        reply = self.script.pop(0) if self.script else {}
        if isinstance(reply, SendError):
            raise reply
        return [ChangeResult(c.domain, c.key, *reply.get(c.key, ("ok",))) for c in batch.changes]

    def sent(self) -> list[list[tuple[str, int]]]:
        """(key, version) of every change, batch by batch."""
        return [[(c.key, c.version) for c in b.changes] for b in self.batches]


def webhook(cfg) -> WebhookChannel:
    """The real webhook adapter for the configured channel."""
    return WebhookChannel(CHANNEL, cfg.channels[CHANNEL], httpx.AsyncClient(), {})


def make_pusher(db, cfg, adapter, stop: asyncio.Event | None = None) -> Pusher:
    """A Pusher for "shop" whose backoff waits are zero (the test seam)."""
    pusher = Pusher(db, CHANNEL, cfg.channels[CHANNEL], adapter, stop or asyncio.Event())
    pusher._backoff = wait_none()
    pusher._unreachable_backoff = wait_none()
    return pusher


async def drain(pusher: Pusher, limit: int = 50) -> int:
    """push_once until nothing is due; returns how many batches were handled."""
    async def go() -> int:
        for handled in range(limit):
            if not await pusher.push_once():
                return handled
        raise AssertionError(f"still pushing after {limit} batches")

    return await asyncio.wait_for(go(), timeout=TIME_LIMIT)


async def drain_through_webhook(db, cfg) -> int:
    """Drain the outbox through the real webhook channel; returns how many batches were handled."""
    adapter = webhook(cfg)
    try:
        return await drain(make_pusher(db, cfg, adapter))
    finally:
        await adapter.aclose()


async def eventually(condition: Callable[[], bool], timeout: float = TIME_LIMIT) -> None:
    """Wait until condition() holds, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run an async scenario in a fresh event loop."""
    asyncio.run(scenario())


# -- reading the store -----------------------------------------------------------------


def pending(db) -> list[tuple]:
    """(key, version, attempts, batch_id) of the outbox rows, in outbox order."""
    return db.execute("SELECT key, version, attempts, batch_id FROM outbox ORDER BY id").fetchall()


def dead_letters(db) -> list[tuple]:
    """(key, version, reason, resolved_at, resolved_by_version) of every dead letter."""
    return db.execute(
        "SELECT key, version, reason, resolved_at, resolved_by_version FROM dead_letters ORDER BY id").fetchall()


def push_runs(db) -> list[dict]:
    """Every push_runs row as a dict."""
    cursor = db.execute("SELECT * FROM push_runs ORDER BY id")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def make_due(db) -> None:
    """Let time pass: every change waiting for a later retry becomes due now."""
    db.execute("UPDATE outbox SET next_attempt_at = ?", [stamp(utc_now() - timedelta(seconds=1))])


# -- 1. coalescing ---------------------------------------------------------------------


def test_a_key_changed_several_times_is_sent_once_with_the_latest_version_and_data(tmp_path):
    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config()
        await erp_changes(db, cfg, [rec("A", 1, 0), rec("B", 5, 0)])
        await erp_changes(db, cfg, [rec("A", 2, 1)])
        await erp_changes(db, cfg, [rec("A", 3, 2)])
        channel = FakeChannel()
        assert await drain(make_pusher(db, cfg, channel)) == 1
        assert channel.sent() == [[("A@MAIN", 3), ("B@MAIN", 1)]]
        a = channel.batches[0].changes[0]
        assert (a.op, a.data["on_hand"], a.data["available"]) == ("upsert", 3, 3)
        assert pending(db) == [] and dead_letters(db) == []

    run(scenario)


# -- 2. batching -----------------------------------------------------------------------


def test_250_changes_go_out_as_batches_of_100_100_50_in_outbox_order(tmp_path):
    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config(batch_size=100)
        records = [rec(f"SKU-{i:03d}", i, i // 10) for i in range(250)]
        await erp_changes(db, cfg, records[:120], records[120:])
        order = [key for key, *_ in pending(db)]
        assert len(order) == 250
        channel = FakeChannel()
        assert await drain(make_pusher(db, cfg, channel)) == 3
        assert [len(b.changes) for b in channel.batches] == [100, 100, 50]
        assert [c.key for b in channel.batches for c in b.changes] == order
        ids = [b.batch_id for b in channel.batches]
        assert len(set(ids)) == 3
        assert [(r["batch_id"], r["changes"], r["accepted"], r["status"]) for r in push_runs(db)] == [
            (ids[0], 100, 100, "ok"), (ids[1], 100, 100, "ok"), (ids[2], 50, 50, "ok")]
        assert pending(db) == []

    run(scenario)


# -- 3-6. whole-batch replies of the real webhook channel ----------------------------------


@respx.mock
def test_a_retried_batch_keeps_its_idempotency_key_and_identical_body(tmp_path):
    route = respx.post(URL).mock(side_effect=[httpx.Response(500, text="boom"), httpx.Response(200)])

    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config(max_attempts=3)
        await erp_changes(db, cfg, [rec("A", 1), rec("B", 2)])
        assert await drain_through_webhook(db, cfg) == 1
        assert route.call_count == 2
        first, second = (call.request for call in route.calls)
        [run_row] = push_runs(db)
        assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == run_row["batch_id"]
        assert first.content == second.content
        assert json.loads(first.content)["batch_id"] == run_row["batch_id"]
        assert (run_row["status"], run_row["requests"], run_row["accepted"]) == ("ok", 2, 2)
        assert pending(db) == [] and dead_letters(db) == []

    run(scenario)


@respx.mock
def test_http_500_every_time_dead_letters_the_batch_after_max_attempts(tmp_path):
    route = respx.post(URL).respond(500, text="upstream exploded")

    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config(max_attempts=3)
        await erp_changes(db, cfg, [rec("A", 1), rec("B", 2)])
        assert await drain_through_webhook(db, cfg) == 1
        assert route.call_count == 3
        assert [(k, v, reason) for k, v, reason, *_ in dead_letters(db)] == [
            ("A@MAIN", 1, "HTTP_500"), ("B@MAIN", 1, "HTTP_500")]
        assert pending(db) == []
        [run_row] = push_runs(db)
        assert (run_row["status"], run_row["reason"], run_row["requests"], run_row["dead"]) == ("failed", "HTTP_500", 3, 2)

    run(scenario)


@respx.mock
def test_429_with_retry_after_is_waited_out_and_not_counted_toward_max_attempts(tmp_path, monkeypatch):
    """max_attempts = 2: three 429s and one 500 still end in an accepted batch (only the 500 counts)."""
    too_many = httpx.Response(429, headers={"Retry-After": "0"})
    route = respx.post(URL).mock(side_effect=[too_many, too_many, too_many, httpx.Response(500), httpx.Response(200)])
    slept: list[float] = []
    real_sleep = pusher_module.sleep_or_stop

    async def recording_sleep(seconds, stop):
        slept.append(seconds)
        await real_sleep(seconds, stop)

    monkeypatch.setattr(pusher_module, "sleep_or_stop", recording_sleep)

    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config(max_attempts=2)
        await erp_changes(db, cfg, [rec("A", 1), rec("B", 2)])
        adapter = webhook(cfg)
        pusher = make_pusher(db, cfg, adapter)
        paused: list[float] = []
        real_pause = pusher.bucket.pause
        pusher.bucket.pause = lambda seconds: (paused.append(seconds), real_pause(seconds))[1]
        try:
            assert await drain(pusher) == 1
        finally:
            await adapter.aclose()
        assert route.call_count == 5
        assert dead_letters(db) == [] and pending(db) == []
        [run_row] = push_runs(db)
        assert (run_row["status"], run_row["requests"], run_row["accepted"]) == ("ok", 5, 2)
        # Retry-After: 0 means "now": neither the retry nor the channel's budget waits longer
        assert slept == [0.0, 0.0, 0.0, 0]  # the last one is the (zeroed) backoff after the 500
        assert paused == [0.0, 0.0, 0.0]

    run(scenario)


@respx.mock
def test_http_400_dead_letters_the_batch_at_once_without_a_retry(tmp_path):
    route = respx.post(URL).respond(400, json={"error": "bad payload"})

    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config(max_attempts=5)
        await erp_changes(db, cfg, [rec("A", 1), rec("B", 2)])
        assert await drain_through_webhook(db, cfg) == 1
        assert route.call_count == 1
        assert [(k, reason, resolved) for k, _, reason, resolved, _ in dead_letters(db)] == [
            ("A@MAIN", "HTTP_400", None), ("B@MAIN", "HTTP_400", None)]
        assert pending(db) == []
        [run_row] = push_runs(db)
        assert (run_row["status"], run_row["reason"], run_row["requests"]) == ("failed", "HTTP_400", 1)

    run(scenario)


# -- 7. partial failure ----------------------------------------------------------------------


@respx.mock
def test_a_per_change_error_dead_letters_only_that_change(tmp_path):
    route = respx.post(URL).respond(200, json={"results": [
        {"key": "A@MAIN", "status": "ok"},
        {"key": "B@MAIN", "status": "error", "reason": "VALIDATION", "retryable": False,
         "message": "available must be >= 0"},
    ]})

    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config()
        await erp_changes(db, cfg, [rec("A", 1), rec("B", 2), rec("C", 3)])
        assert await drain_through_webhook(db, cfg) == 1
        assert route.call_count == 1
        assert [(k, v, reason) for k, v, reason, *_ in dead_letters(db)] == [("B@MAIN", 1, "VALIDATION")]
        message = db.execute("SELECT message, payload FROM dead_letters").fetchone()
        assert message[0] == "available must be >= 0" and json.loads(message[1])["on_hand"] == 2
        assert pending(db) == []
        [run_row] = push_runs(db)
        assert (run_row["status"], run_row["accepted"], run_row["dead"], run_row["reason"]) == (
            "partial", 2, 1, "VALIDATION")

    run(scenario)


# -- 8. dead letters resolve themselves ---------------------------------------------------------


def test_a_dead_letter_resolves_when_a_newer_version_of_its_key_is_accepted(tmp_path):
    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config()
        refuse = ("dead", "VALIDATION", "refused")
        await erp_changes(db, cfg, [rec("A", 1), rec("C", 1)])
        await drain(make_pusher(db, cfg, FakeChannel({"A@MAIN": refuse, "C@MAIN": refuse})))
        assert [(k, v, resolved) for k, v, _, resolved, _ in dead_letters(db)] == [
            ("A@MAIN", 1, None), ("C@MAIN", 1, None)]

        await erp_changes(db, cfg, [rec("A", 2, 1)])
        channel = FakeChannel()
        await drain(make_pusher(db, cfg, channel))
        assert channel.sent() == [[("A@MAIN", 2)]]
        (a_key, _, _, a_resolved, a_by), (c_key, _, _, c_resolved, c_by) = dead_letters(db)
        assert a_key == "A@MAIN" and a_resolved is not None and a_by == 2
        assert parse_stamp(a_resolved) <= utc_now()
        assert (c_key, c_resolved, c_by) == ("C@MAIN", None, None)  # another key stays open

    run(scenario)


def queue_stale_change(db, key: str, version: int, data: dict) -> None:
    """Put an OLDER version of a key in the outbox by hand.

    The write path never does this (versions only grow), so it is the one raw INSERT here:
    it stands for a stale change reaching the pusher, e.g. re-queued by an operator.
    """
    db.execute(
        "INSERT INTO outbox (channel, domain, key, version, op, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [CHANNEL, "inventory", key, version, "upsert", json.dumps(data), stamp()],
    )


def test_an_older_version_accepted_does_not_resolve_a_newer_dead_letter(tmp_path):
    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config()
        await erp_changes(db, cfg, [rec("B", 1)])
        await drain(make_pusher(db, cfg, FakeChannel()))
        await erp_changes(db, cfg, [rec("B", 2, 1)])
        await drain(make_pusher(db, cfg, FakeChannel({"B@MAIN": ("dead", "VALIDATION", "refused")})))
        assert [(k, v, resolved) for k, v, _, resolved, _ in dead_letters(db)] == [("B@MAIN", 2, None)]

        queue_stale_change(db, "B@MAIN", 1, {"sku": "B", "location": "MAIN", "on_hand": 1})
        channel = FakeChannel()
        await drain(make_pusher(db, cfg, channel))
        assert channel.sent() == [[("B@MAIN", 1)]]  # accepted ...
        assert dead_letters(db) == [("B@MAIN", 2, "VALIDATION", None, None)]  # ... but v2 stays open

    run(scenario)


# -- 9. per-change retry ---------------------------------------------------------------------


def test_a_retryable_change_comes_back_later_and_is_dead_after_max_attempts(tmp_path):
    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config(max_attempts=3)
        locked = {"B@MAIN": ("retry", "LOCKED", "row is locked", None)}
        await erp_changes(db, cfg, [rec("A", 1), rec("B", 2), rec("C", 3)])
        channel = FakeChannel(locked, locked, locked)
        pusher = make_pusher(db, cfg, channel)

        before = utc_now()
        assert await pusher.push_once()
        [(key, version, attempts, batch_id)] = pending(db)
        assert (key, version, attempts, batch_id) == ("B@MAIN", 1, 1, None)
        due, error = db.execute("SELECT next_attempt_at, last_error FROM outbox").fetchone()
        assert parse_stamp(due) >= before + timedelta(seconds=4)  # our backoff: 5 s after the first retry
        assert "LOCKED" in error
        assert not await pusher.push_once()  # not due yet: nothing is sent
        assert len(channel.batches) == 1

        make_due(db)
        assert await pusher.push_once()
        assert [(k, a) for k, _, a, _ in pending(db)] == [("B@MAIN", 2)]
        assert dead_letters(db) == []

        make_due(db)
        assert await pusher.push_once()
        assert pending(db) == []
        assert [(k, v, reason) for k, v, reason, *_ in dead_letters(db)] == [("B@MAIN", 1, "LOCKED")]
        assert channel.sent() == [[("A@MAIN", 1), ("B@MAIN", 1), ("C@MAIN", 1)], [("B@MAIN", 1)], [("B@MAIN", 1)]]
        assert [r["status"] for r in push_runs(db)] == ["ok", "ok", "partial"]

    run(scenario)


# -- 10. an unfinished batch after a crash ------------------------------------------------------


def test_a_batch_claimed_before_a_crash_is_resent_as_it_was_before_anything_new(tmp_path):
    async def scenario():
        path = tmp_path / "s.db"
        db, cfg = open_state(path), config(batch_size=100)
        await erp_changes(db, cfg, [rec("A", 1), rec("B", 2), rec("C", 3)])
        claimed = outbox.claim_batch(db, CHANNEL, 100)
        assert claimed is not None and not claimed.resumed
        db.conn.close()  # the process dies with the batch claimed but not finished

        db = open_state(path)
        await erp_changes(db, cfg, [rec("A", 10, 1), rec("D", 4, 1)])  # arrive while the batch is open
        channel = FakeChannel()
        assert await drain(make_pusher(db, cfg, channel)) == 2
        assert channel.batches[0].batch_id == claimed.batch_id
        assert channel.sent() == [[("A@MAIN", 1), ("B@MAIN", 1), ("C@MAIN", 1)], [("A@MAIN", 2), ("D@MAIN", 1)]]
        assert channel.batches[1].batch_id != claimed.batch_id
        assert channel.batches[1].changes[0].data["on_hand"] == 10
        assert pending(db) == [] and dead_letters(db) == []

    run(scenario)


# -- 11. an unreachable channel ------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (for now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TinyStorefront:
    """A minimal HTTP server on 127.0.0.1 that answers 200 to every request and keeps the bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        self.bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


def test_an_unreachable_channel_never_dead_letters_and_gets_everything_when_it_is_back(tmp_path):
    async def scenario():
        port = free_port()
        db, cfg = open_state(tmp_path / "s.db"), config(f"http://127.0.0.1:{port}/hook", max_attempts=2)
        await erp_changes(db, cfg, [rec("A", 1), rec("B", 2), rec("C", 3)])
        stop = asyncio.Event()
        adapter = webhook(cfg)
        pusher = make_pusher(db, cfg, adapter, stop)
        task = asyncio.create_task(pusher.run())
        server = None
        try:
            def unreachable_runs() -> int:
                return sum(1 for r in push_runs(db) if r["status"] == "unreachable")

            await eventually(lambda: unreachable_runs() >= 5)  # well past max_attempts = 2
            assert [k for k, *_ in pending(db)] == ["A@MAIN", "B@MAIN", "C@MAIN"]
            assert dead_letters(db) == []
            assert {r["reason"] for r in push_runs(db)} == {"UNREACHABLE"}

            storefront = TinyStorefront()
            server = await asyncio.start_server(storefront.handle, "127.0.0.1", port)
            await eventually(lambda: pending(db) == [])
            assert [[(c["key"], c["version"]) for c in body["changes"]] for body in storefront.bodies] == [
                [("A@MAIN", 1), ("B@MAIN", 1), ("C@MAIN", 1)]]
            assert dead_letters(db) == []
            assert push_runs(db)[-1]["status"] == "ok"
        finally:
            stop.set()
            pusher.wake.set()
            await asyncio.wait_for(task, timeout=TIME_LIMIT)
            await adapter.aclose()
            if server is not None:
                server.close()
                await server.wait_closed()

    run(scenario)


def test_stopping_while_the_channel_is_unreachable_keeps_the_batch_for_later(tmp_path):
    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config(max_attempts=1)
        await erp_changes(db, cfg, [rec("A", 1)])
        down = SendError("unreachable", "UNREACHABLE", "connection refused")
        channel = FakeChannel(*[down] * 1000)
        stop = asyncio.Event()
        pusher = make_pusher(db, cfg, channel, stop)
        task = asyncio.create_task(pusher.run())
        await eventually(lambda: len(channel.batches) >= 3)
        stop.set()
        await asyncio.wait_for(task, timeout=TIME_LIMIT)
        [(key, _, _, batch_id)] = pending(db)
        assert key == "A@MAIN" and batch_id == channel.batches[0].batch_id
        assert dead_letters(db) == []

        later = FakeChannel()
        assert await drain(make_pusher(db, cfg, later)) == 1
        assert later.batches[0].batch_id == channel.batches[0].batch_id
        assert pending(db) == []

    run(scenario)


# -- 12. pacing --------------------------------------------------------------------------------


def test_the_token_bucket_spaces_the_sends(tmp_path):
    """6 batches at 20 requests/s with burst 1: 5 gaps of at least 1/20 s (a lower bound only)."""
    async def scenario():
        db, cfg = open_state(tmp_path / "s.db"), config(batch_size=1, rate=20, burst=1)
        await erp_changes(db, cfg, [rec(f"K{i}", i) for i in range(6)])
        channel = FakeChannel()
        assert await drain(make_pusher(db, cfg, channel)) == 6
        stamps = channel.sent_at
        assert stamps[-1] - stamps[0] >= 5 / 20 * 0.95, stamps
        assert min(b - a for a, b in zip(stamps, stamps[1:])) >= 0.045, stamps

    run(scenario)
