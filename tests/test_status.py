"""`erpsync status` reads a state database (never writes it) and shows what happened."""

from __future__ import annotations

from datetime import datetime, timezone

from typer.testing import CliRunner

from connector.cli import app
from connector.config import load_config
from state import outbox, polls
from state.db import open_state, utc_now
from tests.conftest import BASE_TOML, ENV


def _write(key: str, version: int) -> polls.SnapshotWrite:
    payload = {"sku": key, "location": "MAIN", "on_hand": 1, "reserved": 0, "available": 1}
    return polls.SnapshotWrite(f"{key}@MAIN", f"h{key}{version}", version, payload, None, "upsert")


def test_status_shows_polls_pending_changes_and_dead_letters(write_toml, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = write_toml(BASE_TOML)
    config = load_config(path, env=ENV)
    db = open_state(config.state_path())
    run = polls.start_poll(db, "inventory", None, True)
    writes = [_write(f"SKU-{n}", 1) for n in range(5)]
    polls.commit_page(db, domain="inventory", run_id=run, decide=lambda known: writes, keys=[w.key for w in writes],
                      rejected=[polls.Rejected("SKU-X", "BAD_VALUE", "on_hand: 'lots'", "{}", "abc")],
                      accepted_refs=[], channels=["store"], watermark=datetime(2026, 11, 25, 9, 30, tzinfo=timezone.utc), read_at=utc_now(),
                      scan_id=run, records=6, requests=1)
    polls.finish_poll(db, run, status="ok", requests=1, full_resync_done=True)
    batch = outbox.claim_batch(db, "store", 2)
    outbox.finish_batch(db, batch, [outbox.RowOutcome(batch.rows[0], "ok"),
                                    outbox.RowOutcome(batch.rows[1], "dead", "VALIDATION", "bad sku")],
                        started_at=datetime.now(timezone.utc), requests=1, status="partial",
                        reason="VALIDATION", message="1 change dead-lettered: bad sku")
    db.conn.close()

    result = CliRunner().invoke(app, ["status", "--config", str(path)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    inventory = next(line for line in lines if line.startswith("│ inventory"))
    cells = [cell.strip() for cell in inventory.strip("│").split("│")]
    assert cells[2] == "ok" and "09:30" in cells[3]
    assert cells[5:10] == ["6", "5", "5", "1", "5"]  # seen, changed, changed in 1h, quarantined, records
    store = next(line for line in lines if line.startswith("│ store"))
    cells = [cell.strip() for cell in store.strip("│").split("│")]
    assert cells[1] == "3" and cells[3] == "1" and cells[5] == "1"  # pending, sent, dead letters
    assert "VALIDATION" in store  # the last error names its reason


def test_status_without_a_state_database_says_so(write_toml, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = write_toml(BASE_TOML)
    result = CliRunner().invoke(app, ["status", "--config", str(path)])
    assert result.exit_code == 65
    assert "STATE_MISSING" in result.output
    assert not (path.parent / "state.db").exists()
