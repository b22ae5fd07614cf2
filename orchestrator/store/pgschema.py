"""The journal's PostgreSQL side: schema, migrations, connections, and the
rules the database itself enforces.

The same guarantees as the SQLite journal, held by triggers so that no
client (ours with a bug, or psql in a hurry) can break them: events are
append-only (no UPDATE, DELETE or TRUNCATE), sequence numbers are gapless
per upgrade, a plan never changes. On top, fencing: one row of `leadership`
holds the leader's epoch, which only grows; every row written to `events`,
`upgrades`, `idempotency` and `leases` carries the epoch of the daemon that
wrote it, and a trigger refuses it unless that epoch is the current one.
The trigger reads the leadership row FOR SHARE, so a takeover (which
updates that row) and a write of the old leader are serialized: the write
either commits before the takeover or is refused after it. Deleting a
lease carries the epoch in the transaction's `orchestrator.epoch` setting.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import conninfo

from orchestrator.errors import StoreError

Conn = psycopg.AsyncConnection[Any]
CONNECT_TIMEOUT = 5  # seconds; libpq's connect_timeout

SCHEMA_VERSION = 1
# held for the migration's transaction: daemons starting together migrate once
MIGRATION_LOCK = 0x6F72636865737472  # "orchestr"
NOTIFY_CHANNEL = "orchestrator_journal"

# SQLSTATEs our triggers raise, so the client can tell them apart
FENCED = "OR001"
APPEND_ONLY = "OR002"
GAPLESS = "OR003"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE leadership (
            id integer PRIMARY KEY CHECK (id = 1),
            epoch bigint NOT NULL CHECK (epoch >= 0),
            holder text NOT NULL,
            address text NOT NULL,
            expires_at timestamptz NOT NULL,
            renewed_at timestamptz NOT NULL
        )""",
        "INSERT INTO leadership VALUES (1, 0, '', '', '-infinity', '-infinity')",
        f"""CREATE FUNCTION orchestrator_epoch_grows() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' OR NEW.epoch < OLD.epoch THEN
                RAISE EXCEPTION 'the leader epoch only grows' USING ERRCODE = '{FENCED}';
            END IF;
            RETURN NEW;
        END $$""",
        """CREATE TRIGGER leadership_epoch_grows BEFORE UPDATE OR DELETE ON leadership
        FOR EACH ROW EXECUTE FUNCTION orchestrator_epoch_grows()""",
        f"""CREATE FUNCTION orchestrator_fence(claimed bigint) RETURNS void
        LANGUAGE plpgsql AS $$
        DECLARE
            current bigint;
        BEGIN
            SELECT epoch INTO current FROM leadership WHERE id = 1 FOR SHARE;
            IF claimed IS NULL OR claimed <> current THEN
                RAISE EXCEPTION 'stale leader epoch %: the store is at epoch %, '
                    'a newer leader took over', claimed, current
                    USING ERRCODE = '{FENCED}';
            END IF;
        END $$""",
        """CREATE FUNCTION orchestrator_fenced_row() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM orchestrator_fence(NEW.epoch);
            RETURN NEW;
        END $$""",
        """CREATE FUNCTION orchestrator_fenced_delete() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM orchestrator_fence(
                NULLIF(current_setting('orchestrator.epoch', true), '')::bigint);
            RETURN OLD;
        END $$""",
        f"""CREATE FUNCTION orchestrator_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% of % refused: journal records are append-only',
                TG_OP, TG_TABLE_NAME USING ERRCODE = '{APPEND_ONLY}';
        END $$""",
        f"""CREATE FUNCTION orchestrator_gapless() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            expected bigint;
        BEGIN
            SELECT COALESCE(MAX(seq), 0) + 1 INTO expected FROM events
                WHERE upgrade_id = NEW.upgrade_id;
            IF NEW.seq <> expected THEN
                RAISE EXCEPTION 'journal seq must be gapless: upgrade % expects %, got %',
                    NEW.upgrade_id, expected, NEW.seq USING ERRCODE = '{GAPLESS}';
            END IF;
            RETURN NEW;
        END $$""",
        """CREATE TABLE upgrades (
            id text PRIMARY KEY,
            created_at double precision NOT NULL,
            inventory text NOT NULL,
            digest text NOT NULL,
            meta text NOT NULL,
            plan text NOT NULL,
            epoch bigint NOT NULL
        )""",
        """CREATE TABLE events (
            upgrade_id text NOT NULL REFERENCES upgrades(id),
            seq bigint NOT NULL CHECK (seq > 0),
            at double precision NOT NULL,
            kind text NOT NULL,
            data text NOT NULL,
            epoch bigint NOT NULL,
            PRIMARY KEY (upgrade_id, seq)
        )""",
        """CREATE TABLE idempotency (
            key text PRIMARY KEY,
            upgrade_id text NOT NULL,
            created_at double precision NOT NULL,
            epoch bigint NOT NULL
        )""",
        # host leases: an upgrade holds the SSH endpoint of every host it works
        # on until its end state; the primary key makes a second holder impossible
        """CREATE TABLE leases (
            endpoint text PRIMARY KEY,
            host text NOT NULL,
            upgrade_id text NOT NULL REFERENCES upgrades(id),
            taken_at double precision NOT NULL,
            epoch bigint NOT NULL
        )""",
        "CREATE INDEX leases_by_upgrade ON leases (upgrade_id)",
        # the order of BEFORE triggers is by name: fence first, then the seq
        """CREATE TRIGGER events_a_fenced BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION orchestrator_fenced_row()""",
        """CREATE TRIGGER events_b_gapless BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION orchestrator_gapless()""",
        """CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION orchestrator_append_only()""",
        """CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION orchestrator_append_only()""",
        """CREATE TRIGGER upgrades_fenced BEFORE INSERT ON upgrades
        FOR EACH ROW EXECUTE FUNCTION orchestrator_fenced_row()""",
        # an upgrade's plan, digest and inventory are what its events mean
        """CREATE TRIGGER upgrades_fixed BEFORE UPDATE OR DELETE ON upgrades
        FOR EACH ROW EXECUTE FUNCTION orchestrator_append_only()""",
        """CREATE TRIGGER upgrades_no_truncate BEFORE TRUNCATE ON upgrades
        FOR EACH STATEMENT EXECUTE FUNCTION orchestrator_append_only()""",
        """CREATE TRIGGER idempotency_fenced BEFORE INSERT ON idempotency
        FOR EACH ROW EXECUTE FUNCTION orchestrator_fenced_row()""",
        """CREATE TRIGGER idempotency_fixed BEFORE UPDATE OR DELETE ON idempotency
        FOR EACH ROW EXECUTE FUNCTION orchestrator_append_only()""",
        """CREATE TRIGGER leases_fenced BEFORE INSERT OR UPDATE ON leases
        FOR EACH ROW EXECUTE FUNCTION orchestrator_fenced_row()""",
        """CREATE TRIGGER leases_fenced_delete BEFORE DELETE ON leases
        FOR EACH ROW EXECUTE FUNCTION orchestrator_fenced_delete()""",
    ),
)

RECORDS = """SELECT u.id, u.created_at, u.inventory, u.digest, u.meta,
    COALESCE(e.seq, 0), e.kind
FROM upgrades u LEFT JOIN LATERAL (
    SELECT seq, kind FROM events WHERE upgrade_id = u.id ORDER BY seq DESC LIMIT 1
) e ON true"""

LAST_SEQS = """SELECT u.id, COALESCE((SELECT MAX(seq) FROM events WHERE upgrade_id = u.id), 0)
FROM upgrades u"""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or "")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"


async def connect(url: str, *, purpose: str) -> Conn:
    try:
        return await psycopg.AsyncConnection.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"orchestrator {purpose}",
            # a partitioned peer is noticed in seconds, not in TCP's hours
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
    except psycopg.Error as exc:
        raise StoreError(f"{redact(url)}: cannot connect: {reason(exc)}") from None


def reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


async def migrate(conn: Conn, where: str) -> None:
    """Create or migrate the schema; daemons starting together take turns."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS orchestrator_schema (version integer NOT NULL)"
        )
        cur = await conn.execute("SELECT version FROM orchestrator_schema")
        row = await cur.fetchone()
        current = 0 if row is None else int(row[0])
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: journal schema version {current} is newer than this "
                f"orchestrator's ({SCHEMA_VERSION})"
            )
        for statements in MIGRATIONS[current:]:
            for statement in statements:
                await conn.execute(statement)
        if row is None:
            await conn.execute(
                "INSERT INTO orchestrator_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
            )
        elif current != SCHEMA_VERSION:
            await conn.execute("UPDATE orchestrator_schema SET version = %s", (SCHEMA_VERSION,))
