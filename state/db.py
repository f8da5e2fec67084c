"""Open the state database: WAL, a busy timeout, the schema check, and one kind of transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlite_utils import Database

from state.schema import APP_ID, SCHEMA_VERSION, migrate, schema_version

EX_DATAERR = 65


class StateError(Exception):
    """The state database cannot be used; `reason` is a code an operator can look up."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def open_state(path: Path | str) -> Database:
    """Open (creating if needed) and migrate the state database for the daemon."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db = Database(conn)
        _check_is_ours(db, path)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the page is acknowledged or the batch is marked sent, so a
        # power cut cannot roll a snapshot back behind a version the storefront already holds.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(db)
    except sqlite3.DatabaseError as exc:
        raise StateError("STATE_UNREADABLE", f"{path}: {_sqlite_message(exc)}") from None
    except OSError as exc:
        raise StateError("STATE_UNREADABLE", f"{path}: {exc}") from None
    return db


def open_state_readonly(path: Path | str) -> Database:
    """Open the state database for reading only (status views): never creates or migrates."""
    path = Path(path)
    if not path.exists():
        raise StateError("STATE_MISSING", f"{path}: no state database yet (has `erpsync run` started?)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        db = Database(conn)
        _check_is_ours(db, path)
        if schema_version(db) < SCHEMA_VERSION:
            raise StateError(
                "STATE_OLD_SCHEMA",
                f"{path}: schema version {schema_version(db)} is older than this erpsync's "
                f"{SCHEMA_VERSION}; start `erpsync run` once to migrate it",
            )
    except sqlite3.DatabaseError as exc:
        raise StateError("STATE_UNREADABLE", f"{path}: {_sqlite_message(exc)}") from None
    return db


def _check_is_ours(db: Database, path: Path) -> None:
    tables = set(db.table_names())
    if tables and "erpsync_meta" not in tables:
        raise StateError(
            "STATE_FOREIGN",
            f"{path} is an SQLite database but not an erpsync state database "
            f"(it has tables {', '.join(sorted(tables)[:5])}); point daemon.state at another file",
        )
    if "erpsync_meta" in tables:
        row = db.execute("SELECT value FROM erpsync_meta WHERE key = 'app'").fetchone()
        if row is None or row[0] != APP_ID:
            raise StateError("STATE_FOREIGN", f"{path} is not an erpsync state database")
        version = schema_version(db)
        if version > SCHEMA_VERSION:
            raise StateError(
                "STATE_NEWER_SCHEMA",
                f"{path} has schema version {version}, newer than this erpsync understands "
                f"({SCHEMA_VERSION}); run the newer erpsync or restore a matching backup",
            )


def _sqlite_message(exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "file is not a database" in text:
        return "this file is not an SQLite database, so not an erpsync state database"
    return text


@contextmanager
def transaction(db: Database) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE): all of it commits or none of it does.

    Callers keep awaits out of the block, so asyncio cancellation cannot split it.
    """
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def stamp(moment: datetime | None = None) -> str:
    """A UTC instant in the one fixed text form the store uses, so text order is time order.

    A naive datetime is taken as UTC (as the canonical models do), never as the host's local time.
    """
    moment = moment or utc_now()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_stamp(text: str | None) -> datetime | None:
    """Read back a value written by stamp()."""
    return datetime.fromisoformat(text) if text else None
