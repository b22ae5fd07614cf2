"""Leadership among the daemons on one PostgreSQL store: a lease row with an
expiry and an epoch that only grows.

Every daemon is a peer. Each polls the `leadership` row every `renew`
seconds; when its lease has expired (by the database's clock, so the
daemons' clocks do not matter) one of them takes it in a single UPDATE that
raises the epoch, and becomes the leader: it alone runs engines and writes,
every write carrying that epoch (`PostgresJournal.lead`). The leader renews
every `renew` seconds for `lease` seconds. A standby can take over only
once the lease has expired, so a leader that cannot renew (partitioned,
paused, its database connection gone) must stop acting before that: it
stands down by itself at `lease` seconds after its last successful renewal
was sent, and `check` refuses host actions from then on. Should it go on
anyway (a SIGSTOP, a long GC pause), the database refuses every write of its
old epoch: the `FencedError` makes it step down.

A leader that stops cleanly resigns (its lease expires at once), so a
standby takes over within one `renew` interval instead of a whole lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import structlog

from orchestrator.errors import FencedError, StoreError
from orchestrator.store.pgschema import Conn, connect, redact
from orchestrator.store.pgschema import reason as first_line
from orchestrator.store.role import LeaderInfo, LeaseSettings, Renewals

log = structlog.get_logger("orchestrator.leader")


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


_ACQUIRE = """UPDATE leadership
SET epoch = epoch + 1, holder = %(me)s, address = %(address)s,
    expires_at = clock_timestamp() + make_interval(secs => %(lease)s),
    renewed_at = clock_timestamp()
WHERE id = 1 AND expires_at < clock_timestamp()
RETURNING epoch"""

_RENEW = """UPDATE leadership
SET expires_at = clock_timestamp() + make_interval(secs => %(lease)s),
    renewed_at = clock_timestamp(), address = %(address)s
WHERE id = 1 AND epoch = %(epoch)s AND holder = %(me)s AND expires_at >= clock_timestamp()
RETURNING epoch"""

_RESIGN = """UPDATE leadership SET expires_at = '-infinity'
WHERE id = 1 AND epoch = %(epoch)s AND holder = %(me)s"""

_READ = """SELECT epoch, holder, address,
    EXTRACT(EPOCH FROM clock_timestamp() - renewed_at)::float8,
    EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8
FROM leadership WHERE id = 1"""


class Leadership:
    """Run with `await leadership.run()` (a task); `on_elected(epoch)` and
    `on_lost(reason)` are awaited in that task, one at a time."""

    def __init__(
        self,
        url: str,
        address: str,
        settings: LeaseSettings,
        *,
        on_elected: Callable[[int], Awaitable[None]],
        on_lost: Callable[[str], Awaitable[None]],
        holder: str | None = None,
    ) -> None:
        self.url = url
        self.address = address
        self.settings = settings
        self.holder = holder or holder_id()
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.renewals = Renewals()
        self.epoch: int | None = None
        self.info: LeaderInfo | None = None
        self._valid_until = 0.0  # loop time: this daemon acts as leader until then
        self._conn: Conn | None = None
        self._lost: str | None = None  # a step-down ordered from outside the loop
        self._wake = asyncio.Event()
        self._stopping = False

    # --- what the API and the engines ask ---------------------------------------

    @property
    def leading(self) -> bool:
        return self.epoch is not None and asyncio.get_running_loop().time() < self._valid_until

    @property
    def leader_address(self) -> str | None:
        if self.leading:
            return self.address
        info = self.info
        if info is None or info.expires_in < 0 or not info.address:
            return None
        return info.address

    def check(self) -> None:
        """Before a host action: raise FencedError unless this daemon still
        holds a lease no standby can have taken yet."""
        if not self.leading:
            raise FencedError(
                f"this daemon no longer holds the leader lease (epoch {self.epoch}): "
                "nothing more is done on hosts"
            )

    def describe(self) -> dict[str, Any]:
        info = self.info
        return {
            "role": "leader" if self.leading else "standby",
            "store": "postgresql",
            "epoch": self.epoch if self.leading else (info.epoch if info else None),
            "holder": self.holder,
            "leader": self.leader_address,
            "lease_age_s": None if info is None else round(info.renewed_ago, 3),
            "lease_expires_in_s": None if info is None else round(info.expires_in, 3),
            "lease_s": self.settings.lease,
            "renew_s": self.settings.renew,
        }

    def step_down(self, reason: str) -> None:
        """The store refused a write as stale: stop leading (the loop does it)."""
        if self.epoch is not None and self._lost is None:
            self._lost = reason
            self._wake.set()

    # --- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                started = loop.time()
                try:
                    await self._turn(started)
                except (StoreError, psycopg.Error, TimeoutError) as exc:
                    await self._drop_conn()
                    log.warning("leadership: store unreachable", error=first_line(exc))
                if self.epoch is not None and (
                    self._lost is not None or loop.time() >= self._valid_until
                ):
                    reason = self._lost or (
                        f"the lease could not be renewed within {self.settings.lease:g} s"
                    )
                    await self._lose(reason)
                self._wake.clear()
                wait = max(0.0, self.settings.renew - (loop.time() - started))
                if self.epoch is not None:  # never sleep past the lease's end
                    wait = min(wait, max(0.0, self._valid_until - loop.time()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            await self._drop_conn()

    async def _turn(self, started: float) -> None:
        # a store that hangs must not hold the loop past the next renewal
        async with asyncio.timeout(self.settings.renew):
            conn = await self._connection()
            won = await self._ask(conn, started)
            await self._read(conn)
        if won is not None:
            log.info("elected leader", epoch=won, holder=self.holder)
            try:
                await self.on_elected(won)
            except Exception as exc:
                log.exception("taking over failed: standing down")
                self._lost = f"taking over failed: {exc}"

    async def _ask(self, conn: Conn, started: float) -> int | None:
        """Renew (leading) or try to take the lease; the epoch if just elected."""
        params = {
            "me": self.holder,
            "address": self.address,
            "lease": self.settings.lease,
            "epoch": self.epoch,
        }
        if self.epoch is not None:
            if self._lost is not None or started >= self._valid_until:
                return None  # too late to renew: stand down first (the caller does)
            cur = await conn.execute(_RENEW, params)
            renewed = await cur.fetchone()
            elapsed = asyncio.get_running_loop().time() - started
            if renewed is None:
                self._lost = "another daemon holds the lease now"
            else:
                self.renewals.observe(elapsed)
                self._valid_until = started + self.settings.lease
            return None
        cur = await conn.execute(_ACQUIRE, params)
        won = await cur.fetchone()
        if won is None:
            return None
        self.epoch = int(won[0])
        self._valid_until = started + self.settings.lease
        self._lost = None
        return self.epoch

    async def _read(self, conn: Conn) -> None:
        cur = await conn.execute(_READ)
        row = await cur.fetchone()
        if row is not None:
            epoch, holder, address, ago, expires = row
            self.info = LeaderInfo(
                int(epoch), str(holder), str(address), float(ago), float(expires)
            )

    async def _lose(self, reason: str) -> None:
        epoch, self.epoch = self.epoch, None
        self._lost = None
        log.error("stepping down: no longer the leader", epoch=epoch, reason=reason)
        await self.on_lost(reason)

    async def resign(self) -> None:
        """A clean stop (the loop no longer runs): end the lease now, so a
        standby need not wait for it to expire."""
        self._stopping = True
        if self.epoch is None:
            return
        epoch, self.epoch = self.epoch, None
        try:
            conn = await self._connection()
            await conn.execute(_RESIGN, {"epoch": epoch, "me": self.holder})
            log.info("resigned the leader lease", epoch=epoch)
        except (StoreError, psycopg.Error) as exc:
            log.warning("could not resign the lease; it expires", error=first_line(exc))
        finally:
            await self._drop_conn()

    async def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self.url, purpose="leadership")
        return self._conn

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    def __repr__(self) -> str:
        return f"Leadership({redact(self.url)}, holder={self.holder}, epoch={self.epoch})"
