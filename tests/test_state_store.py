"""The state store on real SQLite files: opening, refusing files that are not ours, the owner
lock across processes, write-time coalescing, atomic pages, quarantine, housekeeping, stamps."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from examples.launch import PROJECT_ROOT
from state import lock, outbox, polls
from state.db import StateError, open_state, open_state_readonly, parse_stamp, stamp, utc_now
from state.schema import APP_ID, MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from tests.conftest import BASE_TOML, ENV

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)
ERPSYNC_TABLES = {"erpsync_meta", "domains", "snapshots", "outbox", "dead_letters", "quarantine", "poll_runs", "push_runs"}
EX_DATAERR = 65


# --- helpers ---------------------------------------------------------------------------------


def change(key: str, version: int, on_hand: int = 1, op: str = "upsert") -> polls.SnapshotWrite:
    payload = {"sku": key, "location": "MAIN", "on_hand": on_hand, "reserved": 0, "available": on_hand}
    return polls.SnapshotWrite(f"{key}@MAIN", f"h-{key}-{version}-{on_hand}", version, payload, T0, op)


def page(db, run: int, writes, *, rejected=(), accepted=(), watermark=None, channels=("store",), decide=None):
    """commit_page with the differ's decision given up front."""
    writes = list(writes)
    return polls.commit_page(
        db, domain="inventory", run_id=run, decide=decide or (lambda known: writes), keys=[w.key for w in writes],
        rejected=list(rejected), accepted_refs=list(accepted), channels=list(channels), watermark=watermark, read_at=utc_now(),
        scan_id=None, records=len(writes) + len(rejected), requests=1,
    )


def rows(db, sql: str, params=()) -> list[tuple]:
    return db.execute(sql, params).fetchall()


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def not_sqlite(path: Path) -> bytes:
    data = random.Random(7).randbytes(4096)
    path.write_bytes(data)
    return data


def foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
                       "INSERT INTO customers (name) VALUES ('Ada'), ('Grace');")
    conn.close()


def newer(path: Path, version: int = SCHEMA_VERSION + 41) -> None:
    db = open_state(path)
    db.execute("UPDATE erpsync_meta SET value = ? WHERE key = 'schema_version'", [str(version)])
    db.execute("INSERT INTO domains (domain, watermark) VALUES ('inventory', ?)", [stamp(T0)])
    db.conn.close()


def erpsync(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The real `erpsync` command in its own process (killed by subprocess.run if it overruns)."""
    return subprocess.run(
        [sys.executable, "-m", "connector", *args], cwd=PROJECT_ROOT, env={**os.environ, **ENV},
        capture_output=True, text=True, timeout=timeout,
    )


# --- opening ---------------------------------------------------------------------------------


def test_a_fresh_path_gets_the_schema_wal_and_the_marker_and_reopening_keeps_everything(tmp_path):
    path = tmp_path / "nested" / "dir" / "state.db"  # missing folders are created
    db = open_state(path)
    assert path.exists()
    assert ERPSYNC_TABLES <= set(db.table_names())
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: a commit survives a power cut
    assert dict(rows(db, "SELECT key, value FROM erpsync_meta")) == {"app": APP_ID, "schema_version": str(SCHEMA_VERSION)}
    run = polls.start_poll(db, "inventory", None, False)
    page(db, run, [change("A", 1, 5)], watermark=T0)
    schema_before = rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    db.conn.close()

    # WAL is a property of the file, not of the connection that set it
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()

    again = open_state(path)
    assert schema_version(again) == SCHEMA_VERSION
    assert rows(again, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before
    assert rows(again, "SELECT key, version FROM snapshots") == [("A@MAIN", 1)]
    assert rows(again, "SELECT channel, key, version FROM outbox") == [("store", "A@MAIN", 1)]
    assert polls.domain_state(again, "inventory").watermark == T0
    again.conn.close()


@pytest.mark.parametrize("content", [b"not a database, just some notes\n", b"x" * 5000, None], ids=["short-text", "long-text", "random"])
def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "state.db"
    if content is None:
        content = not_sqlite(path)
    else:
        path.write_bytes(content)
    for opener in (open_state, open_state_readonly):
        with pytest.raises(StateError) as caught:
            opener(path)
        assert caught.value.reason == "STATE_UNREADABLE"
        assert str(path) in str(caught.value) and "not an SQLite database" in str(caught.value)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]  # no -wal / -shm / journal left behind


def test_another_apps_sqlite_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "state.db"
    foreign(path)
    before = path.read_bytes()
    for opener in (open_state, open_state_readonly):
        with pytest.raises(StateError) as caught:
            opener(path)
        assert caught.value.reason == "STATE_FOREIGN"
        assert "customers" in str(caught.value)  # names what it found
    assert path.read_bytes() == before
    assert tables(path) == {"customers"}  # no erpsync table was added
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM customers ORDER BY id").fetchall() == [("Ada",), ("Grace",)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()


def test_an_erpsync_meta_table_with_another_app_marker_is_foreign(tmp_path):
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE erpsync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "INSERT INTO erpsync_meta VALUES ('app', 'someone-else'), ('schema_version', '1');")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StateError) as caught:
        open_state(path)
    assert caught.value.reason == "STATE_FOREIGN"
    assert path.read_bytes() == before and tables(path) == {"erpsync_meta"}


def test_a_newer_schema_is_refused_naming_both_versions_and_left_untouched(tmp_path):
    path = tmp_path / "state.db"
    newer(path, SCHEMA_VERSION + 41)
    before = path.read_bytes()
    for opener in (open_state, open_state_readonly):
        with pytest.raises(StateError) as caught:
            opener(path)
        assert caught.value.reason == "STATE_NEWER_SCHEMA"
        message = str(caught.value)
        assert f"schema version {SCHEMA_VERSION + 41}" in message
        assert f"({SCHEMA_VERSION})" in message
    assert path.read_bytes() == before
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM erpsync_meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION + 41),)
    conn.close()


def test_readonly_open_of_a_missing_file_says_so_and_creates_nothing(tmp_path):
    path = tmp_path / "not-yet" / "state.db"
    with pytest.raises(StateError) as caught:
        open_state_readonly(path)
    assert caught.value.reason == "STATE_MISSING"
    assert "no state database yet" in str(caught.value)
    assert not path.exists() and not path.parent.exists()


def test_readonly_open_never_writes(tmp_path):
    path = tmp_path / "state.db"
    db = open_state(path)
    polls.start_poll(db, "inventory", None, False)
    db.conn.close()
    ro = open_state_readonly(path)
    assert rows(ro, "SELECT domain, status FROM poll_runs") == [("inventory", "running")]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("DELETE FROM poll_runs")
    ro.conn.close()


# --- migrations ------------------------------------------------------------------------------


def test_the_schema_version_is_the_number_of_migrations_and_migrate_is_a_no_op_when_current(tmp_path):
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    db = open_state(tmp_path / "state.db")
    assert schema_version(db) == len(MIGRATIONS)
    run = polls.start_poll(db, "inventory", None, False)
    page(db, run, [change("A", 1)], watermark=T0)
    schema_before = rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    meta_before = rows(db, "SELECT key, value FROM erpsync_meta ORDER BY key")
    migrate(db)
    migrate(db)
    assert schema_version(db) == len(MIGRATIONS)
    assert rows(db, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema_before
    assert rows(db, "SELECT key, value FROM erpsync_meta ORDER BY key") == meta_before
    assert rows(db, "SELECT key, version FROM snapshots") == [("A@MAIN", 1)]
    db.conn.close()


def test_an_empty_sqlite_file_is_version_0_migrated_by_run_and_refused_by_readers(tmp_path):
    """Version 0 (no tables) is the only older schema that exists while there is one migration."""
    path = tmp_path / "state.db"
    path.write_bytes(b"")  # e.g. `touch state.db`: SQLite reads it as an empty database
    with pytest.raises(StateError) as caught:
        open_state_readonly(path)
    assert caught.value.reason == "STATE_OLD_SCHEMA"
    assert "schema version 0" in str(caught.value) and "erpsync run" in str(caught.value)
    assert path.read_bytes() == b""
    db = open_state(path)
    assert schema_version(db) == SCHEMA_VERSION
    assert ERPSYNC_TABLES <= set(db.table_names())
    db.conn.close()
    open_state_readonly(path).conn.close()  # now readers accept it


# --- the command line on bad state files --------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "run"])
@pytest.mark.parametrize("kind, reason", [
    ("not_sqlite", "STATE_UNREADABLE"), ("foreign", "STATE_FOREIGN"), ("newer", "STATE_NEWER_SCHEMA"),
])
def test_the_cli_refuses_a_bad_state_file_with_65_and_one_line(tmp_path, write_toml, command, kind, reason):
    config = write_toml(BASE_TOML)  # [daemon] state = "state.db", next to the config
    state = tmp_path / "state.db"
    {"not_sqlite": not_sqlite, "foreign": foreign, "newer": newer}[kind](state)
    before = state.read_bytes()

    result = erpsync(command, "--config", str(config))

    assert result.returncode == EX_DATAERR, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"erpsync: {reason}: {state}")
    assert result.stdout.strip() == ""
    assert state.read_bytes() == before
    if kind == "foreign":
        assert tables(state) == {"customers"}


def test_cli_status_without_a_state_database_says_so_and_does_not_create_it(tmp_path, write_toml):
    config = write_toml(BASE_TOML.replace('state = "state.db"', 'state = "data/state.db"'))
    result = erpsync("status", "--config", str(config))
    assert result.returncode == EX_DATAERR, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    state = tmp_path / "data" / "state.db"
    assert result.stderr.strip() == (
        f"erpsync: STATE_MISSING: {state}: no state database yet (has `erpsync run` started?)"
    )
    assert not state.exists() and not state.parent.exists()


# --- the owner lock across processes ----------------------------------------------------------

HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from state.lock import acquire\n"
    "owner = acquire(Path(sys.argv[1]))\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


def start_holder(state: Path) -> subprocess.Popen:
    """A child process that takes the lock and keeps it until killed."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], cwd=PROJECT_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([child.stdout], [], [], 15)
    line = child.stdout.readline() if ready else ""
    assert line.strip() == "locked", f"the child did not take the lock: {line!r} {child.poll()}"
    return child


def test_the_lock_held_by_another_process_is_refused_naming_it_and_freed_when_it_is_killed(tmp_path):
    state = tmp_path / "state.db"
    child = start_holder(state)
    try:
        with pytest.raises(lock.StateLocked) as caught:
            lock.acquire(state)
        assert f"pid {child.pid})" in str(caught.value)
        assert str(state) in str(caught.value)
        assert lock.lock_path(state).read_text().strip() == str(child.pid)  # the refusal did not clobber it
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
        owner = lock.acquire(state)  # the kernel dropped the flock with the process
        try:
            assert lock.lock_path(state).read_text() == f"{os.getpid()}\n"
        finally:
            owner.release()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        child.stdout.close()
        child.stderr.close()


def test_the_lock_is_exclusive_inside_one_process_too_and_free_again_after_release(tmp_path):
    state = tmp_path / "state.db"
    lock.lock_path(state).write_text("4194304999\nleft by an owner long gone\n")
    owner = lock.acquire(state)
    try:
        assert lock.lock_path(state).read_text() == f"{os.getpid()}\n"  # the stale owner is wiped, not merged
        with pytest.raises(lock.StateLocked, match=f"pid {os.getpid()}\\)"):
            lock.acquire(state)
    finally:
        owner.release()
    owner.release()  # releasing twice is harmless
    assert owner.fd == -1
    again = lock.acquire(state)
    again.release()
    child = start_holder(state)  # and another process can have it after a normal release
    try:
        with pytest.raises(lock.StateLocked):
            lock.acquire(state)
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
        child.stderr.close()


# --- coalescing at write time -----------------------------------------------------------------


def test_two_changes_to_one_key_before_a_push_leave_one_row_per_channel_with_the_latest(tmp_path):
    db = open_state(tmp_path / "state.db")
    run = polls.start_poll(db, "inventory", None, False)
    page(db, run, [change("A", 1, 5), change("B", 1, 7)], channels=["store", "erp-mirror"])
    first = dict(((c, k), (i, created)) for i, c, k, created in rows(db, "SELECT id, channel, key, created_at FROM outbox"))
    time.sleep(0.002)
    page(db, run, [change("A", 2, 9)], channels=["store", "erp-mirror"])

    waiting = rows(db, "SELECT id, channel, key, version, payload, created_at FROM outbox WHERE key = 'A@MAIN' ORDER BY channel")
    assert [(c, v) for _, c, _, v, _, _ in waiting] == [("erp-mirror", 2), ("store", 2)]
    for id_, channel, key, _, payload, created_at in waiting:
        assert json.loads(payload)["on_hand"] == 9
        # the waiting row is updated in place: same id, same created_at (its place in the queue)
        assert (id_, created_at) == first[(channel, key)]
    assert rows(db, "SELECT count(*) FROM outbox") == [(4,)]  # B untouched, one row per key and channel

    # an older version arriving late never replaces a newer waiting one
    page(db, run, [change("A", 1, 5)], channels=["store"])
    assert rows(db, "SELECT version FROM outbox WHERE channel = 'store' AND key = 'A@MAIN'") == [(2,)]
    db.conn.close()


def test_a_newer_version_resets_the_retry_state_of_the_waiting_row(tmp_path):
    db = open_state(tmp_path / "state.db")
    run = polls.start_poll(db, "inventory", None, False)
    page(db, run, [change("A", 1)])
    batch = outbox.claim_batch(db, "store", 10)
    outbox.finish_batch(db, batch, [outbox.RowOutcome(batch.rows[0], "retry", "HTTP_503", "busy", utc_now() + timedelta(hours=1))],
                        started_at=utc_now(), requests=1, status="retry")
    assert rows(db, "SELECT version, attempts, batch_id, next_attempt_at IS NOT NULL, last_error FROM outbox") == [
        (1, 1, None, 1, "HTTP_503: busy")]
    assert outbox.claim_batch(db, "store", 10) is None  # not due for an hour
    page(db, run, [change("A", 2)])
    assert rows(db, "SELECT version, attempts, batch_id, next_attempt_at, last_error FROM outbox") == [(2, 0, None, None, None)]
    assert [r.version for r in outbox.claim_batch(db, "store", 10).rows] == [2]  # due at once
    db.conn.close()


def test_a_row_claimed_in_a_batch_is_not_overwritten_the_newer_version_waits_beside_it(tmp_path):
    db = open_state(tmp_path / "state.db")
    run = polls.start_poll(db, "inventory", None, False)
    page(db, run, [change("A", 1, 5)])
    batch = outbox.claim_batch(db, "store", 10)
    assert [(r.key, r.version, r.data["on_hand"]) for r in batch.rows] == [("A@MAIN", 1, 5)]

    page(db, run, [change("A", 2, 9)])
    assert rows(db, "SELECT version, batch_id, json_extract(payload, '$.on_hand') FROM outbox ORDER BY id") == [
        (1, batch.batch_id, 5), (2, None, 9)]
    page(db, run, [change("A", 3, 11)])  # the waiting one coalesces, the claimed one still does not move
    assert rows(db, "SELECT version, batch_id FROM outbox ORDER BY id") == [(1, batch.batch_id), (3, None)]

    resumed = outbox.claim_batch(db, "store", 10)  # the unfinished batch comes back exactly as it was
    assert resumed.resumed and resumed.batch_id == batch.batch_id and resumed.rows == batch.rows
    outbox.finish_batch(db, resumed, [outbox.RowOutcome(resumed.rows[0], "ok")], started_at=utc_now(),
                        requests=1, status="ok")
    assert rows(db, "SELECT version, batch_id FROM outbox") == [(3, None)]
    db.conn.close()


# --- one page, one transaction ----------------------------------------------------------------


class Boom(Exception):
    pass


def _explode(known):
    raise Boom("the differ failed")


@pytest.mark.parametrize("failure", ["decide raises", "a write inside the transaction fails"])
def test_a_page_that_fails_midway_leaves_no_trace(tmp_path, failure):
    path = tmp_path / "state.db"
    db = open_state(path)
    run = polls.start_poll(db, "inventory", None, False)
    page(db, run, [change("A", 1, 5)], watermark=T0)
    before = {
        table: rows(db, f"SELECT * FROM {table} ORDER BY 1, 2")
        for table in ("snapshots", "outbox", "domains", "quarantine", "poll_runs")
    }

    writes = [change("A", 2, 9), change("B", 1, 3)]
    if failure == "decide raises":
        with pytest.raises(Boom):
            page(db, run, writes, watermark=T0 + timedelta(hours=1), decide=_explode,
                 rejected=[polls.Rejected("C", "BAD_VALUE", "on_hand: 'lots'", "{}", "c1")])
    else:
        # snapshots and outbox rows are written, then the quarantine insert breaks NOT NULL (raw)
        with pytest.raises(sqlite3.IntegrityError):
            page(db, run, writes, watermark=T0 + timedelta(hours=1),
                 rejected=[polls.Rejected("C", "BAD_VALUE", "on_hand: 'lots'", None, "c1")])

    assert not db.conn.in_transaction
    reader = open_state_readonly(path)  # what any other process sees
    for view in (db, reader):
        for table, content in before.items():
            assert rows(view, f"SELECT * FROM {table} ORDER BY 1, 2") == content, table
    reader.conn.close()
    assert polls.domain_state(db, "inventory").watermark == T0

    page(db, run, writes, watermark=T0 + timedelta(hours=1))  # the connection is still usable
    assert rows(db, "SELECT key, version FROM snapshots ORDER BY key") == [("A@MAIN", 2), ("B@MAIN", 1)]
    assert polls.domain_state(db, "inventory").watermark == T0 + timedelta(hours=1)
    db.conn.close()


# --- quarantine -------------------------------------------------------------------------------


def test_the_same_bad_record_twice_is_one_quarantine_row_resolved_when_it_maps(tmp_path):
    db = open_state(tmp_path / "state.db")
    run = polls.start_poll(db, "inventory", None, False)
    bad = polls.Rejected("SKU-9", "BAD_VALUE", "on_hand: 'lots'", '{"qty": "lots"}', "hash-lots")
    page(db, run, [], rejected=[bad])
    (first_seen, last_seen), = rows(db, "SELECT first_seen, last_seen FROM quarantine")
    time.sleep(0.002)
    page(db, run, [], rejected=[bad])

    assert rows(db, "SELECT ref, reason, message, raw, seen_count, first_seen, resolved_at FROM quarantine") == [
        ("SKU-9", "BAD_VALUE", "on_hand: 'lots'", '{"qty": "lots"}', 2, first_seen, None)]
    assert rows(db, "SELECT last_seen FROM quarantine")[0][0] > last_seen
    assert rows(db, "SELECT quarantined FROM poll_runs WHERE id = ?", [run]) == [(2,)]

    other = polls.Rejected("SKU-9", "MISSING_FIELD", "no location", '{"qty": 1}', "hash-noloc")
    page(db, run, [], rejected=[other])  # a different bad content of the same record is its own row
    assert rows(db, "SELECT count(*) FROM quarantine WHERE resolved_at IS NULL") == [(2,)]

    page(db, run, [change("SKU-9", 1)], accepted=["SKU-9"])  # it maps fine now
    assert rows(db, "SELECT count(*) FROM quarantine WHERE resolved_at IS NULL") == [(0,)]
    assert all(resolved is not None for (resolved,) in rows(db, "SELECT resolved_at FROM quarantine"))

    page(db, run, [], rejected=[bad])  # and if the same bad content comes back, the row opens again
    assert rows(db, "SELECT raw_hash, seen_count, resolved_at IS NULL FROM quarantine ORDER BY id") == [
        ("hash-lots", 3, 1), ("hash-noloc", 1, 0)]
    db.conn.close()


# --- housekeeping -----------------------------------------------------------------------------


def test_prune_runs_forgets_runs_older_than_a_week_and_keeps_newer_and_running_ones(tmp_path):
    db = open_state(tmp_path / "state.db")
    runs = {}
    for name in ("old", "recent", "old-running"):
        runs[name] = polls.start_poll(db, "inventory", None, False)
        if name != "old-running":
            polls.finish_poll(db, runs[name], status="ok", requests=1)
    for name, age in (("old", timedelta(days=7, minutes=5)), ("recent", timedelta(days=6, hours=23)),
                      ("old-running", timedelta(days=30))):
        db.execute("UPDATE poll_runs SET started_at = ? WHERE id = ?", [stamp(utc_now() - age), runs[name]])
    for channel, age in (("old", timedelta(days=8)), ("recent", timedelta(days=6))):
        outbox.record_push_failure(db, channel, f"batch-{channel}", 1, reason="UNREACHABLE", message="down")
        db.execute("UPDATE push_runs SET started_at = ? WHERE channel = ?", [stamp(utc_now() - age), channel])

    polls.prune_runs(db)

    assert {id_ for (id_,) in rows(db, "SELECT id FROM poll_runs")} == {runs["recent"], runs["old-running"]}
    assert rows(db, "SELECT channel FROM push_runs") == [("recent",)]
    polls.prune_runs(db, keep=timedelta(days=1))
    assert {id_ for (id_,) in rows(db, "SELECT id FROM poll_runs")} == {runs["old-running"]}
    assert rows(db, "SELECT channel FROM push_runs") == []
    db.conn.close()


def test_a_poll_left_running_by_a_crashed_process_is_marked_interrupted(tmp_path):
    path = tmp_path / "state.db"
    db = open_state(path)
    done = polls.start_poll(db, "inventory", None, False)
    polls.finish_poll(db, done, status="ok", requests=3)
    crashed = polls.start_poll(db, "inventory", T0, True)
    done_row = rows(db, "SELECT * FROM poll_runs WHERE id = ?", [done])
    db.conn.close()  # the process dies here

    db = open_state(path)
    before = utc_now()
    polls.close_abandoned_polls(db)
    status, finished = rows(db, "SELECT status, finished_at FROM poll_runs WHERE id = ?", [crashed])[0]
    assert status == "interrupted"
    assert parse_stamp(finished) >= before - timedelta(seconds=1)
    assert rows(db, "SELECT * FROM poll_runs WHERE id = ?", [done]) == done_row  # a finished run is left alone
    assert rows(db, "SELECT count(*) FROM poll_runs WHERE status = 'running'") == [(0,)]
    db.conn.close()


# --- stamps -----------------------------------------------------------------------------------


def test_stamps_round_trip_aware_utc_with_microseconds_and_sort_as_text():
    moment = datetime(2026, 11, 25, 9, 30, 15, 123456, tzinfo=timezone.utc)
    assert stamp(moment) == "2026-11-25T09:30:15.123456+00:00"
    back = parse_stamp(stamp(moment))
    assert back == moment and back.utcoffset() == timedelta(0)

    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    assert stamp(plus_two) == stamp(moment)  # the same instant, always written in UTC

    whole = datetime(2026, 11, 25, 9, 30, 15, tzinfo=timezone.utc)
    assert stamp(whole) == "2026-11-25T09:30:15.000000+00:00"  # fixed width even without microseconds
    ordered = [whole, whole + timedelta(microseconds=1), whole + timedelta(seconds=1), whole + timedelta(days=40)]
    assert sorted(stamp(m) for m in reversed(ordered)) == [stamp(m) for m in ordered]

    assert parse_stamp(None) is None and parse_stamp("") is None
    now = parse_stamp(stamp())
    assert now.tzinfo is not None and abs(now - utc_now()) < timedelta(seconds=5)


def test_a_naive_stamp_is_utc_whatever_the_hosts_time_zone():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        naive = datetime(2026, 11, 25, 12, 0, 0, 500)
        assert stamp(naive) == "2026-11-25T12:00:00.000500+00:00"
        assert parse_stamp(stamp(naive)) == naive.replace(tzinfo=timezone.utc)
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
