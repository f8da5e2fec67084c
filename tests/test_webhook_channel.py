"""The generic webhook channel against exact platform replies (respx): the DESIGN.md contract."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
import respx

from adapters.channels import build_channel
from adapters.channels.webhook import WebhookChannel
from connector.changes import Batch, Change, SendError
from connector.config import parse_config
from tests.conftest import BASE_TOML, ENV

URL = "http://127.0.0.1:9000/erpsync"  # channels.store.url in BASE_TOML
SECRET = ENV["STORE_SECRET"]

INV_1 = Change("inventory", "SKU-1@MAIN", "upsert", 7,
               {"sku": "SKU-1", "location": "MAIN", "on_hand": 20, "reserved": 3, "available": 17})
INV_2 = Change("inventory", "SKU-2@MAIN", "upsert", 3,
               {"sku": "SKU-2", "location": "MAIN", "on_hand": 5, "reserved": 0, "available": 5})
INV_3 = Change("inventory", "SKU-3@MAIN", "delete", 4,
               {"sku": "SKU-3", "location": "MAIN", "on_hand": 0, "reserved": 0, "available": 0})


def channel(secret: bool = True) -> WebhookChannel:
    text = BASE_TOML if secret else BASE_TOML.replace('secret_env = "STORE_SECRET"\n', "")
    config = parse_config(text, Path("/tmp/webhook.toml"), ENV)
    return WebhookChannel("store", config.channels["store"], httpx.AsyncClient(), ENV)


def batch(*changes: Change, batch_id: str = "b-0001") -> Batch:
    return Batch("store", batch_id, list(changes or (INV_1, INV_2, INV_3)))


def send(adapter: WebhookChannel, the_batch: Batch):
    async def go():
        try:
            return await adapter.send(the_batch)
        finally:
            await adapter.aclose()

    return asyncio.run(go())


def send_error(adapter: WebhookChannel, the_batch: Batch) -> SendError:
    with pytest.raises(SendError) as caught:
        send(adapter, the_batch)
    return caught.value


def statuses(results) -> dict[str, tuple]:
    return {(r.domain, r.key): (r.status, r.reason) for r in results}


# -- the request ---------------------------------------------------------------------


@respx.mock
def test_the_body_is_exactly_the_contract_as_compact_json():
    route = respx.post(URL).respond(200)
    send(channel(), batch(INV_1, INV_3, batch_id="batch-42"))
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "channel": "store",
        "batch_id": "batch-42",
        "changes": [
            {"domain": "inventory", "key": "SKU-1@MAIN", "op": "upsert", "version": 7,
             "data": {"sku": "SKU-1", "location": "MAIN", "on_hand": 20, "reserved": 3, "available": 17}},
            {"domain": "inventory", "key": "SKU-3@MAIN", "op": "delete", "version": 4,
             "data": {"sku": "SKU-3", "location": "MAIN", "on_hand": 0, "reserved": 0, "available": 0}},
        ],
    }
    # compact: no whitespace between tokens, keys in contract order
    assert request.content.startswith(b'{"channel":"store","batch_id":"batch-42","changes":[{"domain":"inventory",'
                                      b'"key":"SKU-1@MAIN","op":"upsert","version":7,"data":{')
    assert b", " not in request.content and b": " not in request.content


@respx.mock
def test_the_idempotency_key_is_the_batch_id():
    route = respx.post(URL).respond(200)
    send(channel(), batch(batch_id="7d0c6a52-0f4e-4f4b-9d3c-1f0e2f6a9b11"))
    assert route.calls.last.request.headers["Idempotency-Key"] == "7d0c6a52-0f4e-4f4b-9d3c-1f0e2f6a9b11"


@respx.mock
def test_the_signature_is_the_hmac_sha256_of_the_raw_body_when_a_secret_is_set():
    route = respx.post(URL).respond(200)
    send(channel(secret=True), batch())
    request = route.calls.last.request
    expected = hmac.new(SECRET.encode(), request.content, hashlib.sha256).hexdigest()
    assert request.headers["X-Erpsync-Signature"] == f"sha256={expected}"
    wrong = hmac.new(b"another-secret", request.content, hashlib.sha256).hexdigest()
    assert request.headers["X-Erpsync-Signature"] != f"sha256={wrong}"


@respx.mock
def test_no_signature_header_without_a_secret():
    route = respx.post(URL).respond(200)
    send(channel(secret=False), batch())
    assert "X-Erpsync-Signature" not in route.calls.last.request.headers


@respx.mock
def test_non_ascii_data_is_sent_as_utf8_and_signed_as_sent():
    route = respx.post(URL).respond(200)
    change = Change("product", "SKU-Ü", "upsert", 1, {"sku": "SKU-Ü", "title": "Größe €"})
    send(channel(), batch(change))
    request = route.calls.last.request
    assert "Größe €".encode() in request.content
    assert json.loads(request.content)["changes"][0]["data"]["title"] == "Größe €"
    expected = hmac.new(SECRET.encode(), request.content, hashlib.sha256).hexdigest()
    assert request.headers["X-Erpsync-Signature"] == f"sha256={expected}"


@respx.mock
def test_build_channel_gives_the_webhook_adapter_the_configured_timeout():
    config = parse_config(BASE_TOML + 'timeout = "7s"\n', Path("/tmp/webhook.toml"), ENV)
    adapter = build_channel("store", config.channels["store"], ENV)
    assert isinstance(adapter, WebhookChannel)
    assert adapter.client.timeout.read == 7.0
    route = respx.post(URL).respond(200)
    send(adapter, batch())
    assert route.calls.last.request.headers["Idempotency-Key"] == "b-0001"


# -- per-change results on 2xx -------------------------------------------------------


@respx.mock
def test_a_non_retryable_error_result_dead_letters_that_change_only():
    respx.post(URL).respond(200, json={"results": [
        {"key": "SKU-1@MAIN", "status": "ok"},
        {"key": "SKU-2@MAIN", "status": "error", "reason": "VALIDATION", "retryable": False,
         "message": "available must be >= 0"},
    ]})
    results = send(channel(), batch())
    assert statuses(results) == {
        ("inventory", "SKU-1@MAIN"): ("ok", None),
        ("inventory", "SKU-2@MAIN"): ("dead", "VALIDATION"),
        ("inventory", "SKU-3@MAIN"): ("ok", None),
    }
    dead = next(r for r in results if r.status == "dead")
    assert dead.message == "available must be >= 0"


@respx.mock
def test_a_retryable_error_result_asks_to_retry_that_change():
    respx.post(URL).respond(200, json={"results": [
        {"key": "SKU-3@MAIN", "status": "error", "reason": "LOCKED", "retryable": True, "retry_after": 12},
    ]})
    results = send(channel(), batch())
    assert statuses(results) == {
        ("inventory", "SKU-1@MAIN"): ("ok", None),
        ("inventory", "SKU-2@MAIN"): ("ok", None),
        ("inventory", "SKU-3@MAIN"): ("retry", "LOCKED"),
    }
    assert next(r for r in results if r.status == "retry").retry_after == 12.0


@respx.mock
def test_results_come_back_in_batch_order_one_per_change():
    respx.post(URL).respond(200, json={"results": [
        {"key": "SKU-3@MAIN", "status": "ok"}, {"key": "SKU-1@MAIN", "status": "ok"}]})
    results = send(channel(), batch())
    assert [r.key for r in results] == ["SKU-1@MAIN", "SKU-2@MAIN", "SKU-3@MAIN"]


@respx.mock
def test_a_change_the_results_do_not_mention_was_accepted():
    respx.post(URL).respond(200, json={"results": [{"key": "SKU-2@MAIN", "status": "ok"}]})
    assert {r.status for r in send(channel(), batch())} == {"ok"}


@pytest.mark.parametrize("reply", [
    httpx.Response(200, text="OK"),
    httpx.Response(200, text="<html><body>thanks</body></html>", headers={"Content-Type": "text/html"}),
    httpx.Response(204),
    httpx.Response(202, content=b"\xff\xfe not utf-8"),
    httpx.Response(200, json=["not", "an", "object"]),
    httpx.Response(200, json={"results": "all good"}),
], ids=["text", "html", "204-empty", "binary", "json-list", "results-not-a-list"])
@respx.mock
def test_a_2xx_without_a_results_list_accepts_every_change(reply):
    respx.post(URL).mock(return_value=reply)
    results = send(channel(), batch())
    assert [(r.key, r.status) for r in results] == [
        ("SKU-1@MAIN", "ok"), ("SKU-2@MAIN", "ok"), ("SKU-3@MAIN", "ok")]


@respx.mock
def test_results_are_matched_by_domain_and_key_when_the_domain_is_given():
    price = Change("price", "SKU-1", "upsert", 2, {"sku": "SKU-1", "amount": "9.90"})
    stock = Change("inventory", "SKU-1", "upsert", 5, {"sku": "SKU-1", "available": 4})
    respx.post(URL).respond(200, json={"results": [
        {"domain": "price", "key": "SKU-1", "status": "error", "reason": "VALIDATION", "retryable": False},
        {"domain": "inventory", "key": "SKU-1", "status": "ok"},
    ]})
    results = send(channel(), batch(stock, price))
    assert statuses(results) == {("inventory", "SKU-1"): ("ok", None), ("price", "SKU-1"): ("dead", "VALIDATION")}


@respx.mock
def test_a_result_for_another_domain_does_not_touch_a_change_with_the_same_key():
    stock = Change("inventory", "SKU-1", "upsert", 5, {"sku": "SKU-1", "available": 4})
    respx.post(URL).respond(200, json={"results": [
        {"domain": "price", "key": "SKU-1", "status": "error", "reason": "VALIDATION", "retryable": False}]})
    assert statuses(send(channel(), batch(stock))) == {("inventory", "SKU-1"): ("ok", None)}


@respx.mock
def test_an_error_result_without_a_reason_still_has_a_reason_code():
    respx.post(URL).respond(200, json={"results": [{"key": "SKU-1@MAIN", "status": "error"}]})
    results = send(channel(), batch())
    assert statuses(results)[("inventory", "SKU-1@MAIN")] == ("dead", "REJECTED")
    assert results[0].message


# -- whole-batch failures ------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
@respx.mock
def test_429_and_503_are_rate_limited_for_retry_after_seconds(status):
    respx.post(URL).respond(status, headers={"Retry-After": "17"})
    error = send_error(channel(), batch())
    assert (error.kind, error.reason, error.retry_after) == ("rate_limited", f"HTTP_{status}", 17.0)


@pytest.mark.parametrize("status", [429, 503])
@respx.mock
def test_429_and_503_read_an_http_date_retry_after(status):
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    respx.post(URL).respond(status, headers={"Retry-After": format_datetime(when, usegmt=True)})
    error = send_error(channel(), batch())
    assert error.kind == "rate_limited"
    assert 117 <= error.retry_after <= 121


@respx.mock
def test_a_429_with_retry_after_zero_means_retry_now():
    respx.post(URL).respond(429, headers={"Retry-After": "0"})
    error = send_error(channel(), batch())
    assert (error.kind, error.retry_after) == ("rate_limited", 0.0)


@respx.mock
def test_a_429_without_retry_after_still_waits_a_little():
    respx.post(URL).respond(429)
    error = send_error(channel(), batch())
    assert error.kind == "rate_limited" and error.retry_after > 0


@pytest.mark.parametrize("status", [500, 502, 504])
@respx.mock
def test_5xx_other_than_503_is_transient_with_its_status(status):
    respx.post(URL).respond(status, text="upstream exploded")
    error = send_error(channel(), batch())
    assert (error.kind, error.reason) == ("transient", f"HTTP_{status}")
    assert "upstream exploded" in str(error)


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
@respx.mock
def test_other_4xx_is_permanent_with_reason_http_code(status):
    respx.post(URL).respond(status, json={"error": "no such endpoint"})
    error = send_error(channel(), batch())
    assert (error.kind, error.reason) == ("permanent", f"HTTP_{status}")
    assert "no such endpoint" in str(error)


@pytest.mark.parametrize("timeout", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.WriteTimeout])
@respx.mock
def test_a_timeout_is_transient_timeout(timeout):
    respx.post(URL).mock(side_effect=timeout)
    error = send_error(channel(), batch())
    assert (error.kind, error.reason) == ("transient", "TIMEOUT")


@respx.mock
def test_connection_refused_is_unreachable():
    respx.post(URL).mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
    error = send_error(channel(), batch())
    assert (error.kind, error.reason) == ("unreachable", "UNREACHABLE")
    assert "Connection refused" in str(error)


def test_a_real_closed_port_is_unreachable():
    # no respx: a port nothing listens on, so the refusal comes from the OS
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = parse_config(BASE_TOML.replace("127.0.0.1:9000", f"127.0.0.1:{port}"), Path("/tmp/w.toml"), ENV)
    adapter = WebhookChannel("store", config.channels["store"], httpx.AsyncClient(), ENV)
    error = send_error(adapter, batch())
    assert error.kind == "unreachable"
