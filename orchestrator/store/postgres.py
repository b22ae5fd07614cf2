"""The journal on PostgreSQL: several daemons on one store, one of which leads.

psycopg 3 (not asyncpg): it ships its own type hints, which mypy --strict
needs; it speaks LISTEN/NOTIFY as an async iterator; its `executemany`
sends a whole batch in one round trip (libpq pipeline mode).

The same contract as the SQLite `Journal` (`orchestrator.store.base.Store`):
* one writer task owns the write connection and commits everything queued
  while its previous commit was in flight in ONE transaction (group
  commit); a commit returns once PostgreSQL has it durable
  (`synchronous_commit` is the server's, on by default);
* sequence numbers are assigned by the writer, gapless per upgrade, and the
  database refuses any other (`pgschema`); events are append-only there too.

And what a shared store adds:
* every write carries the epoch this daemon leads with (`lead`); the
  database refuses a stale one (`FencedError`), after which this store
  writes nothing more and tells `on_fenced`, so the daemon steps down;
* a standby does not write at all (`NotLeaderError`) but follows: every
  commit NOTIFYs the upgrades it touched, and a listener (plus a periodic
  re-read, for a lost connection) updates what `wait_for` waits on and
  tells `on_change`, which the manager uses to keep its views current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
import structlog

from orchestrator.errors import (
    FencedError,
    NotFoundError,
    NotLeaderError,
    StoreError,
)
from orchestrator.store import pgschema
from orchestrator.store.base import MAX_BATCH, AfterCommit, Event, JournalStats, UpgradeRecord
from orchestrator.store.pgrows import apply, event_row, record, require_upgrade
from orchestrator.store.pgschema import Conn, connect, migrate, reason, redact
from orchestrator.store.requests import (
    Append,
    Create,
    Lease,
    Outcome,
    Remember,
    Request,
    append_request,
    sequence,
    settle,
    to_json,
)

__all__ = ["Conn", "PostgresJournal", "connect", "redact"]

log = structlog.get_logger("orchestrator.journal")

T = TypeVar("T")

RESYNC = 5.0  # a standby re-reads the last sequence numbers this often anyway
RECONNECT = 1.0


class PostgresJournal:
    """Open with `await PostgresJournal.open(url)`; close with `await journal.close()`.

    Writes need `await journal.lead(epoch)` first; until then (a standby)
    they raise NotLeaderError and change nothing."""

    def __init__(self, url: str, after_commit: AfterCommit | None) -> None:
        self.url = url
        self.stats = JournalStats()
        self._after_commit = after_commit
        # told (in the loop) of every upgrade whose last seq grew by another's commit
        self.on_change: Callable[[str, int], None] | None = None
        # told once, with the database's reason, when a write was refused as stale
        self.on_fenced: Callable[[str], None] | None = None
        self.epoch: int | None = None
        self.fenced: str | None = None
        self._queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._writer_conn: Conn | None = None
        self._reader_conn: Conn | None = None
        self._seqs: dict[str, int] = {}  # the writer's: last seq per upgrade, while leading
        self._committed: dict[str, int] = {}  # known last seq, from any daemon's commits
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def where(self) -> str:
        return redact(self.url)

    # --- lifecycle -------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, after_commit: AfterCommit | None = None) -> PostgresJournal:
        journal = cls(url, after_commit)
        conn = await connect(url, purpose="journal writer")
        try:
            try:
                await migrate(conn, journal.where)
            except psycopg.Error as exc:
                raise StoreError(f"{journal.where}: cannot migrate: {reason(exc)}") from None
            journal._writer_conn = conn
            journal._committed = await journal._last_seqs()
        except BaseException:
            await conn.close()
            await journal._close_reader()
            raise
        journal._tasks = [
            asyncio.create_task(journal._writer_main(), name="journal-writer"),
            asyncio.create_task(journal._listen_main(), name="journal-listener"),
        ]
        return journal

    async def close(self) -> None:
        """Commit everything already queued, then close every connection."""
        if self._closed:
            return
        self._closed = True
        writer, listener = self._tasks or (None, None)
        if writer is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        self._fail_queued(StoreError(f"{self.where}: journal is closed"))
        if self._writer_conn is not None:
            await self._writer_conn.close()
            self._writer_conn = None
        await self._close_reader()
        for waiters in self._waiters.values():
            for waiter in waiters:
                settle(waiter, None, None)

    async def _close_reader(self) -> None:
        async with self._read_lock:
            if self._reader_conn is not None:
                await self._reader_conn.close()
                self._reader_conn = None

    # --- leading -------------------------------------------------------------------

    async def lead(self, epoch: int) -> None:
        """Write as the leader of `epoch` from now on. The sequence numbers are
        re-read first: the previous leader (another daemon) wrote since."""
        async with self._write_lock:
            self._seqs = await self._last_seqs()
            for upgrade_id, seq in self._seqs.items():
                self._heard(upgrade_id, seq)
            self.epoch, self.fenced = epoch, None

    def unlead(self, reason: str) -> None:
        """Write nothing more (a standby again): queued and later writes fail."""
        self.epoch = None
        self.fenced = reason

    def _not_leading(self) -> NotLeaderError:
        if self.fenced is not None:
            return FencedError(f"{self.where}: this daemon no longer leads: {self.fenced}")
        return NotLeaderError(f"{self.where}: this daemon is a standby; the leader writes")

    # --- writes ----------------------------------------------------------------------

    async def create(
        self,
        upgrade_id: str,
        plan_json: str,
        *,
        inventory: str,
        digest: str,
        meta: Mapping[str, Any],
        endpoints: Mapping[str, str] | None = None,
    ) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        request = Create(
            upgrade_id, plan_json, inventory, digest, to_json(meta), future, dict(endpoints or {})
        )
        self._submit(request)
        await future

    async def append(
        self, upgrade_id: str, kind: str, data: Mapping[str, Any], *, release: bool = False
    ) -> Event:
        [event] = await self.append_all(upgrade_id, [(kind, data)], release=release)
        return event

    async def append_all(
        self,
        upgrade_id: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        release: bool = False,
    ) -> list[Event]:
        future: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        self._submit(append_request(upgrade_id, items, future, release))
        return await future

    async def lease(self, upgrade_id: str, endpoints: Mapping[str, str]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(Lease(upgrade_id, dict(endpoints), future))
        await future

    async def remember_key(self, key: str, upgrade_id: str) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._submit(Remember(key, upgrade_id, future))
        return await future

    def _submit(self, request: Request) -> None:
        if self._closed:
            raise StoreError(f"{self.where}: journal is closed")
        if self.epoch is None:
            raise self._not_leading()
        self._queue.put_nowait(request)

    def _fail_queued(self, error: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not None:
                settle(item.future, None, error)

    async def _writer_main(self) -> None:
        stop = False
        while not stop:
            item = await self._queue.get()
            batch: list[Request] = []
            while True:
                if item is None:
                    stop = True
                    break
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            if batch:
                async with self._write_lock:
                    await self._commit(batch)

    async def _commit(self, batch: list[Request]) -> None:
        epoch = self.epoch
        if epoch is None:
            for req in batch:
                settle(req.future, None, self._not_leading())
            return
        seqs: dict[str, int] = {}
        outcomes: list[Outcome] = []
        events: list[Event] = []
        try:
            conn = await self._writer()
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    "SELECT set_config('orchestrator.epoch', %s, true), orchestrator_fence(%s)",
                    (str(epoch), epoch),
                )
                rows: list[tuple[str, int, float, str, str, int]] = []
                for req in batch:
                    last = seqs.get(req.upgrade_id, self._seqs.get(req.upgrade_id))
                    if isinstance(req, Append):
                        if last is None:
                            missing = NotFoundError(f"no upgrade {req.upgrade_id!r}")
                            outcomes.append((req.future, None, missing))
                            continue
                        stored = sequence(req, last, time.time())
                        if req.release:
                            await cur.execute(
                                "DELETE FROM leases WHERE upgrade_id = %s", (req.upgrade_id,)
                            )
                        seqs[req.upgrade_id] = stored[-1].seq if stored else last
                        rows += [
                            (*event_row(e, text), epoch)
                            for e, (_, _, text) in zip(stored, req.events, strict=True)
                        ]
                        events += stored
                        outcomes.append((req.future, stored, None))
                    else:
                        result, error = await apply(cur, req, last, epoch)
                        if isinstance(req, Create) and error is None:
                            seqs[req.upgrade_id] = 0
                        outcomes.append((req.future, result, error))
                if rows:
                    await cur.executemany(
                        "INSERT INTO events (upgrade_id, seq, at, kind, data, epoch)"
                        " VALUES (%s, %s, %s, %s, %s, %s)",
                        rows,
                    )
                for upgrade_id, seq in seqs.items():
                    await cur.execute(
                        "SELECT pg_notify(%s, %s)",
                        (pgschema.NOTIFY_CHANNEL, json.dumps([upgrade_id, seq])),
                    )
        except psycopg.Error as exc:
            self._failed(batch, exc)
            return
        self._seqs.update(seqs)
        self.stats.commits += 1
        self.stats.events += len(events)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for upgrade_id, seq in seqs.items():
            self._heard(upgrade_id, seq, own=True)
        if self._after_commit is not None:
            for event in events:
                try:
                    self._after_commit(event)
                except Exception:
                    log.exception("after_commit callback failed", seq=event.seq)
        for future, result, error in outcomes:
            settle(future, result, error)

    def _failed(self, batch: list[Request], exc: psycopg.Error) -> None:
        error: BaseException
        if exc.sqlstate == pgschema.FENCED:
            why = exc.diag.message_primary or reason(exc)
            first = self.fenced is None
            self.unlead(why)
            error = self._not_leading()
            if first:
                log.error("the store refused a write: stepping down", reason=why)
                if self.on_fenced is not None:
                    self.on_fenced(why)
        else:
            if isinstance(exc, psycopg.OperationalError):
                # the connection is gone (or going): the next batch opens a new
                # one, and re-reads the seqs in case this COMMIT did land
                self._drop_writer()
            log.error("journal commit failed", store=self.where, error=reason(exc))
            error = StoreError(f"{self.where}: journal write failed: {reason(exc)}")
        for req in batch:
            settle(req.future, None, error)

    def _drop_writer(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None:
            task = asyncio.create_task(conn.close())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _writer(self) -> Conn:
        if self._writer_conn is None or self._writer_conn.closed:
            self._writer_conn = await connect(self.url, purpose="journal writer")
            self._seqs = await self._last_seqs()
        return self._writer_conn

    # --- reads -------------------------------------------------------------------------

    async def _read(self, query: Callable[[Conn], Awaitable[T]]) -> T:
        if self._closed:
            raise StoreError(f"{self.where}: journal is closed")
        async with self._read_lock:
            for attempt in (1, 2):
                try:
                    if self._reader_conn is None or self._reader_conn.closed:
                        self._reader_conn = await connect(self.url, purpose="journal reader")
                    return await query(self._reader_conn)
                except psycopg.OperationalError as exc:
                    conn, self._reader_conn = self._reader_conn, None
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            await conn.close()
                    if attempt == 2:
                        raise StoreError(
                            f"{self.where}: journal read failed: {reason(exc)}"
                        ) from None
                except psycopg.Error as exc:
                    raise StoreError(f"{self.where}: journal read failed: {reason(exc)}") from None
        raise AssertionError("unreachable")

    async def _last_seqs(self) -> dict[str, int]:
        async def query(conn: Conn) -> dict[str, int]:
            cur = await conn.execute(pgschema.LAST_SEQS)
            return {str(uid): int(seq) for uid, seq in await cur.fetchall()}

        return await self._read(query)

    async def events(
        self, upgrade_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        async def query(conn: Conn) -> list[Event]:
            await require_upgrade(conn, upgrade_id)
            cur = await conn.execute(
                "SELECT seq, at, kind, data FROM events"
                " WHERE upgrade_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (upgrade_id, after, limit),
            )
            return [
                Event(upgrade_id, int(s), float(at), str(k), json.loads(d))
                for s, at, k, d in await cur.fetchall()
            ]

        return await self._read(query)

    async def upgrades(self) -> list[UpgradeRecord]:
        async def query(conn: Conn) -> list[UpgradeRecord]:
            cur = await conn.execute(pgschema.RECORDS + " ORDER BY u.created_at, u.id")
            return [record(row) for row in await cur.fetchall()]

        return await self._read(query)

    async def get(self, upgrade_id: str) -> UpgradeRecord:
        async def query(conn: Conn) -> UpgradeRecord:
            cur = await conn.execute(pgschema.RECORDS + " WHERE u.id = %s", (upgrade_id,))
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(f"no upgrade {upgrade_id!r}")
            return record(row)

        return await self._read(query)

    async def plan_json(self, upgrade_id: str) -> str:
        async def query(conn: Conn) -> str:
            cur = await conn.execute("SELECT plan FROM upgrades WHERE id = %s", (upgrade_id,))
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(f"no upgrade {upgrade_id!r}")
            return str(row[0])

        return await self._read(query)

    async def lookup_key(self, key: str) -> str | None:
        async def query(conn: Conn) -> str | None:
            cur = await conn.execute("SELECT upgrade_id FROM idempotency WHERE key = %s", (key,))
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._read(query)

    async def leases(self) -> dict[str, tuple[str, str]]:
        async def query(conn: Conn) -> dict[str, tuple[str, str]]:
            cur = await conn.execute(
                "SELECT endpoint, upgrade_id, host FROM leases ORDER BY endpoint"
            )
            return {str(e): (str(u), str(h)) for e, u, h in await cur.fetchall()}

        return await self._read(query)

    async def wait_for(self, upgrade_id: str, after: int, timeout: float) -> list[Event]:
        loop = asyncio.get_running_loop()
        if upgrade_id not in self._committed:
            record = await self.get(upgrade_id)  # NotFoundError if there is none
            self._heard(upgrade_id, record.last_seq)
        deadline = loop.time() + timeout
        while True:
            if self._committed[upgrade_id] > after:
                found = await self.events(upgrade_id, after)
                if found:
                    return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if self._closed:
                raise StoreError(f"{self.where}: journal is closed")
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(upgrade_id, set())
            waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                waiters.discard(waiter)

    # --- following the other daemons' commits ---------------------------------------

    def _heard(self, upgrade_id: str, seq: int, *, own: bool = False) -> None:
        known = self._committed.get(upgrade_id)
        if known is not None and seq <= known:
            return
        self._committed[upgrade_id] = seq
        for waiter in self._waiters.pop(upgrade_id, ()):
            settle(waiter, None, None)
        if not own and self.on_change is not None:
            try:
                self.on_change(upgrade_id, seq)
            except Exception:
                log.exception("on_change callback failed", upgrade=upgrade_id)

    async def _listen_main(self) -> None:
        while True:
            conn: Conn | None = None
            try:
                conn = await connect(self.url, purpose="journal listener")
                await conn.execute(f"LISTEN {pgschema.NOTIFY_CHANNEL}")
                while True:
                    # (re)connected, or quiet for RESYNC: re-read, so nothing is missed
                    for upgrade_id, seq in (await self._last_seqs()).items():
                        self._heard(upgrade_id, seq)
                    async for note in conn.notifies(timeout=RESYNC):
                        upgrade_id, seq = json.loads(note.payload)
                        self._heard(str(upgrade_id), int(seq))
            except (StoreError, psycopg.Error) as exc:
                log.warning("journal listener reconnects", store=self.where, error=reason(exc))
            finally:
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
            await asyncio.sleep(RECONNECT)
