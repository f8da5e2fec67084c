"""Configuration errors name the line and key, `check` prints them all and exits 78."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.config import EX_CONFIG, ConfigError, load_config
from tests.conftest import BASE_TOML, ENV

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def problems_of(path: Path, env=ENV) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    return [p.located(path.name) for p in caught.value.problems]


def test_the_base_configuration_is_valid(write_toml):
    config = load_config(write_toml(BASE_TOML), env=ENV)
    assert [name for name, _ in config.domains.items()] == ["inventory"]
    assert config.channels_for("inventory") == ["store"]
    assert config.state_path() == write_toml(BASE_TOML).parent / "state.db"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('interval = "15s"', 'interval = "30x"',
         'erpsync.toml:9: domains.inventory.interval: "30x" is not a duration like 30s, 5m or 1h'),
        ('interval = "15s"', "interval = 15",
         "erpsync.toml:9: domains.inventory.interval: 15 is not a duration"),
        ('lookback = "2m"', 'lokback = "2m"',
         "erpsync.toml:10: domains.inventory.lokback: is not a known key (did you mean lookback?)"),
        ('page_size = 2', 'page_size = "many"',
         'erpsync.toml:16: domains.inventory.request.page_size: "many" is not a whole number'),
        ('pagination = { style = "cursor" }', 'pagination = { style = "pages" }',
         "erpsync.toml:18: domains.inventory.request.pagination.style: \"pages\" is not one of"),
        ('domains = ["inventory"]', 'domains = ["price"]',
         'erpsync.toml:23: channels.store.domains: "price" has no [domains.price] section to read it from'),
        ('on_hand = "qty_on_hand"', 'stock = "qty_on_hand"',
         "erpsync.toml:12: domains.inventory.fields: stock is not a field of inventory; on_hand must be mapped"),
        ('base_url = "http://127.0.0.1:8080"', 'base_url = "ftp://x"',
         'erpsync.toml:5: erp.base_url: "ftp://x" is not an http:// or https:// URL'),
        ('[domains.inventory]\n', '[domains.stock]\n',
         "erpsync.toml:8: domains.stock: is not a domain"),
        ('path = "/api/inventory"\n', '',
         "erpsync.toml:14: domains.inventory.request.path: is required but missing"),
    ],
)
def test_each_mistake_names_its_line_and_key(write_toml, old, new, expected):
    assert old in BASE_TOML
    found = problems_of(write_toml(BASE_TOML.replace(old, new, 1)))
    assert any(p.startswith(expected) for p in found), found


def test_a_missing_environment_variable_names_the_key(write_toml):
    found = problems_of(write_toml(BASE_TOML), env={"ERP_TOKEN": "x"})
    assert found == [
        "erpsync.toml:24: channels.store.secret_env: environment variable STORE_SECRET is not set "
        "(secrets come from the environment, never from this file)"
    ]


def test_toml_syntax_errors_give_the_line(write_toml):
    found = problems_of(write_toml(BASE_TOML.replace('lookback = "2m"', 'lookback = 2m"')))
    assert len(found) == 1 and found[0].startswith("erpsync.toml:10: not valid TOML")


def test_all_problems_are_reported_at_once(write_toml):
    text = BASE_TOML.replace('interval = "15s"', 'interval = "soon"').replace("page_size = 2", "page_size = 0")
    found = problems_of(write_toml(text), env={})
    assert len(found) == 4, found  # interval, page_size, two missing environment variables


def test_check_exits_78_without_a_traceback(write_toml):
    path = write_toml(BASE_TOML.replace('interval = "15s"', 'interval = "30x"'))
    env = {k: v for k, v in os.environ.items() if k not in ENV} | ENV
    done = subprocess.run([sys.executable, "-m", "connector", "check", "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == EX_CONFIG
    assert "Traceback" not in done.stderr + done.stdout
    assert f"{path}:9: domains.inventory.interval" in done.stderr
    run = subprocess.run([sys.executable, "-m", "connector", "run", "--config", str(path)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == EX_CONFIG and "Traceback" not in run.stderr


def test_check_prints_domains_and_channels(write_toml, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["check", "--config", str(write_toml(BASE_TOML))])
    assert result.exit_code == 0, result.output
    assert re.search(r"inventory\s+.*15s\s+.*2m", result.output)
    assert "webhook" in result.output and "configuration OK" in result.output


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_passes_check(example, monkeypatch):
    names = set(re.findall(r'_env\s*=\s*"([A-Za-z_][A-Za-z0-9_]*)"', example.read_text()))
    names |= set(re.findall(r'=\s*"([A-Z][A-Z0-9_]*)"', example.read_text()))
    for name in names:
        monkeypatch.setenv(name, "test-value")
    result = CliRunner().invoke(app, ["check", "--config", str(example)])
    assert result.exit_code == 0, result.output
