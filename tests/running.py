"""Helpers for integration tests: the daemon as a real process next to the simulators."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from examples.launch import PROJECT_ROOT
from state import status
from state.db import StateError, open_state_readonly, utc_now

ENV = {"IT_ERP_TOKEN": "it-erp-token", "IT_SHOP_SECRET": "it-shop-secret"}


# domain -> (ERP simulator endpoint, field mapping)
SIMULATOR_DOMAINS = {
    "product": ("/api/products", 'sku = "item_code", title = "item_name", description = "description", status = "status"'),
    "price": ("/api/prices", 'sku = "item_code", currency = "currency", amount = { path = "rate", type = "decimal" }'),
    "inventory": ("/api/inventory", 'sku = "item_code", location = "warehouse", '
                  'on_hand = { path = "qty_on_hand", type = "int" }, reserved = { path = "qty_reserved", type = "int" }'),
}


def daemon_toml(erp_url: str, shop_url: str, *, interval: str = "300ms", lookback: str = "3s",
                erp_rate: float = 50, erp_concurrency: int = 2, shop_rate: float = 20, shop_burst: int = 5,
                batch_size: int = 50, max_attempts: int = 5, domains=("product", "price", "inventory"),
                full_resync: str | None = None, page_size: int = 100, timeout: str = "5s") -> str:
    """A configuration for the simulators: every domain they serve, one webhook channel."""
    resync = f'full_resync = "{full_resync}"' if full_resync else ""
    text = f"""
[daemon]
state = "state.db"
log_level = "info"
shutdown_timeout = "5s"

[erp]
base_url = "{erp_url}"
max_requests_per_second = {erp_rate}
max_concurrency = {erp_concurrency}
timeout = "{timeout}"
auth = {{ type = "bearer", token_env = "IT_ERP_TOKEN" }}
"""
    for domain in domains:
        path, fields = SIMULATOR_DOMAINS[domain]
        text += f"""
[domains.{domain}]
interval = "{interval}"
lookback = "{lookback}"
{resync}
record = {{ key = "item_code", updated = "modified" }}
fields = {{ {fields} }}
request = {{ path = "{path}", page_size = {page_size}, modified_param = "modified_after", pagination = {{ style = "cursor" }} }}
"""
    text += f"""
[channels.store]
kind = "webhook"
url = "{shop_url}/erpsync"
domains = {list(domains)!r}
max_requests_per_second = {shop_rate}
burst = {shop_burst}
batch_size = {batch_size}
max_attempts = {max_attempts}
timeout = "{timeout}"
secret_env = "IT_SHOP_SECRET"
""".replace("'", '"')
    return text


def erp_args(*extra: str) -> list[str]:
    return ["--token", ENV["IT_ERP_TOKEN"], *extra]


def shop_args(*extra: str) -> list[str]:
    return ["--secret-env", "IT_SHOP_SECRET", *extra]


@dataclass
class Daemon:
    """`erpsync run` in a process of its own."""

    config: Path
    process: subprocess.Popen | None = None
    log: Path | None = None

    def start(self) -> Daemon:
        self.log = Path(tempfile.mkstemp(prefix="erpsync-it-", suffix=".log", dir=self.config.parent)[1])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector", "run", "--config", str(self.config)],
            cwd=PROJECT_ROOT, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def settled(state_path: Path, domains, since) -> bool:
    """Every domain finished a poll that started after `since`, and no change waits to be pushed."""
    try:
        db = open_state_readonly(state_path)
    except StateError:
        return False
    try:
        polled = all((status.last_finished_poll(db, d)[1] or since) > since for d in domains)
        return polled and status.pending_total(db) == 0
    finally:
        db.conn.close()


def freeze_and_settle(erp, state_path: Path, domains, timeout: float = 60) -> None:
    """Stop the ERP changing and wait until the daemon has read and pushed everything."""
    erp.post("/_sim/freeze")
    frozen = utc_now()
    wait_for(lambda: settled(state_path, domains, frozen), timeout, what="the daemon to catch up")


def query(state_path: Path, sql: str, params=()) -> list[tuple]:
    db = open_state_readonly(state_path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.conn.close()
