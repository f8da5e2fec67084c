"""End to end with real processes on 127.0.0.1: the daemon between the ERP and storefront simulators."""

from __future__ import annotations

import random
import time

import pytest

from connector.demo import compare
from examples.launch import start_simulator
from state.lock import EX_TEMPFAIL
from tests.running import ENV, Daemon, daemon_toml, erp_args, freeze_and_settle, query, shop_args, wait_for

DOMAINS = ["product", "price", "inventory"]


@pytest.fixture
def sims():
    erp = start_simulator("examples.erp_simulator", *erp_args("--products", "120", "--change-rate", "30"))
    shop = start_simulator("examples.storefront_simulator", *shop_args("--rate", "20", "--burst", "5"), env=ENV)
    yield erp, shop
    shop.stop()
    erp.stop()


def assert_converged(erp, shop) -> int:
    matched, differ = compare(erp.get("/_sim/truth"), shop.get("/_sim/state"))
    assert differ == [], differ[:5]
    stats = shop.get("/_sim/stats")
    assert stats["regressions"] == 0, stats["regression_details"][:5]
    return matched


def start_after_first_sync(erp, shop, tmp_path) -> Daemon:
    """A daemon on both simulators that has pushed the initial load (120 products x 3 domains)."""
    config = tmp_path / "erpsync.toml"
    config.write_text(daemon_toml(erp.url, shop.url))
    daemon = Daemon(config).start()
    try:
        wait_for(lambda: shop.get("/_sim/stats")["changes_applied"] >= 360, 30, what="the first sync")
    except BaseException:
        daemon.terminate()
        raise
    return daemon


def test_sigkill_ten_times_while_the_erp_changes_loses_nothing_and_never_regresses(sims, tmp_path):
    erp, shop = sims
    config = tmp_path / "erpsync.toml"
    config.write_text(daemon_toml(erp.url, shop.url, batch_size=20))
    rng = random.Random(7)
    for round_ in range(10):
        daemon = Daemon(config).start()
        time.sleep(rng.uniform(0.4, 1.6))
        assert daemon.alive(), daemon.output()
        daemon.kill()
    daemon = Daemon(config).start()
    try:
        freeze_and_settle(erp, tmp_path / "state.db", DOMAINS)
    finally:
        assert daemon.terminate() == 0, daemon.output()
    matched = assert_converged(erp, shop)
    assert matched == 120 * 3
    stats = shop.get("/_sim/stats")
    assert stats["changes_applied"] > 360  # the initial load plus changes made while being killed
    assert query(tmp_path / "state.db", "SELECT count(*) FROM dead_letters") == [(0,)]


def test_sigterm_stops_cleanly_and_a_second_daemon_is_refused_while_one_runs(sims, tmp_path):
    erp, shop = sims
    config = tmp_path / "erpsync.toml"
    config.write_text(daemon_toml(erp.url, shop.url))
    first = Daemon(config).start()
    wait_for(lambda: query(tmp_path / "state.db", "SELECT count(*) FROM poll_runs")[0][0] > 0
             if (tmp_path / "state.db").exists() else False, 20, what="the first poll")
    second = Daemon(config).start()
    assert second.process.wait(20) == EX_TEMPFAIL
    assert f"pid {first.process.pid}" in second.output() and "Traceback" not in second.output()
    first.kill()  # the lock dies with its owner, even on SIGKILL
    third = Daemon(config).start()
    try:
        wait_for(lambda: "erpsync running" in third.output(), 20, what="the third daemon to start")
    finally:
        started = time.monotonic()
        assert third.terminate() == 0, third.output()
    assert time.monotonic() - started < 6  # shutdown_timeout = 5s
    assert "stopped" in third.output()


def test_no_429_in_steady_state_and_recovery_after_a_burst_without_dead_letters(tmp_path):
    erp = start_simulator("examples.erp_simulator", *erp_args("--products", "150", "--change-rate", "20"))
    shop = start_simulator("examples.storefront_simulator", *shop_args("--rate", "4", "--burst", "2"), env=ENV)
    try:
        config = tmp_path / "erpsync.toml"
        # the channel's budget sits just under the storefront's limit: 3.5/s against 4/s
        config.write_text(daemon_toml(erp.url, shop.url, shop_rate=3.5, shop_burst=2, batch_size=25))
        daemon = Daemon(config).start()
        try:
            time.sleep(6)
            steady = shop.get("/_sim/stats")
            assert steady["requests"] >= 20, steady
            assert steady["rate_limited"] == 0, steady  # organic 429s from the storefront's bucket
            shop.post("/_sim/faults", {"burst_429": 6})
            time.sleep(3)
            freeze_and_settle(erp, tmp_path / "state.db", DOMAINS, timeout=120)
        finally:
            assert daemon.terminate() == 0, daemon.output()
        stats = shop.get("/_sim/stats")
        assert stats["injected_429"] == 6
        assert query(tmp_path / "state.db", "SELECT count(*) FROM dead_letters") == [(0,)]
        assert_converged(erp, shop)
    finally:
        shop.stop()
        erp.stop()


def test_the_erp_budget_is_never_exceeded(tmp_path):
    erp = start_simulator("examples.erp_simulator", *erp_args("--products", "500", "--change-rate", "40"))
    shop = start_simulator("examples.storefront_simulator", *shop_args("--rate", "0"), env=ENV)
    try:
        config = tmp_path / "erpsync.toml"
        # three domains polling every 100ms want ~30 requests/s; the ERP allows 4/s, one at a time
        config.write_text(daemon_toml(erp.url, shop.url, interval="100ms", erp_rate=4, erp_concurrency=1,
                                      shop_rate=100, shop_burst=20))
        daemon = Daemon(config).start()
        try:
            wait_for(lambda: erp.get("/_sim/stats")["requests"] > 0, 20, what="the first ERP request")
            started = time.monotonic()
            erp.post("/_sim/stats/reset")
            time.sleep(6)
            stats = erp.get("/_sim/stats")
            elapsed = time.monotonic() - started
        finally:
            assert daemon.terminate() == 0, daemon.output()
        assert stats["max_concurrent"] <= 1, stats
        assert stats["max_per_second"] <= 4 + 1, stats  # 1/rate spacing: at most rate+1 starts in any 1s window
        assert stats["requests"] <= 1 + 4 * elapsed, stats
        assert all(path in stats["by_path"] for path in ("/api/products", "/api/prices", "/api/inventory")), stats
    finally:
        shop.stop()
        erp.stop()


def test_an_erp_outage_fails_polls_softly_and_the_daemon_catches_up(sims, tmp_path):
    erp, shop = sims
    daemon = start_after_first_sync(erp, shop, tmp_path)
    try:
        erp.post("/_sim/faults", {"outage": True})
        time.sleep(4)  # the ERP keeps changing while erpsync cannot reach it
        assert daemon.alive()
        failed = query(tmp_path / "state.db", "SELECT DISTINCT reason FROM poll_runs WHERE status = 'failed'")
        assert ("ERP_UNREACHABLE",) in failed, failed
        erp.post("/_sim/faults", {"outage": False})
        freeze_and_settle(erp, tmp_path / "state.db", DOMAINS)
    finally:
        assert daemon.terminate() == 0, daemon.output()
    assert_converged(erp, shop)


def test_a_bad_record_is_quarantined_and_the_rest_of_its_page_syncs(sims, tmp_path):
    erp, shop = sims
    daemon = start_after_first_sync(erp, shop, tmp_path)
    try:
        erp.post("/_sim/freeze")
        erp.post("/_sim/bad", {"resource": "inventory", "item_code": "SKU-00007"})
        erp.post("/_sim/mutate", {"resource": "inventory", "item_code": "SKU-00008", "set": {"qty_on_hand": 4242}})
        wait_for(lambda: query(tmp_path / "state.db", "SELECT count(*) FROM quarantine")[0][0] > 0, 20,
                 what="the quarantine entry")
        freeze_and_settle(erp, tmp_path / "state.db", DOMAINS)
    finally:
        assert daemon.terminate() == 0, daemon.output()
    rows = query(tmp_path / "state.db", "SELECT domain, ref, reason, message, resolved_at FROM quarantine")
    assert len(rows) == 1
    domain, ref, reason, message, resolved = rows[0]
    assert (domain, ref, reason, resolved) == ("inventory", "SKU-00007", "BAD_VALUE", None)
    assert "lots" in message
    assert shop.get("/_sim/state")["inventory"]["SKU-00008@MAIN"]["on_hand"] == 4242
    assert_converged(erp, shop)
