"""The shared database: schema, expand / migrate / contract, and every query.

Release 1.0 keeps an instance's compute host in `instances.host`. Release 2.0
moves it into `placements`: expand adds the table, pinned 2.0 conductors write
both, the online migration copies what is left, contract drops the column.
Only conductors and `minicloud-manage` write here (the schema commands are
2.0's code: see `manage`). Each call opens its own short-lived connection
(WAL, busy timeout) so processes never share a handle and schema changes by
`minicloud-manage` are seen at once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator.minicloud import MinicloudError

LIVE_WINDOW = 3.0  # a service that heartbeated this recently is alive
BUSY_TIMEOUT_MS = 10_000

SCHEMA_1_0 = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    host TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    binary TEXT NOT NULL,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    pin TEXT,
    port INTEGER,
    heartbeat REAL NOT NULL,
    PRIMARY KEY (binary, host)
);
"""
EXPAND_2_0 = """
CREATE TABLE IF NOT EXISTS placements (
    instance_id INTEGER PRIMARY KEY REFERENCES instances(id),
    host TEXT NOT NULL
);
"""
UNMIGRATED = "FROM instances WHERE id NOT IN (SELECT instance_id FROM placements)"


class ContractRefused(MinicloudError):
    """`db contract` would break something that still runs or still needs the column."""

    exit_code = 2

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("contract refused: " + "; ".join(reasons))


class NotExpanded(MinicloudError):
    exit_code = 2

    def __init__(self) -> None:
        super().__init__(
            "the schema is not expanded: run `minicloud-manage db expand` (2.0's code) first"
        )


@dataclass(frozen=True, slots=True)
class ServiceRow:
    binary: str
    host: str
    version: str
    pin: str | None
    port: int | None
    heartbeat: float

    def alive(self, now: float) -> bool:
        return now - self.heartbeat <= LIVE_WINDOW


@dataclass(frozen=True, slots=True)
class Instance:
    id: int
    name: str
    host: str | None


@contextmanager
def connection(path: Path) -> Iterator[sqlite3.Connection]:
    """An autocommit connection; write transactions use `BEGIN IMMEDIATE` explicitly."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the write lock up front (no lock-upgrade deadlock)."""
    with connection(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def init_db(path: Path) -> None:
    with connection(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA_1_0)


def has_table(conn: sqlite3.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


# --- schema changes (minicloud-manage) ---------------------------------------


def expand(path: Path) -> bool:
    """Add the 2.0 tables; False when they were already there."""
    with transaction(path) as conn:
        if has_table(conn, "placements"):
            return False
        conn.execute(EXPAND_2_0)
        return True


def migrate(path: Path, max_count: int | None = None) -> tuple[int, int]:
    """Copy at most `max_count` hosts into placements: (migrated, remaining)."""
    with transaction(path) as conn:
        if not has_table(conn, "placements"):
            raise NotExpanded()
        migrated = 0
        if has_column(conn, "instances", "host"):
            rows = conn.execute(
                f"SELECT id, host {UNMIGRATED} AND host IS NOT NULL ORDER BY id LIMIT ?",
                (-1 if max_count is None else max_count,),
            ).fetchall()
            conn.executemany("INSERT INTO placements (instance_id, host) VALUES (?, ?)", rows)
            migrated = len(rows)
        remaining = int(conn.execute(f"SELECT COUNT(*) {UNMIGRATED}").fetchone()[0])
        return migrated, remaining


def _blockers(conn: sqlite3.Connection, now: float) -> list[str]:
    if not has_table(conn, "placements"):
        return ["the schema is not expanded (run `minicloud-manage db expand` of 2.0)"]
    reasons = []
    old = [
        f"{binary} on {host} ({'runs 1.0' if version == '1.0' else 'is pinned to 1.0'})"
        for binary, host, version in conn.execute(
            "SELECT binary, host, version FROM services WHERE heartbeat >= ? "
            "AND (version = '1.0' OR (binary = 'conductor' AND pin = '1.0')) "
            "ORDER BY binary, host",
            (now - LIVE_WINDOW,),
        )
    ]
    if old:
        reasons.append(
            f"{len(old)} service(s) still need instances.host: {', '.join(old)}; "
            "upgrade and unpin them first"
        )
    if has_column(conn, "instances", "host"):
        left = int(conn.execute(f"SELECT COUNT(*) {UNMIGRATED}").fetchone()[0])
        if left:
            reasons.append(
                f"{left} instance(s) not migrated to placements; "
                "run `minicloud-manage db migrate-data` until it exits 0"
            )
    return reasons


def contract_blockers(path: Path) -> list[str]:
    with connection(path) as conn:
        return _blockers(conn, time.time())


def contracted(path: Path) -> bool:
    with connection(path) as conn:
        return has_table(conn, "placements") and not has_column(conn, "instances", "host")


def contract(path: Path) -> bool:
    """Drop instances.host; False when already dropped. Raises ContractRefused."""
    with transaction(path) as conn:
        if has_table(conn, "placements") and not has_column(conn, "instances", "host"):
            return False
        reasons = _blockers(conn, time.time())
        if reasons:
            raise ContractRefused(reasons)
        conn.execute("ALTER TABLE instances DROP COLUMN host")
        return True


# --- services ------------------------------------------------------------------


def report_state(
    path: Path, *, binary: str, host: str, version: str, pin: str | None, port: int | None
) -> None:
    with connection(path) as conn:
        conn.execute(
            "INSERT INTO services (binary, host, version, pin, port, heartbeat) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (binary, host) DO UPDATE SET "
            "version = excluded.version, pin = excluded.pin, port = excluded.port, "
            "heartbeat = excluded.heartbeat",
            (binary, host, version, pin, port, time.time()),
        )


def services(path: Path) -> list[ServiceRow]:
    with connection(path) as conn:
        return [
            ServiceRow(*row)
            for row in conn.execute(
                "SELECT binary, host, version, pin, port, heartbeat FROM services "
                "ORDER BY binary, host"
            )
        ]


def live_computes(path: Path) -> list[ServiceRow]:
    now = time.time()
    return [r for r in services(path) if r.binary == "compute" and r.alive(now)]


# --- instances (conductors) ----------------------------------------------------


def create_instance(path: Path, name: str, host: str, *, legacy: bool, placement: bool) -> int:
    """Write an instance: `legacy` fills instances.host, `placement` adds its row."""
    with transaction(path) as conn:
        if legacy:
            cursor = conn.execute(
                "INSERT INTO instances (name, host, created) VALUES (?, ?, ?)",
                (name, host, time.time()),
            )
        else:
            cursor = conn.execute(
                "INSERT INTO instances (name, created) VALUES (?, ?)", (name, time.time())
            )
        instance_id = cursor.lastrowid
        assert instance_id is not None
        if placement:
            conn.execute(
                "INSERT INTO placements (instance_id, host) VALUES (?, ?)", (instance_id, host)
            )
        return instance_id


def get_instance_legacy(path: Path, instance_id: int) -> Instance | None:
    """Release 1.0: the host is instances.host."""
    with connection(path) as conn:
        row = conn.execute(
            "SELECT id, name, host FROM instances WHERE id = ?", (instance_id,)
        ).fetchone()
    return None if row is None else Instance(*row)


def get_instance(path: Path, instance_id: int) -> Instance | None:
    """Release 2.0: placement first, instances.host while it still exists."""
    with connection(path) as conn:
        row = conn.execute("SELECT id, name FROM instances WHERE id = ?", (instance_id,)).fetchone()
        if row is None:
            return None
        host = None
        if has_table(conn, "placements"):
            found = conn.execute(
                "SELECT host FROM placements WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            host = None if found is None else found[0]
        if host is None and has_column(conn, "instances", "host"):
            host = conn.execute(
                "SELECT host FROM instances WHERE id = ?", (instance_id,)
            ).fetchone()[0]
        return Instance(row[0], row[1], host)


def counts(path: Path) -> dict[str, int]:
    """Instances, placements and unmigrated rows, for status output and tests."""
    with connection(path) as conn:
        total = int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        if not has_table(conn, "placements"):
            return {"instances": total, "placements": 0, "unmigrated": total}
        placed = int(conn.execute("SELECT COUNT(*) FROM placements").fetchone()[0])
        left = int(conn.execute(f"SELECT COUNT(*) {UNMIGRATED}").fetchone()[0])
        return {"instances": total, "placements": placed, "unmigrated": left}
