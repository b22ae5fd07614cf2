"""The journal's PostgreSQL rows: the writes that are not events (create,
lease, idempotency key) and reading records back, inside the writer's or
the reader's transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import psycopg

from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.store.base import Event, UpgradeRecord
from orchestrator.store.pgschema import Conn
from orchestrator.store.requests import Create, Lease, Remember


def event_row(event: Event, text: str) -> tuple[str, int, float, str, str]:
    return (event.upgrade_id, event.seq, event.at, event.kind, text)


async def require_upgrade(conn: Conn, upgrade_id: str) -> None:
    cur = await conn.execute("SELECT 1 FROM upgrades WHERE id = %s", (upgrade_id,))
    if await cur.fetchone() is None:
        raise NotFoundError(f"no upgrade {upgrade_id!r}")


Cursor = psycopg.AsyncCursor[Any]


async def apply(
    cur: Cursor, req: Create | Lease | Remember, last: int | None, epoch: int
) -> tuple[Any, BaseException | None]:
    """Write a request that is not an event: (result, error) for its future."""
    if isinstance(req, Create):
        if last is not None:
            return None, ConflictError(f"upgrade {req.upgrade_id!r} already exists")
        held = await _held(cur, req.upgrade_id, req.endpoints)
        if held is not None:
            return None, held
        await cur.execute(
            "INSERT INTO upgrades (id, created_at, inventory, digest, meta, plan, epoch)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (req.upgrade_id, time.time(), req.inventory, req.digest, req.meta, req.plan, epoch),
        )
        await _take(cur, req.upgrade_id, req.endpoints, epoch)
        return None, None
    if isinstance(req, Lease):
        if last is None:
            return None, NotFoundError(f"no upgrade {req.upgrade_id!r}")
        held = await _held(cur, req.upgrade_id, req.endpoints)
        if held is None:
            await _take(cur, req.upgrade_id, req.endpoints, epoch)
        return None, held
    await cur.execute(
        "INSERT INTO idempotency (key, upgrade_id, created_at, epoch) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (key) DO NOTHING",
        (req.key, req.upgrade_id, time.time(), epoch),
    )
    await cur.execute("SELECT upgrade_id FROM idempotency WHERE key = %s", (req.key,))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0]), None


async def _held(cur: Cursor, upgrade_id: str, endpoints: Mapping[str, str]) -> ConflictError | None:
    """The conflict if another upgrade holds one of `endpoints`, else None."""
    if not endpoints:
        return None
    await cur.execute(
        "SELECT endpoint, upgrade_id, host FROM leases"
        " WHERE endpoint = ANY(%s) AND upgrade_id <> %s ORDER BY endpoint LIMIT 1",
        (sorted(endpoints), upgrade_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    endpoint, holder, named = (str(v) for v in row)
    return ConflictError(
        f"host {endpoints[endpoint]} ({endpoint}) is held by upgrade {holder}"
        + (f" (as {named})" if named != endpoints[endpoint] else "")
        + ": one upgrade at a time per host"
    )


async def _take(cur: Cursor, upgrade_id: str, endpoints: Mapping[str, str], epoch: int) -> None:
    if not endpoints:
        return
    now = time.time()
    await cur.executemany(
        "INSERT INTO leases (endpoint, host, upgrade_id, taken_at, epoch)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (endpoint) DO NOTHING",
        [(endpoint, host, upgrade_id, now, epoch) for endpoint, host in endpoints.items()],
    )


def record(row: tuple[Any, ...]) -> UpgradeRecord:
    uid, created_at, inventory, digest, meta, last_seq, last_kind = row
    return UpgradeRecord(
        str(uid),
        float(created_at),
        str(inventory),
        str(digest),
        json.loads(meta),
        int(last_seq),
        None if last_kind is None else str(last_kind),
    )
