"""Shared test helpers: a minimal valid configuration to vary."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

BASE_TOML = """\
[daemon]
state = "state.db"

[erp]
base_url = "http://127.0.0.1:8080"
auth = { type = "bearer", token_env = "ERP_TOKEN" }

[domains.inventory]
interval = "15s"
lookback = "2m"
record = { key = "item_code", updated = "modified" }
fields = { sku = "item_code", location = "warehouse", on_hand = "qty_on_hand", reserved = "qty_reserved" }

[domains.inventory.request]
path = "/api/inventory"
page_size = 2
modified_param = "modified_after"
pagination = { style = "cursor" }

[channels.store]
kind = "webhook"
url = "http://127.0.0.1:9000/erpsync"
domains = ["inventory"]
secret_env = "STORE_SECRET"
"""

ENV = {"ERP_TOKEN": "erp-token-value", "STORE_SECRET": "store-secret-value"}


@pytest.fixture
def write_toml(tmp_path: Path):
    """Write TOML text (dedented) to a file in tmp_path and return its path."""

    def write(text: str, name: str = "erpsync.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
