"""The journal's SQLite side: schema, migrations and connections.

Everything here runs in a thread, never in the event loop.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orchestrator.errors import NotFoundError, StoreError

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 10_000

# One tuple of statements per schema version; version N runs MIGRATIONS[N-1].
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE upgrades (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            inventory TEXT NOT NULL,
            digest TEXT NOT NULL,
            meta TEXT NOT NULL,
            plan TEXT NOT NULL
        )""",
        """CREATE TABLE events (
            upgrade_id TEXT NOT NULL REFERENCES upgrades(id),
            seq INTEGER NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (upgrade_id, seq)
        ) WITHOUT ROWID""",
        """CREATE TRIGGER events_gapless BEFORE INSERT ON events
        WHEN NEW.seq <> (SELECT COALESCE(MAX(seq), 0) + 1 FROM events
                         WHERE upgrade_id = NEW.upgrade_id)
        BEGIN SELECT RAISE(ABORT, 'journal seq must be gapless'); END""",
        """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'journal events are append-only'); END""",
        """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'journal events are append-only'); END""",
        """CREATE TRIGGER upgrades_plan_fixed BEFORE UPDATE OF id, plan, digest ON upgrades
        BEGIN SELECT RAISE(ABORT, 'an upgrade''s plan is immutable'); END""",
        """CREATE TABLE idempotency (
            key TEXT PRIMARY KEY,
            upgrade_id TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
    ),
    (
        # host leases: an upgrade holds the SSH endpoint of every host it
        # works on until its end state; the primary key makes a second holder
        # impossible, whatever the submitter named the hosts or the inventory
        """CREATE TABLE leases (
            endpoint TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            upgrade_id TEXT NOT NULL REFERENCES upgrades(id),
            taken_at REAL NOT NULL
        )""",
        "CREATE INDEX leases_by_upgrade ON leases (upgrade_id)",
    ),
)


def require_upgrade(conn: sqlite3.Connection, upgrade_id: str) -> None:
    if conn.execute("SELECT 1 FROM upgrades WHERE id = ?", (upgrade_id,)).fetchone() is None:
        raise NotFoundError(f"no upgrade {upgrade_id!r}")


def connect(path: Path, *, reader: bool) -> sqlite3.Connection:
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=not reader)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open journal: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if reader:
            conn.execute("PRAGMA query_only = ON")
            return conn
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: journal needs WAL mode, SQLite gave {mode!r}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{path}: cannot open journal: {exc}") from exc
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        current = 0 if row is None else int(row[0])
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: journal schema version {current} is newer than this "
                f"orchestrator's ({SCHEMA_VERSION})"
            )
        for statements in MIGRATIONS[current:]:
            for statement in statements:
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        else:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def load_seqs(conn: sqlite3.Connection) -> dict[str, int]:
    ids = [str(uid) for (uid,) in conn.execute("SELECT id FROM upgrades")]
    seqs: dict[str, int] = {}
    for uid in ids:
        (last,) = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE upgrade_id = ?", (uid,)
        ).fetchone()
        seqs[uid] = int(last)
    return seqs
