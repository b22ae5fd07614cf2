"""The journal: the append-only, crash-safe record of every upgrade's events.

SQLite in WAL mode with ``synchronous=FULL``: a commit returns only once the
WAL is fsynced, so an event acknowledged by `Journal.append` survives a
SIGKILL (or a power cut). Every write goes through ONE thread that owns the
write connection. It takes everything queued while its previous commit was
syncing and commits it together (group commit: one fsync for many events),
which is what lets fifty hosts journal concurrently without queueing behind
the disk. Reads use a second connection from worker threads; WAL lets them
run beside the writer. The event loop itself never touches the disk.

Sequence numbers are assigned by the writer in commit order, per upgrade,
starting at 1 and gapless (a trigger refuses anything else). Triggers also
refuse any UPDATE or DELETE of an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import structlog

from orchestrator.errors import ConflictError, NotFoundError, StoreError
from orchestrator.store.base import MAX_BATCH, Event, JournalStats, UpgradeRecord
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
from orchestrator.store.sqlite import connect, load_seqs, migrate, require_upgrade

__all__ = ["MAX_BATCH", "Event", "Journal", "JournalStats", "UpgradeRecord"]

log = structlog.get_logger("orchestrator.journal")

T = TypeVar("T")


@dataclass(slots=True)
class _Stop:
    future: asyncio.Future[None] | None


class Journal:
    """Open with `await Journal.open(path)`; close with `await journal.close()`.

    Cancelling a caller of `append` does not withdraw its event: once queued
    it is committed, and `after_commit` still sees it.
    """

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        after_commit: Callable[[Event], None] | None,
    ) -> None:
        self.path = path
        self.stats = JournalStats()
        self._loop = loop
        self._after_commit = after_commit
        self._queue: queue.SimpleQueue[Request | _Stop] = queue.SimpleQueue()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        # owned by the writer thread: last committed seq per known upgrade
        self._seqs: dict[str, int] = {}
        # owned by the loop thread: the same, as delivered, for wait_for
        self._committed: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    # --- lifecycle -------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: Path, *, after_commit: Callable[[Event], None] | None = None
    ) -> Journal:
        loop = asyncio.get_running_loop()
        journal = cls(path, loop, after_commit)
        ready: asyncio.Future[dict[str, int]] = loop.create_future()
        thread = threading.Thread(
            target=journal._writer_main, args=(ready,), name=f"journal:{path.name}", daemon=True
        )
        journal._thread = thread
        thread.start()
        try:
            journal._committed = dict(await ready)
        except BaseException:
            journal._closed = True
            # a writer that got going stops; one that failed has already gone
            journal._queue.put(_Stop(None))
            raise
        try:
            journal._reader = await asyncio.to_thread(connect, path, reader=True)
        except BaseException:
            await journal.close()
            raise
        return journal

    async def close(self) -> None:
        """Commit everything already queued, then release both connections."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            done: asyncio.Future[None] = self._loop.create_future()
            self._queue.put(_Stop(done))
            await done
            await asyncio.to_thread(thread.join)
        await asyncio.to_thread(self._close_reader)
        for waiters in self._waiters.values():
            for waiter in waiters:
                settle(waiter, None, None)

    @property
    def where(self) -> str:
        return str(self.path)

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- writes (durable when they return) ---------------------------------

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
        """Record a new upgrade and its plan, leasing `endpoints` (SSH endpoint
        -> host name) to it in the same commit. A duplicate id, or an endpoint
        another upgrade holds, is a ConflictError and creates nothing."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._submit(
            Create(
                upgrade_id,
                plan_json,
                inventory,
                digest,
                to_json(meta),
                future,
                dict(endpoints or {}),
            )
        )
        await future

    async def append(
        self, upgrade_id: str, kind: str, data: Mapping[str, Any], *, release: bool = False
    ) -> Event:
        """Journal one event; returns it (with its seq) once it is on disk.
        `release`: the event ends the upgrade, and its host leases end with it."""
        [event] = await self.append_all(upgrade_id, [(kind, data)], release=release)
        return event

    async def append_all(
        self,
        upgrade_id: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        release: bool = False,
    ) -> list[Event]:
        """Journal (kind, data) events in order in one commit, all or none;
        returns them once they are on disk."""
        future: asyncio.Future[list[Event]] = self._loop.create_future()
        self._submit(append_request(upgrade_id, items, future, release))
        return await future

    async def lease(self, upgrade_id: str, endpoints: Mapping[str, str]) -> None:
        """Lease `endpoints` to an existing upgrade (again: a rollback after its
        end, a journal from before leases); ConflictError if another holds one."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._submit(Lease(upgrade_id, dict(endpoints), future))
        await future

    async def leases(self) -> dict[str, tuple[str, str]]:
        """Every lease: endpoint -> (upgrade id, host name)."""

        def query(conn: sqlite3.Connection) -> dict[str, tuple[str, str]]:
            rows = conn.execute("SELECT endpoint, upgrade_id, host FROM leases ORDER BY endpoint")
            return {str(e): (str(u), str(h)) for e, u, h in rows}

        return await self._read(query)

    async def remember_key(self, key: str, upgrade_id: str) -> str:
        """Bind an idempotency key to `upgrade_id`; returns the id it was first bound to."""
        future: asyncio.Future[str] = self._loop.create_future()
        self._submit(Remember(key, upgrade_id, future))
        return await future

    def _submit(self, request: Request) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: journal is closed")
        if self._thread is None or not self._thread.is_alive():
            raise StoreError(f"{self.path}: journal writer is not running")
        self._queue.put(request)

    # --- reads ---------------------------------------------------------------

    async def events(
        self, upgrade_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        def query(conn: sqlite3.Connection) -> list[Event]:
            require_upgrade(conn, upgrade_id)
            rows = conn.execute(
                "SELECT seq, at, kind, data FROM events"
                " WHERE upgrade_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (upgrade_id, after, -1 if limit is None else limit),
            )
            return [Event(upgrade_id, s, at, k, json.loads(d)) for s, at, k, d in rows]

        return await self._read(query)

    async def upgrades(self) -> list[UpgradeRecord]:
        def query(conn: sqlite3.Connection) -> list[UpgradeRecord]:
            return [_record(row) for row in conn.execute(_RECORDS + " ORDER BY u.created_at, u.id")]

        return await self._read(query)

    async def get(self, upgrade_id: str) -> UpgradeRecord:
        def query(conn: sqlite3.Connection) -> UpgradeRecord:
            row = conn.execute(_RECORDS + " WHERE u.id = ?", (upgrade_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no upgrade {upgrade_id!r}")
            return _record(row)

        return await self._read(query)

    async def plan_json(self, upgrade_id: str) -> str:
        def query(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT plan FROM upgrades WHERE id = ?", (upgrade_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no upgrade {upgrade_id!r}")
            return str(row[0])

        return await self._read(query)

    async def lookup_key(self, key: str) -> str | None:
        """The upgrade an idempotency key is bound to, if any."""

        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT upgrade_id FROM idempotency WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(query)

    async def wait_for(self, upgrade_id: str, after: int, timeout: float) -> list[Event]:
        """Events after `after`, waiting up to `timeout` seconds for the first; [] on timeout."""
        if upgrade_id not in self._committed:
            raise NotFoundError(f"no upgrade {upgrade_id!r}")
        deadline = self._loop.time() + timeout
        while True:
            if self._committed[upgrade_id] > after:
                found = await self.events(upgrade_id, after)
                if found:
                    return found
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return []
            if self._closed:
                raise StoreError(f"{self.path}: journal is closed")
            waiter: asyncio.Future[None] = self._loop.create_future()
            waiters = self._waiters.setdefault(upgrade_id, set())
            waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                waiters.discard(waiter)

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"{self.path}: journal is closed")
        return await asyncio.to_thread(self._read_sync, query)

    def _read_sync(self, query: Callable[[sqlite3.Connection], T]) -> T:
        with self._read_lock:
            conn = self._reader
            if conn is None:
                raise StoreError(f"{self.path}: journal is closed")
            try:
                conn.execute("BEGIN")  # one snapshot for every SELECT of the query
                try:
                    return query(conn)
                finally:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: journal read failed: {exc}") from exc

    def _close_reader(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # --- the writer thread -------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the loop is closed, so nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _writer_main(self, ready: asyncio.Future[dict[str, int]]) -> None:
        try:
            conn = connect(self.path, reader=False)
        except StoreError as exc:
            self._post(settle, ready, None, exc)
            return
        stop: _Stop | None = None
        try:
            try:
                migrate(conn, self.path)
                self._seqs = load_seqs(conn)
            except (StoreError, sqlite3.Error) as exc:
                error = exc if isinstance(exc, StoreError) else StoreError(f"{self.path}: {exc}")
                self._post(settle, ready, None, error)
                return
            self._post(settle, ready, dict(self._seqs), None)
            while stop is None:
                batch: list[Request] = []
                item = self._queue.get()
                while True:
                    if isinstance(item, _Stop):
                        stop = item
                        break
                    batch.append(item)
                    if len(batch) >= MAX_BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._commit(conn, batch)
        finally:
            conn.close()
            self._fail_queued()
            if stop is not None and stop.future is not None:
                self._post(settle, stop.future, None, None)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Stop):
                if item.future is not None:
                    self._post(settle, item.future, None, None)
                continue
            error = StoreError(f"{self.path}: journal writer stopped")
            self._post(settle, item.future, None, error)

    def _commit(self, conn: sqlite3.Connection, batch: list[Request]) -> None:
        """One transaction for the whole batch; outcomes go back to the loop after COMMIT."""
        seqs: dict[str, int] = {}  # this batch's view over self._seqs
        outcomes: list[Outcome] = []
        events: list[Event] = []
        rows: list[tuple[str, int, float, str, str]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for req in batch:
                last = seqs.get(req.upgrade_id, self._seqs.get(req.upgrade_id))
                if isinstance(req, Append):
                    if last is None:
                        missing = NotFoundError(f"no upgrade {req.upgrade_id!r}")
                        outcomes.append((req.future, None, missing))
                        continue
                    stored = sequence(req, last, time.time())
                    if req.release:
                        conn.execute("DELETE FROM leases WHERE upgrade_id = ?", (req.upgrade_id,))
                    seqs[req.upgrade_id] = stored[-1].seq if stored else last
                    rows += [
                        (e.upgrade_id, e.seq, e.at, e.kind, text)
                        for e, (_, _, text) in zip(stored, req.events, strict=True)
                    ]
                    events += stored
                    outcomes.append((req.future, stored, None))
                else:
                    result, error = _apply(conn, req, last)
                    if isinstance(req, Create) and error is None:
                        seqs[req.upgrade_id] = 0
                    outcomes.append((req.future, result, error))
            conn.executemany(
                "INSERT INTO events (upgrade_id, seq, at, kind, data) VALUES (?, ?, ?, ?, ?)", rows
            )
            conn.execute("COMMIT")
        except Exception as exc:  # disk full, I/O error, a bug: fail the batch, keep serving
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.error("journal commit failed", path=str(self.path), error=str(exc))
            for req in batch:
                error = StoreError(f"{self.path}: journal write failed: {exc}")
                self._post(settle, req.future, None, error)
            return
        self._seqs.update(seqs)
        self.stats.commits += 1
        self.stats.events += len(events)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self._post(self._deliver, events, outcomes, seqs)

    # --- back in the loop ----------------------------------------------------

    def _deliver(self, events: list[Event], outcomes: list[Outcome], seqs: dict[str, int]) -> None:
        self._committed.update(seqs)
        if self._after_commit is not None:
            for event in events:
                try:
                    self._after_commit(event)
                except Exception:
                    log.exception("after_commit callback failed", seq=event.seq)
        for future, result, error in outcomes:
            settle(future, result, error)
        for upgrade_id in seqs:
            for waiter in self._waiters.pop(upgrade_id, ()):
                settle(waiter, None, None)


_RECORDS = """SELECT u.id, u.created_at, u.inventory, u.digest, u.meta,
    COALESCE(e.seq, 0), e.kind
FROM upgrades u LEFT JOIN events e ON e.upgrade_id = u.id
    AND e.seq = (SELECT MAX(seq) FROM events WHERE upgrade_id = u.id)"""


def _apply(
    conn: sqlite3.Connection, req: Create | Lease | Remember, last: int | None
) -> tuple[Any, BaseException | None]:
    """Write a request that is not an event: (result, error) for its future."""
    if isinstance(req, Create):
        if last is not None:
            return None, ConflictError(f"upgrade {req.upgrade_id!r} already exists")
        held = _held(conn, req.upgrade_id, req.endpoints)
        if held is not None:
            return None, held
        row = (req.upgrade_id, time.time(), req.inventory, req.digest, req.meta)
        conn.execute(
            "INSERT INTO upgrades (id, created_at, inventory, digest, meta, plan)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (*row, req.plan),
        )
        _take(conn, req.upgrade_id, req.endpoints)
        return None, None
    if isinstance(req, Lease):
        if last is None:
            return None, NotFoundError(f"no upgrade {req.upgrade_id!r}")
        held = _held(conn, req.upgrade_id, req.endpoints)
        if held is None:
            _take(conn, req.upgrade_id, req.endpoints)
        return None, held
    conn.execute(
        "INSERT OR IGNORE INTO idempotency (key, upgrade_id, created_at) VALUES (?, ?, ?)",
        (req.key, req.upgrade_id, time.time()),
    )
    (first,) = conn.execute(
        "SELECT upgrade_id FROM idempotency WHERE key = ?", (req.key,)
    ).fetchone()
    return str(first), None


def _held(
    conn: sqlite3.Connection, upgrade_id: str, endpoints: Mapping[str, str]
) -> ConflictError | None:
    """The conflict if another upgrade holds one of `endpoints`, else None."""
    for endpoint in sorted(endpoints):
        row = conn.execute(
            "SELECT upgrade_id, host FROM leases WHERE endpoint = ? AND upgrade_id <> ?",
            (endpoint, upgrade_id),
        ).fetchone()
        if row is not None:
            holder, named = row
            return ConflictError(
                f"host {endpoints[endpoint]} ({endpoint}) is held by upgrade {holder}"
                + (f" (as {named})" if named != endpoints[endpoint] else "")
                + ": one upgrade at a time per host"
            )
    return None


def _take(conn: sqlite3.Connection, upgrade_id: str, endpoints: Mapping[str, str]) -> None:
    now = time.time()
    conn.executemany(
        "INSERT OR IGNORE INTO leases (endpoint, host, upgrade_id, taken_at) VALUES (?, ?, ?, ?)",
        [(endpoint, host, upgrade_id, now) for endpoint, host in endpoints.items()],
    )


def _record(row: tuple[Any, ...]) -> UpgradeRecord:
    uid, created_at, inventory, digest, meta, last_seq, last_kind = row
    return UpgradeRecord(uid, created_at, inventory, digest, json.loads(meta), last_seq, last_kind)
