"""The versioned schema. Each migration runs once, in order, inside one transaction."""

from __future__ import annotations

from sqlite_utils import Database

APP_ID = "erpsync"

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE erpsync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

    CREATE TABLE domains (
        domain TEXT PRIMARY KEY,
        watermark TEXT,            -- the newest updated time read
        watermark_seen_at TEXT,    -- when (our clock) the watermark was last raised
        settled TEXT,              -- every record updated at or before this has been read
        first_polled_at TEXT,
        last_full_resync_at TEXT,
        resync_requested INTEGER NOT NULL DEFAULT 0
    );

    CREATE TABLE snapshots (
        domain TEXT NOT NULL,
        key TEXT NOT NULL,
        hash TEXT NOT NULL,
        version INTEGER NOT NULL,
        payload TEXT NOT NULL,
        updated TEXT,
        seen_at TEXT NOT NULL,
        seen_scan INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (domain, key)
    ) WITHOUT ROWID;

    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        domain TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        op TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT,
        batch_id TEXT,
        last_error TEXT
    );
    -- at most one waiting (not yet batched) row per key: a newer version replaces it
    CREATE UNIQUE INDEX outbox_waiting ON outbox (channel, domain, key) WHERE batch_id IS NULL;
    CREATE INDEX outbox_batch ON outbox (channel, batch_id);

    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        domain TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        op TEXT NOT NULL,
        payload TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        batch_id TEXT,
        created_at TEXT NOT NULL,
        resolved_at TEXT,
        resolved_by_version INTEGER
    );
    CREATE INDEX dead_letters_key ON dead_letters (channel, domain, key) WHERE resolved_at IS NULL;

    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain TEXT NOT NULL,
        ref TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        raw TEXT NOT NULL,
        raw_hash TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        seen_count INTEGER NOT NULL DEFAULT 1,
        resolved_at TEXT
    );
    CREATE UNIQUE INDEX quarantine_record ON quarantine (domain, ref, raw_hash);

    CREATE TABLE poll_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        since TEXT,
        full_resync INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        pages INTEGER NOT NULL DEFAULT 0,
        records INTEGER NOT NULL DEFAULT 0,
        changed INTEGER NOT NULL DEFAULT 0,
        quarantined INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        message TEXT
    );
    CREATE INDEX poll_runs_domain ON poll_runs (domain, id);

    CREATE TABLE push_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        changes INTEGER NOT NULL,
        accepted INTEGER NOT NULL,
        retried INTEGER NOT NULL,
        dead INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        message TEXT
    );
    CREATE INDEX push_runs_channel ON push_runs (channel, id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: Database) -> int:
    """The schema version recorded in the database, 0 for a new file."""
    if "erpsync_meta" not in db.table_names():
        return 0
    row = db.execute("SELECT value FROM erpsync_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(db: Database) -> None:
    """Bring the schema up to SCHEMA_VERSION, one migration per transaction."""
    current = schema_version(db)
    for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
        # executescript commits first, so wrap the script itself in a transaction
        db.conn.executescript(
            "BEGIN IMMEDIATE;\n" + script + f"""
            INSERT OR REPLACE INTO erpsync_meta (key, value) VALUES ('app', '{APP_ID}');
            INSERT OR REPLACE INTO erpsync_meta (key, value) VALUES ('schema_version', '{number}');
            COMMIT;"""
        )
