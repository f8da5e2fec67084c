"""The ERP and storefront simulators, run as real processes through examples.launch."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.launch import Simulator, start_simulator

ERP = "examples.erp_simulator"
STORE = "examples.storefront_simulator"
MAX_PAGES = 200  # every paging loop is bounded by this


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def erp() -> Iterator[Simulator]:
    """A quiet ERP (no background changes): 60 products in two warehouses."""
    with start_simulator(ERP, "--products", "60", "--locations", "MAIN,EAST", "--change-rate", "0") as sim:
        yield sim


@pytest.fixture
def api(erp: Simulator) -> Iterator[httpx.Client]:
    """An httpx client for the ERP; faults are cleared afterwards."""
    with httpx.Client(base_url=erp.url, timeout=5) as client:
        yield client
    erp.post("/_sim/faults", {"burst_429": 0, "error_500": 0, "html": 0, "outage": False, "slow": 0})


@pytest.fixture(scope="module")
def store() -> Iterator[Simulator]:
    """A storefront with a bucket large enough never to limit the functional tests."""
    with start_simulator(STORE, "--rate", "1000", "--burst", "1000") as sim:
        yield sim


def fetch_all(client: httpx.Client, resource: str, **params: Any) -> list[dict[str, Any]]:
    """Every record of resource, following next_cursor (bounded)."""
    records: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        body = client.get(f"/api/{resource}", params=params).raise_for_status().json()
        records += body["data"]
        if body["next_cursor"] is None:
            return records
        params = {**params, "cursor": body["next_cursor"]}
    raise AssertionError("paging did not end")


def order_key(record: dict[str, Any]) -> tuple[str, int]:
    """(modified, id): the API's sort order (all timestamps share one UTC format)."""
    return record["modified"], record["id"]


def change(key: str, version: int, op: str = "upsert", domain: str = "inventory", **data: Any) -> dict[str, Any]:
    """One webhook change."""
    sku, _, location = key.partition("@")
    record = {"sku": sku, "location": location or "MAIN", "on_hand": 5, "reserved": 0, "available": 5, **data}
    return {"domain": domain, "key": key, "op": op, "version": version, "data": record if op == "upsert" else None}


def push(url: str, changes: list[dict[str, Any]], batch_id: str | None = None, secret: bytes | None = None,
         signature: str | None = None) -> httpx.Response:
    """POST a batch to the storefront webhook the way erpsync does."""
    batch_id = batch_id or uuid.uuid4().hex
    body = json.dumps({"channel": "store", "batch_id": batch_id, "changes": changes}).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": batch_id}
    if secret is not None:
        headers["X-Erpsync-Signature"] = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if signature is not None:
        headers["X-Erpsync-Signature"] = signature
    return httpx.post(f"{url}/erpsync", content=body, headers=headers, timeout=5)


# --------------------------------------------------------------------------- ERP: paging


def test_cursor_paging_covers_every_record_once_in_order(erp: Simulator, api: httpx.Client) -> None:
    first = api.get("/api/inventory", params={"limit": 7})
    assert first.status_code == 200
    assert first.headers["Link"].startswith(f"<{erp.url}/api/inventory?")
    assert first.headers["Link"].endswith('>; rel="next"')
    records = fetch_all(api, "inventory", limit=7)
    assert len(records) == len({r["id"] for r in records}) == first.json()["total"] == 120
    assert records == sorted(records, key=order_key)
    assert {(r["item_code"], r["warehouse"]) for r in records} == {
        (f"SKU-{n:05d}", w) for n in range(1, 61) for w in ("MAIN", "EAST")}


def test_link_header_leads_to_the_next_page(api: httpx.Client) -> None:
    first = api.get("/api/products", params={"limit": 50})
    second = api.get(first.headers["Link"].split(">")[0].lstrip("<"))
    assert second.json()["data"][0]["id"] not in {r["id"] for r in first.json()["data"]}
    assert second.json()["next_cursor"] is None and "Link" not in second.headers


def test_offset_and_page_paging(api: httpx.Client) -> None:
    everything = api.get("/api/prices", params={"limit": 1000}).json()["data"]
    by_offset, by_page = [], []
    for index in range(MAX_PAGES):
        page = api.get("/api/prices", params={"limit": 9, "offset": index * 9}).json()["data"]
        by_offset += page
        by_page += api.get("/api/prices", params={"limit": 9, "page": index + 1}).json()["data"]
        if not page:
            break
    assert by_offset == by_page == everything
    assert len(everything) == 60


def test_bad_query_parameters_are_400(api: httpx.Client) -> None:
    for params in ({"modified_after": "yesterday"}, {"limit": "0"}, {"limit": "x"}, {"cursor": "%%%"},
                   {"offset": "1", "page": "2"}, {"page": "0"}):
        response = api.get("/api/products", params=params)
        assert response.status_code == 400, params
        assert "error" in response.json()
    assert api.get("/api/nope").status_code == 404
    assert api.get("/nowhere").json() == {"error": "no such endpoint: GET /nowhere"}


def test_modified_after_is_inclusive(api: httpx.Client) -> None:
    everything = fetch_all(api, "products", limit=1000)
    pivot = everything[len(everything) // 2]["modified"]
    body = api.get("/api/products", params={"modified_after": pivot, "limit": 1000}).json()
    expected = [r for r in everything if r["modified"] >= pivot]
    assert body["data"] == expected and body["total"] == len(expected)
    assert body["data"][0]["modified"] == pivot


def test_tie_gives_records_one_timestamp_across_page_boundaries(erp: Simulator, api: httpx.Client) -> None:
    tie = erp.post("/_sim/tie", {"resource": "prices", "count": 5})
    assert tie["count"] == 5
    records = fetch_all(api, "prices", modified_after=tie["modified"], limit=2)
    tied = [r for r in records if r["modified"] == tie["modified"]]
    assert sorted(r["item_code"] for r in tied) == tie["keys"]
    assert [r["id"] for r in tied] == sorted(r["id"] for r in tied)


def test_late_commit_gets_an_older_timestamp(erp: Simulator, api: httpx.Client) -> None:
    newest = fetch_all(api, "inventory", limit=1000)[-1]
    record = erp.post("/_sim/mutate", {"resource": "inventory", "item_code": "SKU-00003", "warehouse": "EAST",
                                       "set": {"qty_on_hand": 999, "qty_reserved": 0}, "late_seconds": 7200})
    assert record["qty_on_hand"] == 999 and record["modified"] < newest["modified"]
    after_newest = api.get("/api/inventory", params={"modified_after": newest["modified"]}).json()["data"]
    assert record["id"] not in {r["id"] for r in after_newest}  # a cursor already past it never sees it
    assert erp.get("/_sim/truth")["inventory"]["SKU-00003@EAST"]["on_hand"] == 999


def test_mutate_bad_delete_and_add_reach_the_truth(erp: Simulator) -> None:
    erp.post("/_sim/bad", {"resource": "inventory", "item_code": "SKU-00010", "warehouse": "MAIN"})
    erp.post("/_sim/mutate", {"resource": "prices", "item_code": "SKU-00011", "set": {"rate": "7.50"}})
    erp.post("/_sim/delete", {"resource": "products", "item_code": "SKU-00012"})
    added = erp.post("/_sim/add", {"resource": "products", "count": 1})["added"]
    truth = erp.get("/_sim/truth")
    assert "inventory:SKU-00010@MAIN" in truth["invalid"] and "SKU-00010@MAIN" not in truth["inventory"]
    assert truth["price"]["SKU-00011"] == {"sku": "SKU-00011", "currency": "EUR", "amount": "7.50"}
    assert "SKU-00012" not in truth["product"]
    assert added == ["SKU-00061"] and "SKU-00061@EAST" in truth["inventory"]
    with pytest.raises(httpx.HTTPStatusError):
        erp.post("/_sim/mutate", {"resource": "products", "item_code": "SKU-99999", "set": {}})


# --------------------------------------------------------------------------- ERP: auth, faults, stats


def test_token_is_enforced_on_api_only() -> None:
    with start_simulator(ERP, "--products", "3", "--token", "s3cret") as sim:
        assert httpx.get(f"{sim.url}/api/products").status_code == 401
        wrong = httpx.get(f"{sim.url}/api/products", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "unauthorized"}
        good = httpx.get(f"{sim.url}/api/products", headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and len(good.json()["data"]) == 3
        assert sim.get("/_sim/stats")["status_counts"] == {"401": 2, "200": 1}


def test_burst_429_then_recovery(erp: Simulator, api: httpx.Client) -> None:
    assert erp.post("/_sim/faults", {"burst_429": 2})["burst_429"] == 2
    statuses = [api.get("/api/products") for _ in range(3)]
    assert [r.status_code for r in statuses] == [429, 429, 200]
    assert statuses[0].headers["Retry-After"] == "1"


def test_html_and_500_faults(erp: Simulator, api: httpx.Client) -> None:
    erp.post("/_sim/faults", {"error_500": 1, "html": 1})
    first, second, third = (api.get("/api/products") for _ in range(3))
    assert first.status_code == 500 and first.headers["Content-Type"].startswith("text/html")
    assert second.status_code == 200 and second.headers["Content-Type"].startswith("text/html")
    assert third.status_code == 200 and third.json()["data"]


def test_outage_drops_connections_then_recovers(erp: Simulator, api: httpx.Client) -> None:
    erp.post("/_sim/faults", {"outage": True})
    with pytest.raises(httpx.TransportError):
        api.get("/api/products")
    assert erp.get("/_sim/stats")["requests"] >= 1  # control endpoints still answer
    erp.post("/_sim/faults", {"outage": False})
    assert api.get("/api/products").status_code == 200


def test_unknown_fault_is_400(erp: Simulator) -> None:
    response = httpx.post(f"{erp.url}/_sim/faults", json={"explode": 1})
    assert response.status_code == 400 and "explode" in response.json()["error"]


def test_stats_count_requests(erp: Simulator, api: httpx.Client) -> None:
    erp.post("/_sim/stats/reset")
    for path in ("/api/products", "/api/products", "/api/inventory"):
        api.get(path)
    api.get("/api/products", params={"limit": "-1"})
    stats = erp.get("/_sim/stats")
    assert stats["requests"] == 4
    assert stats["by_path"] == {"/api/products": 3, "/api/inventory": 1}
    assert stats["status_counts"] == {"200": 3, "400": 1}
    assert stats["max_concurrent"] == 1 and 1 <= stats["max_per_second"] <= 4


def test_background_changes_and_rate_limit() -> None:
    with start_simulator(ERP, "--products", "5", "--change-rate", "200", "--rate-limit", "3") as sim:
        deadline = time.monotonic() + 3
        while sim.get("/_sim/stats")["changes"] < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sim.get("/_sim/stats")["changes"] >= 5
        statuses = [httpx.get(f"{sim.url}/api/prices").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]


def test_sigterm_exits_zero_and_orphans_exit(tmp_path: Path) -> None:
    sim = start_simulator(ERP, "--products", "1")
    sim.stop()
    assert sim.process.returncode == 0
    script = ("import sys, os; from examples.launch import start_simulator;"
              f"sim = start_simulator({ERP!r}, '--products', '1'); print(sim.process.pid, flush=True); os._exit(0)")
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=15,
                            cwd=Path(__file__).resolve().parent.parent)
    orphan = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 5
    while alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(orphan)


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


# --------------------------------------------------------------------------- storefront


def test_store_applies_upserts_and_deletes(store: Simulator) -> None:
    response = push(store.url, [change("SKU-1@MAIN", 1, on_hand=7), change("SKU-2@MAIN", 1)])
    assert response.status_code == 200
    assert response.json()["results"] == [
        {"key": "SKU-1@MAIN", "domain": "inventory", "status": "ok", "reason": None, "retryable": False},
        {"key": "SKU-2@MAIN", "domain": "inventory", "status": "ok", "reason": None, "retryable": False}]
    assert push(store.url, [change("SKU-2@MAIN", 2, op="delete")]).status_code == 200
    state = store.get("/_sim/state")
    assert state["inventory"]["SKU-1@MAIN"]["on_hand"] == 7
    assert "SKU-2@MAIN" not in state["inventory"]
    assert state["versions"]["inventory:SKU-2@MAIN"] == 2


def test_store_rejects_reject_skus(store: Simulator) -> None:
    result = push(store.url, [change("REJECT-1@MAIN", 1), change("OK-1@MAIN", 1)]).json()["results"]
    assert result[0] == {"key": "REJECT-1@MAIN", "domain": "inventory", "status": "error",
                         "reason": "VALIDATION", "retryable": False}
    assert result[1]["status"] == "ok"
    assert "REJECT-1@MAIN" not in store.get("/_sim/state")["inventory"]


def test_store_replays_a_batch_without_reapplying(store: Simulator) -> None:
    batch_id = uuid.uuid4().hex
    first = push(store.url, [change("SKU-R@MAIN", 1)], batch_id=batch_id)
    before = store.get("/_sim/stats")
    again = push(store.url, [change("SKU-R@MAIN", 1)], batch_id=batch_id)
    after = store.get("/_sim/stats")
    assert again.json() == first.json()
    assert after["replays"] == before["replays"] + 1
    assert after["changes_applied"] == before["changes_applied"]
    assert after["duplicates"] == before["duplicates"]


def test_store_counts_version_regressions(store: Simulator) -> None:
    before = store.get("/_sim/stats")
    push(store.url, [change("SKU-V@MAIN", 5, on_hand=50)])
    stale = push(store.url, [change("SKU-V@MAIN", 3, on_hand=30)])
    push(store.url, [change("SKU-V@MAIN", 5, on_hand=50)])
    assert stale.json()["results"][0]["status"] == "ok"
    stats = store.get("/_sim/stats")
    assert stats["regressions"] == before["regressions"] + 1
    assert {"domain": "inventory", "key": "SKU-V@MAIN", "had": 5, "got": 3} in stats["regression_details"]
    assert stats["duplicates"] == before["duplicates"] + 1
    assert store.get("/_sim/state")["inventory"]["SKU-V@MAIN"]["on_hand"] == 50


def test_store_rejects_malformed_batches(store: Simulator) -> None:
    body = json.dumps({"channel": "store", "batch_id": "b1", "changes": []})
    wrong_key = httpx.post(f"{store.url}/erpsync", content=body, headers={"Idempotency-Key": "b2"})
    assert wrong_key.status_code == 400 and "Idempotency-Key" in wrong_key.json()["error"]
    assert httpx.post(f"{store.url}/erpsync", content=b"{", headers={"Idempotency-Key": "b1"}).status_code == 400
    bad_op = push(store.url, [{**change("SKU-1@MAIN", 9), "op": "merge"}])
    assert bad_op.status_code == 400 and "op" in bad_op.json()["error"]


def test_store_faults(store: Simulator) -> None:
    store.post("/_sim/faults", {"burst_429": 1, "error_503": 1, "garbage": 1})
    try:
        responses = [push(store.url, [change("SKU-F@MAIN", 1)]) for _ in range(4)]
        assert [r.status_code for r in responses] == [429, 503, 200, 200]
        assert responses[2].text == "<html>oops</html>" and "SKU-F@MAIN" in store.get("/_sim/state")["inventory"]
        store.post("/_sim/faults", {"outage": True})
        with pytest.raises(httpx.TransportError):
            push(store.url, [change("SKU-F@MAIN", 2)])
    finally:
        store.post("/_sim/faults", {"outage": False, "burst_429": 0, "error_503": 0, "garbage": 0})
    assert store.get("/_sim/stats")["injected_429"] >= 1


def test_store_bucket_answers_429_with_retry_after() -> None:
    with start_simulator(STORE, "--rate", "0.5", "--burst", "2") as sim:
        statuses = [push(sim.url, [change(f"SKU-{n}@MAIN", 1)]) for n in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert int(statuses[2].headers["Retry-After"]) >= 1
        stats = sim.get("/_sim/stats")
        assert stats["rate_limited"] == 1 and stats["injected_429"] == 0
        assert stats["accepted_batches"] == 2 and len(stats["request_times"]) == 2
        assert "SKU-2@MAIN" not in sim.get("/_sim/state")["inventory"]


def test_store_verifies_signatures() -> None:
    with start_simulator(STORE, "--secret-env", "SIM_TEST_SECRET", env={"SIM_TEST_SECRET": "k3y"}) as sim:
        assert push(sim.url, [change("SKU-S@MAIN", 1)], secret=b"k3y").status_code == 200
        bad = push(sim.url, [change("SKU-S@MAIN", 2)], signature="sha256=" + "0" * 64)
        assert bad.status_code == 401 and bad.json() == {"error": "bad signature"}
        assert push(sim.url, [change("SKU-S@MAIN", 3)]).status_code == 401
        assert push(sim.url, [change("SKU-S@MAIN", 4)], secret=b"other").status_code == 401
        stats = sim.get("/_sim/stats")
        assert stats["bad_signatures"] == 3 and stats["changes_applied"] == 1
        assert sim.get("/_sim/state")["versions"] == {"inventory:SKU-S@MAIN": 1}
