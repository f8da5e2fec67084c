"""`erpsync demo`: the simulated ERP and storefront with the real daemon between them."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from connector.config import Config, load_config
from connector.daemon import run_daemon
from connector.status import status_tables
from examples.launch import Simulator, start_simulator
from state import status as state_status
from state.db import StateError, open_state_readonly, utc_now

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "demo.toml"
SETTLE_TIMEOUT = 90.0


def run_demo(duration: float | None, live: bool, products: int, console: Console) -> int:
    """Start both simulators and the daemon; with a duration, verify convergence and return 0 or 1."""
    env = {**os.environ, "DEMO_ERP_TOKEN": secrets.token_hex(12), "DEMO_WEBHOOK_SECRET": secrets.token_hex(16)}
    with tempfile.TemporaryDirectory(prefix="erpsync-demo-") as folder:
        erp = start_simulator("examples.erp_simulator", "--products", str(products), "--change-rate", "5",
                              "--token", env["DEMO_ERP_TOKEN"], env=env)
        try:
            shop = start_simulator("examples.storefront_simulator", "--secret-env", "DEMO_WEBHOOK_SECRET",
                                   "--rate", "5", "--burst", "5", env=env)
        except BaseException:
            erp.stop()
            raise
        try:
            config = demo_config(erp.url, shop.url + "/erpsync", Path(folder) / "state.db", env)
            console.print(f"ERP simulator {erp.url}, storefront simulator {shop.url}, {products} products")
            return asyncio.run(_run(config, env, erp, shop, duration, live, console))
        finally:
            shop.stop()
            erp.stop()


def demo_config(erp_url: str, shop_url: str, state_path: Path, env) -> Config:
    """examples/demo.toml pointed at the running simulators and a private state file."""
    config = load_config(DEMO_CONFIG, env=env)
    channels = {name: c.model_copy(update={"url": shop_url}) for name, c in config.channels.items()}
    return config.model_copy(update={
        "erp": config.erp.model_copy(update={"base_url": erp_url}),
        "daemon": config.daemon.model_copy(update={"state": str(state_path), "log_level": "warning"}),
        "channels": channels,
    })


async def _run(config: Config, env, erp: Simulator, shop: Simulator, duration, live, console) -> int:
    from connector.logs import setup_logging

    setup_logging(config.daemon.log_level)
    stop = asyncio.Event()
    daemon = asyncio.create_task(run_daemon(config, env, stop))
    deadline = None if duration is None else time.monotonic() + duration
    try:
        if live and console.is_terminal:
            with Live(console=console, refresh_per_second=2, transient=False) as view:
                while not _done(stop, daemon, deadline):
                    view.update(_view(config, erp, shop))
                    await _pause(stop, 0.5)
        else:
            while not _done(stop, daemon, deadline):
                await _pause(stop, 0.5)
        if duration is None or stop.is_set() or daemon.done():
            return await _stop(stop, daemon)
        return await _verify(config, erp, shop, stop, daemon, console)
    finally:
        stop.set()
        if not daemon.done():
            await daemon


def _done(stop: asyncio.Event, daemon: asyncio.Task, deadline: float | None) -> bool:
    return stop.is_set() or daemon.done() or (deadline is not None and time.monotonic() >= deadline)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def _stop(stop: asyncio.Event, daemon: asyncio.Task) -> int:
    stop.set()
    return await daemon


def _view(config: Config, erp: Simulator, shop: Simulator) -> Group:
    try:
        db = open_state_readonly(config.state_path())
    except StateError:
        return Group(Text("starting ..."))
    try:
        erp_stats, shop_stats = erp.get("/_sim/stats"), shop.get("/_sim/stats")
        summary = Text(
            f"ERP: {erp_stats['requests']} requests (max {erp_stats['max_per_second']}/s, "
            f"cap {config.erp.max_requests_per_second:g}/s)   storefront: {shop_stats['changes_applied']} changes "
            f"applied, {shop_stats['rate_limited']} rate-limited, {shop_stats['regressions']} version regressions"
        )
        return Group(status_tables(db, config), summary, Text("Ctrl-C stops the demo", style="dim"))
    finally:
        db.conn.close()


async def _verify(config: Config, erp: Simulator, shop: Simulator, stop, daemon, console: Console) -> int:
    """Freeze the ERP, let the daemon catch up, and compare the storefront with the ERP."""
    erp.post("/_sim/freeze")
    frozen_at = utc_now()
    domains = [name for name, _ in config.domains.items()]
    give_up = time.monotonic() + SETTLE_TIMEOUT
    settled = False
    while time.monotonic() < give_up and not daemon.done():
        db = open_state_readonly(config.state_path())
        try:
            polled = all((state_status.last_finished_poll(db, d)[1] or frozen_at) > frozen_at for d in domains)
            settled = polled and state_status.pending_total(db) == 0
        finally:
            db.conn.close()
        if settled:
            break
        await asyncio.sleep(0.5)
    status = await _stop(stop, daemon)
    if not settled:
        console.print("the daemon did not catch up within the time allowed; comparing anyway")
    matched, differ = compare(erp.get("/_sim/truth"), shop.get("/_sim/state"))
    stats = shop.get("/_sim/stats")
    line = f"converged: {matched} keys match, {len(differ)} differ" if not differ else \
        f"not converged: {matched} keys match, {len(differ)} differ: " + "; ".join(differ[:5])
    console.print(line, highlight=False)
    if stats["regressions"]:
        console.print(f"the storefront saw {stats['regressions']} version regressions")
    return 0 if not differ and not stats["regressions"] and status == 0 else 1


def compare(truth: dict, state: dict) -> tuple[int, list[str]]:
    """Keys whose storefront data matches the ERP's (every field the ERP has), and those that do not."""
    matched, differ = 0, []
    for domain in ("product", "price", "inventory"):
        expected = truth.get(domain, {})
        actual = state.get(domain, {})
        for key, fields in expected.items():
            got = actual.get(key)
            wrong = None if got is not None else "missing"
            if got is not None:
                wrong = next((f"{name}={got.get(name)!r}, ERP {value!r}" for name, value in fields.items()
                              if got.get(name) != value), None)
            if wrong:
                differ.append(f"{domain} {key}: {wrong}")
            else:
                matched += 1
        invalid = set(truth.get("invalid", []))
        for key in actual.keys() - expected.keys():
            if f"{domain}:{key}" not in invalid:
                differ.append(f"{domain} {key}: on the storefront, not in the ERP")
    return matched, differ
