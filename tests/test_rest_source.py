"""The generic REST source against exact reply shapes (respx): pagination, auth, formats, garbage."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import respx

from adapters.sources.rest import RestSource, SourceError
from connector.config import parse_config
from connector.erp_budget import ErpBudget, erp_client
from connector.poller import poll_once
from state.db import open_state

BASE = "http://erp.test"
SINCE = datetime(2026, 11, 25, 10, 0, 0, tzinfo=timezone.utc)
ENV = {"ERP_TOKEN": "tok-123", "ERP_PASSWORD": "pw-456", "ERP_KEY": "k1", "ERP_SECRET": "s2"}


def config_text(request: str, auth: str = 'auth = { type = "none" }', record: str = 'record = { key = "code", updated = "modified" }') -> str:
    return f"""
[erp]
base_url = "{BASE}"
max_requests_per_second = 1000
{auth}

[domains.inventory]
interval = "1m"
lookback = "0s"
{record}
fields = {{ sku = "code", location = "loc", on_hand = "qty" }}

[domains.inventory.request]
path = "/api/stock"
page_size = 2
{request}

[channels.shop]
kind = "webhook"
url = "http://shop.test/hook"
domains = ["inventory"]
"""


def make(request: str, **kwargs) -> tuple[RestSource, object]:
    config = parse_config(config_text(request, **kwargs), Path("/tmp/test.toml"), ENV)
    domain_cfg = config.domains.inventory
    client = erp_client(config.erp, ErpBudget(1000, 4), "inventory")
    return RestSource(config.erp, domain_cfg, client, ENV), config


def rec(n: int, modified: str = "2026-11-25T10:00:00Z") -> dict:
    return {"code": f"SKU-{n}", "loc": "MAIN", "qty": n, "modified": modified}


async def collect(source: RestSource, since=SINCE) -> list[list[dict]]:
    return [page.records async for page in source.pages(since)]


def run(coro):
    return asyncio.run(coro)


@respx.mock
def test_no_pagination_is_one_request_with_the_iso_modified_parameter():
    route = respx.get(f"{BASE}/api/stock").respond(json={"data": [rec(1), rec(2), rec(3)]})
    source, _ = make('modified_param = "since"\npagination = { style = "none" }')
    pages = run(collect(source))
    assert pages == [[rec(1), rec(2), rec(3)]]
    assert route.calls.last.request.url.params["since"] == "2026-11-25T10:00:00.000000+00:00"
    assert source.requests == 1


@respx.mock
def test_page_pagination_counts_pages_and_stops_at_a_short_page():
    route = respx.get(f"{BASE}/api/stock")
    route.side_effect = lambda request: httpx.Response(200, json={"data": {
        "1": [rec(1), rec(2)], "2": [rec(3), rec(4)], "3": [rec(5)]}[request.url.params["p"]]})
    source, _ = make('pagination = { style = "page", page_param = "p", limit_param = "per_page" }')
    pages = run(collect(source))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [c.request.url.params["per_page"] for c in route.calls] == ["2", "2", "2"]


@respx.mock
def test_offset_pagination_advances_by_records_received():
    data = [rec(n) for n in range(1, 6)]
    route = respx.get(f"{BASE}/api/stock")
    route.side_effect = lambda request: httpx.Response(200, json={"data": data[
        int(request.url.params["skip"]): int(request.url.params["skip"]) + int(request.url.params["take"])]})
    source, _ = make('pagination = { style = "offset", offset_param = "skip", limit_param = "take" }')
    pages = run(collect(source))
    assert [r["code"] for p in pages for r in p] == [f"SKU-{n}" for n in range(1, 6)]
    assert [c.request.url.params["skip"] for c in route.calls] == ["0", "2", "4"]


@respx.mock
def test_an_exact_multiple_of_the_page_size_costs_one_empty_page():
    route = respx.get(f"{BASE}/api/stock")
    route.side_effect = [httpx.Response(200, json={"data": [rec(1), rec(2)]}), httpx.Response(200, json={"data": []})]
    source, _ = make('pagination = { style = "offset" }')
    assert [len(p) for p in run(collect(source))] == [2, 0]


@respx.mock
def test_cursor_pagination_follows_the_token_in_the_body():
    route = respx.get(f"{BASE}/api/stock")
    route.side_effect = [
        httpx.Response(200, json={"items": [rec(1), rec(2)], "meta": {"next": "c2"}}),
        httpx.Response(200, json={"items": [rec(3)], "meta": {"next": None}}),
    ]
    source, _ = make('records = "items"\npagination = { style = "cursor", cursor_param = "after", next_cursor = "meta.next" }')
    assert [len(p) for p in run(collect(source))] == [2, 1]
    assert "after" not in route.calls[0].request.url.params
    assert route.calls[1].request.url.params["after"] == "c2"
    assert route.calls[1].request.url.params["limit"] == "2"


@respx.mock
def test_a_repeated_cursor_is_a_pagination_loop():
    respx.get(f"{BASE}/api/stock").respond(json={"data": [rec(1), rec(2)], "next_cursor": "same"})
    source, _ = make('pagination = { style = "cursor" }')
    with pytest.raises(SourceError) as caught:
        run(collect(source))
    assert caught.value.reason == "PAGINATION_LOOP"


@respx.mock
def test_link_header_pagination_follows_rel_next():
    # RFC 8288: Link: <url>; rel="next"
    respx.get(f"{BASE}/api/stock", params__contains={"page": "2"}).respond(json=[rec(3)])
    respx.get(f"{BASE}/api/stock").respond(
        json=[rec(1), rec(2)], headers={"Link": f'<{BASE}/api/stock?page=2&limit=2>; rel="next", <{BASE}/x>; rel="last"'})
    source, _ = make('records = ""\npagination = { style = "link_header" }')
    assert [len(p) for p in run(collect(source))] == [2, 1]


@respx.mock
def test_a_next_link_to_another_host_is_refused():
    respx.get(f"{BASE}/api/stock").respond(json=[rec(1)], headers={"Link": '<http://evil.test/steal>; rel="next"'})
    source, _ = make('records = ""\npagination = { style = "link_header" }')
    with pytest.raises(SourceError) as caught:
        run(collect(source))
    assert caught.value.reason == "ERP_BAD_RESPONSE"


@respx.mock
def test_odata_pagination_follows_the_next_link_and_asks_for_a_page_size():
    # OData v4: "@odata.nextLink" in the body; Prefer: odata.maxpagesize asks for the page size
    respx.get(f"{BASE}/api/stock", params__contains={"$skiptoken": "abc"}).respond(json={"value": [rec(3)]})
    first = respx.get(f"{BASE}/api/stock").respond(
        json={"value": [rec(1), rec(2)], "@odata.nextLink": f"{BASE}/api/stock?$skiptoken=abc"})
    source, _ = make('records = "value"\npagination = { style = "odata" }')
    assert [len(p) for p in run(collect(source))] == [2, 1]
    assert first.calls[0].request.headers["Prefer"] == "odata.maxpagesize=2"


@pytest.mark.parametrize(("fmt", "zone", "expected"), [
    ("epoch_s", "UTC", "1795600800"),
    ("epoch_ms", "UTC", "1795600800000"),
    ("%Y-%m-%d %H:%M:%S", "Europe/Berlin", "2026-11-25 11:00:00"),
    ("iso8601", "America/New_York", "2026-11-25T05:00:00.000000-05:00"),
])
@respx.mock
def test_the_modified_parameter_in_each_format(fmt, zone, expected):
    route = respx.get(f"{BASE}/api/stock").respond(json={"data": []})
    source, _ = make(f'modified_param = "changed_since"\nmodified_format = "{fmt}"\ntimezone = "{zone}"')
    run(collect(source))
    assert route.calls.last.request.url.params["changed_since"] == expected


@pytest.mark.parametrize(("auth", "header", "value"), [
    ('auth = { type = "bearer", token_env = "ERP_TOKEN" }', "authorization", "Bearer tok-123"),
    ('auth = { type = "basic", username = "sync", password_env = "ERP_PASSWORD" }', "authorization",
     "Basic " + base64.b64encode(b"sync:pw-456").decode()),
    ('auth = { type = "header", value = "token {key}:{secret}", env = { key = "ERP_KEY", secret = "ERP_SECRET" } }',
     "authorization", "token k1:s2"),
    ('auth = { type = "header", name = "X-Api-Key", value = "{key}", env = { key = "ERP_KEY" } }', "x-api-key", "k1"),
])
@respx.mock
def test_each_auth_kind_sends_its_header(auth, header, value):
    route = respx.get(f"{BASE}/api/stock").respond(json={"data": []})
    source, _ = make("", auth=auth)
    run(collect(source))
    assert route.calls.last.request.headers[header] == value


@respx.mock
def test_no_auth_sends_no_authorization_header():
    route = respx.get(f"{BASE}/api/stock").respond(json={"data": []})
    source, _ = make("")
    run(collect(source))
    assert "authorization" not in route.calls.last.request.headers


@respx.mock
def test_html_instead_of_json_is_a_clear_error():
    respx.get(f"{BASE}/api/stock").respond(200, text="<html><body>Login</body></html>", headers={"Content-Type": "text/html"})
    source, _ = make("")
    with pytest.raises(SourceError) as caught:
        run(collect(source))
    assert caught.value.reason == "ERP_BAD_RESPONSE"
    assert "text/html" in str(caught.value) and "<html>" in str(caught.value)


@respx.mock
def test_a_missing_records_path_names_the_keys_it_found():
    respx.get(f"{BASE}/api/stock").respond(json={"rows": [], "count": 0})
    source, _ = make('records = "data"')
    with pytest.raises(SourceError) as caught:
        run(collect(source))
    assert caught.value.reason == "ERP_RECORDS_PATH"
    assert "rows, count" in str(caught.value)


@respx.mock
def test_429_waits_for_retry_after_then_succeeds():
    route = respx.get(f"{BASE}/api/stock")
    route.side_effect = [httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(200, json={"data": [rec(1)]})]
    source, _ = make("")
    assert run(collect(source)) == [[rec(1)]]
    assert route.call_count == 2


@respx.mock
def test_5xx_is_retried_then_reported_with_its_status():
    route = respx.get(f"{BASE}/api/stock").respond(500, text="boom")
    source, _ = make("")
    with pytest.raises(SourceError) as caught:
        run(collect(source))
    assert caught.value.reason == "ERP_HTTP_500"
    assert route.call_count == 3


@respx.mock
def test_401_is_an_auth_error_without_retries():
    route = respx.get(f"{BASE}/api/stock").respond(401, json={"error": "bad token"})
    source, _ = make("")
    with pytest.raises(SourceError) as caught:
        run(collect(source))
    assert caught.value.reason == "ERP_AUTH" and route.call_count == 1


@respx.mock
def test_a_non_date_in_the_updated_field_fails_the_poll_and_commits_nothing(tmp_path):
    respx.get(f"{BASE}/api/stock").respond(json={"data": [rec(1), rec(2, modified="yesterday")]})
    source, config = make("")
    db = open_state(tmp_path / "state.db")
    outcome = run(poll_once(db, "inventory", config.domains.inventory, source, ["shop"]))
    assert (outcome.status, outcome.reason) == ("failed", "BAD_TIMESTAMP")
    assert "SKU-2" in outcome.message and "yesterday" in outcome.message
    assert db.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    assert db.execute("SELECT watermark FROM domains").fetchone()[0] is None


@respx.mock
def test_a_garbage_answer_mid_poll_keeps_the_pages_before_it(tmp_path):
    route = respx.get(f"{BASE}/api/stock")
    route.side_effect = [
        httpx.Response(200, json={"data": [rec(1), rec(2)], "next_cursor": "c2"}),
        httpx.Response(200, text="<html>oops</html>"),
    ]
    source, config = make('pagination = { style = "cursor" }')
    db = open_state(tmp_path / "state.db")
    outcome = run(poll_once(db, "inventory", config.domains.inventory, source, ["shop"]))
    assert (outcome.status, outcome.reason, outcome.pages) == ("failed", "ERP_BAD_RESPONSE", 1)
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2
    payload = json.loads(db.execute("SELECT payload FROM outbox ORDER BY id").fetchone()[0])
    assert payload == {"sku": "SKU-1", "location": "MAIN", "on_hand": 1, "reserved": 0, "available": 1}
