"""The poller and differ on a scripted source and a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import respx

from adapters.sources.rest import Page, RestSource
from connector.config import parse_config
from connector.erp_budget import ErpBudget, erp_client
from connector.poller import poll_once
from state.db import open_state, parse_stamp, stamp

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)


def config(extra: str = "", lookback: str = "1m"):
    return parse_config(f"""
[erp]
base_url = "http://erp.test"
max_requests_per_second = 1000
[domains.inventory]
interval = "10s"
lookback = "{lookback}"
{extra}
record = {{ key = "code", updated = "modified" }}
fields = {{ sku = "code", location = "loc", on_hand = {{ path = "qty", type = "int" }} }}
[domains.inventory.request]
path = "/stock"
modified_param = "since"
page_size = 100
pagination = {{ style = "cursor" }}
[channels.shop]
kind = "webhook"
url = "http://shop.test/hook"
domains = ["inventory"]
""", Path("poller.toml"), {})


def rec(code: str, qty, minute: int = 0) -> dict:
    return {"code": code, "loc": "MAIN", "qty": qty, "modified": (T0 + timedelta(minutes=minute)).isoformat()}


class ScriptedSource:
    """Serves the pages it is given and remembers the `since` of each poll."""

    def __init__(self, *pages: list[dict]) -> None:
        self.script = [list(p) for p in pages]
        self.asked: list[datetime | None] = []
        self.requests = 0

    async def pages(self, since):
        self.asked.append(since)
        for number, records in enumerate(self.script, start=1):
            self.requests += 1
            yield Page(number, records)


def poll(db, cfg, source):
    return asyncio.run(poll_once(db, "inventory", cfg.domains.inventory, source, ["shop"]))


def outbox(db) -> list[tuple]:
    return db.execute("SELECT key, version, op, payload FROM outbox ORDER BY id").fetchall()


def test_first_poll_reads_everything_then_polls_since_watermark_minus_lookback(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config()
    source = ScriptedSource([rec("A", 1, 0), rec("B", 2, 5)])
    assert poll(db, cfg, source).changed == 2
    poll(db, cfg, source)
    assert source.asked == [None, T0 + timedelta(minutes=5) - timedelta(minutes=1)]


def test_records_read_again_unchanged_cost_the_channels_nothing(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config()
    source = ScriptedSource([rec("A", 1), rec("B", 2)])
    poll(db, cfg, source)
    db.execute("DELETE FROM outbox")
    outcome = poll(db, cfg, source)
    assert (outcome.records, outcome.changed) == (2, 0)
    assert outbox(db) == []


def test_a_change_bumps_the_version_and_a_waiting_row_takes_the_latest(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config()
    poll(db, cfg, ScriptedSource([rec("A", 1)]))
    poll(db, cfg, ScriptedSource([rec("A", 2, 1)]))
    poll(db, cfg, ScriptedSource([rec("A", 3, 2)]))
    rows = outbox(db)
    assert [(key, version, op) for key, version, op, _ in rows] == [("A@MAIN", 3, "upsert")]
    assert json.loads(rows[0][3])["on_hand"] == 3


def test_a_key_twice_in_one_page_keeps_the_latest(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config()
    poll(db, cfg, ScriptedSource([rec("A", 9, 3), rec("A", 1, 1)]))
    assert json.loads(outbox(db)[0][3])["on_hand"] == 9


def test_a_bad_record_is_quarantined_and_its_page_still_commits(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config()
    outcome = poll(db, cfg, ScriptedSource([rec("A", 1), rec("B", "lots"), {"code": "C", "modified": T0.isoformat()}]))
    assert (outcome.status, outcome.changed, outcome.quarantined) == ("ok", 1, 2)
    reasons = dict(db.execute("SELECT ref, reason FROM quarantine").fetchall())
    assert reasons == {"B": "BAD_VALUE", "C": "MISSING_FIELD"}
    poll(db, cfg, ScriptedSource([rec("B", 5, 1)]))
    assert db.execute("SELECT resolved_at IS NOT NULL FROM quarantine WHERE ref = 'B'").fetchone() == (1,)


def test_full_resync_sends_a_delete_with_the_last_known_record(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config('full_resync = "1h"')
    poll(db, cfg, ScriptedSource([rec("A", 1), rec("B", 2), rec("C", 3)]))
    db.execute("DELETE FROM outbox")
    db.execute("UPDATE domains SET resync_requested = 1")
    outcome = poll(db, cfg, ScriptedSource([rec("A", 1), rec("C", 3)]))
    assert outcome.deleted == 1
    [(key, version, op, payload)] = outbox(db)
    assert (key, version, op, json.loads(payload)["on_hand"]) == ("B@MAIN", 2, "delete", 2)
    # it comes back: an upsert with the next version
    poll(db, cfg, ScriptedSource([rec("B", 7, 9)]))
    assert [(k, v, o) for k, v, o, _ in outbox(db)] == [("B@MAIN", 3, "upsert")]


def test_full_resync_refuses_to_delete_more_than_max_delete_fraction(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config('full_resync = "1h"\nmax_delete_fraction = 0.5')
    poll(db, cfg, ScriptedSource([rec(c, 1) for c in "ABCD"]))
    db.execute("DELETE FROM outbox")
    db.execute("UPDATE domains SET resync_requested = 1")
    outcome = poll(db, cfg, ScriptedSource([rec("A", 1)]))
    assert (outcome.deleted, outcome.reason) == (0, "RESYNC_DELETE_GUARD")
    assert outbox(db) == []


def test_a_record_in_quarantine_is_never_deleted_by_a_full_resync(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config('full_resync = "1h"')
    poll(db, cfg, ScriptedSource([rec("A", 1), rec("B", 2), rec("C", 3)]))
    db.execute("DELETE FROM outbox")
    db.execute("UPDATE domains SET resync_requested = 1")
    outcome = poll(db, cfg, ScriptedSource([rec("A", 1), rec("B", "broken"), rec("C", 3)]))
    assert (outcome.quarantined, outcome.deleted) == (1, 0)
    assert outbox(db) == []


def test_pages_out_of_order_are_reported(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config()
    outcome = poll(db, cfg, ScriptedSource([rec("A", 1, 5)], [rec("B", 1, 1)]))
    assert (outcome.status, outcome.reason) == ("ok", "SOURCE_UNSORTED")


@respx.mock
def test_an_idle_domain_costs_one_request_per_poll(tmp_path):
    route = respx.get("http://erp.test/stock").respond(json={"data": [rec("A", 1)], "next_cursor": None})
    db, cfg = open_state(tmp_path / "s.db"), config()
    source = RestSource(cfg.erp, cfg.domains.inventory, erp_client(cfg.erp, ErpBudget(1000, 2), "inventory"), {})
    for _ in range(5):
        poll(db, cfg, source)
    assert route.call_count == 5
    assert db.execute("SELECT sum(requests), sum(changed) FROM poll_runs").fetchone() == (5, 1)


class FilteringSource:
    """An ERP endpoint: records at or after `since`, sorted by time, in pages of `page_size`."""

    def __init__(self, records: list[dict], page_size: int) -> None:
        self.records, self.page_size, self.requests = records, page_size, 0

    async def pages(self, since):
        chosen = sorted((r for r in self.records if since is None or datetime.fromisoformat(r["modified"]) >= since),
                        key=lambda r: r["modified"])
        for number, start in enumerate(range(0, max(len(chosen), 1), self.page_size), start=1):
            self.requests += 1
            yield Page(number, chosen[start:start + self.page_size])


def test_after_a_burst_an_idle_domain_settles_back_to_one_request_per_poll(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config(lookback="1m")
    # 250 changes within 25 s: all inside one lookback window, three pages of 100
    burst = [{**rec(f"K{n}", n), "modified": (T0 + timedelta(milliseconds=100 * n)).isoformat()} for n in range(250)]
    source = FilteringSource(burst, page_size=100)
    watermark = T0 + timedelta(milliseconds=24_900)
    costs = []
    for seconds in (30, 35, 100, 110, 120, 130):  # our clock at each poll; the burst ended at +25 s
        before = source.requests
        outcome = asyncio.run(poll_once(db, "inventory", cfg.domains.inventory, source, ["shop"],
                                        clock=lambda s=seconds: T0 + timedelta(seconds=s)))
        assert outcome.status == "ok"
        costs.append(source.requests - before)
    # +35 s: the window is not settled yet (a commit stamped +24.9 s may still land until +84.9 s),
    # +100 s: still re-reads what +35 s could not settle, then everything up to the watermark is settled
    assert costs == [3, 3, 3, 1, 1, 1]
    since = [parse_stamp(row[0]) for row in db.execute("SELECT since FROM poll_runs ORDER BY id")]
    assert since[1] == watermark - timedelta(minutes=1)
    assert since[2] == watermark - timedelta(seconds=55)  # settled by the +35 s poll: 5 s elapsed of the 60 s lookback
    assert since[3:] == [watermark] * 3
    assert db.execute("SELECT sum(changed) FROM poll_runs").fetchone() == (250,)


def test_a_change_after_settling_is_read_with_the_full_lookback_again(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config(lookback="1m")
    records = [rec("A", 1, 0)]
    source = FilteringSource(records, page_size=100)

    def poll_at(seconds: float):
        return asyncio.run(poll_once(db, "inventory", cfg.domains.inventory, source, ["shop"],
                                     clock=lambda: T0 + timedelta(seconds=seconds)))

    for seconds in (1, 120, 240):
        poll_at(seconds)
    records.append(rec("B", 2, 5))            # stamped +5m, read at +5m10s: the watermark moves
    assert poll_at(310).changed == 1
    records.append(rec("C", 3, 4))            # a late commit stamped +4m, inside the lookback of +5m
    assert poll_at(320).changed == 1
    since = [parse_stamp(row[0]) for row in db.execute("SELECT since FROM poll_runs ORDER BY id")]
    assert since[3] == T0  # settled up to the old watermark, not beyond it
    assert since[4] == T0 + timedelta(minutes=4)  # watermark +5m minus the lookback: the settled point does not hide C


def test_a_poll_that_pulls_the_watermark_back_settles_nothing(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config(lookback="1m")

    def poll_at(minutes: float, source):
        return asyncio.run(poll_once(db, "inventory", cfg.domains.inventory, source, ["shop"],
                                     clock=lambda: T0 + timedelta(minutes=minutes)))

    def settled():
        return parse_stamp(db.execute("SELECT settled FROM domains").fetchone()[0])

    poll_at(10, ScriptedSource([rec("A", 1, 0), rec("B", 1, 1)]))
    # C is read on page 1 at +2m and again on page 2 at +5m: it moved while we paged, so
    # records behind it may have shifted out of view; the watermark goes back to page 1's end
    assert poll_at(20, ScriptedSource([rec("C", 1, 2)], [rec("C", 2, 5)])).status == "ok"
    assert db.execute("SELECT watermark FROM domains").fetchone()[0] == stamp(T0 + timedelta(minutes=2))
    assert settled() is None  # this poll proved nothing: it may have missed records
    poll_at(30, ScriptedSource([rec("C", 2, 5)]))
    assert settled() == T0 + timedelta(minutes=2)  # a clean poll settles up to the watermark it started from


def test_the_pushers_are_woken_once_per_poll_that_changed_something(tmp_path):
    db, cfg = open_state(tmp_path / "s.db"), config()
    wakes = []

    def poll_with_wakes(source):
        return asyncio.run(poll_once(db, "inventory", cfg.domains.inventory, source, ["shop"],
                                     on_change=lambda: wakes.append(1)))

    poll_with_wakes(ScriptedSource([rec("A", 1)], [rec("B", 1)], [rec("C", 1)]))
    assert len(wakes) == 1  # three pages of changes, one wake: the batch is formed from the whole poll
    poll_with_wakes(ScriptedSource([rec("A", 1)], [rec("B", 1)], [rec("C", 1)]))
    assert len(wakes) == 1  # nothing changed, nobody woken


def test_the_erp_budget_spaces_requests_of_all_domains(tmp_path):
    """Two domains' clients share one budget: 10 requests at 20/s span at least 9 gaps of 1/20 s.

    A lower bound on elapsed time holds on any machine (a slow one only stretches it)."""
    stamps: list[float] = []

    def answer(request):
        stamps.append(asyncio.get_event_loop().time())
        return httpx.Response(200, json={"data": []})

    cfg = config()
    budget = ErpBudget(20, 2)

    async def main():
        with respx.mock:
            respx.get("http://erp.test/stock").mock(side_effect=answer)
            clients = [erp_client(cfg.erp, budget, name) for name in ("a", "b")]
            await asyncio.gather(*(clients[i % 2].get("/stock") for i in range(10)))
    asyncio.run(main())
    assert max(stamps) - min(stamps) >= 9 / 20 * 0.95, sorted(stamps)
    assert budget.requests == {"a": 5, "b": 5}
