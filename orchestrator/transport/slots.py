"""At most so many SSH connections open at once: leases, idle ones closed first.

A daemon upgrading 10,000 hosts cannot hold a connection per host (each is
a file descriptor). What a caller can rely on:

* `ConnectionLimit(n)`: at most n connections are open at once among every
  `HostConnections` that shares it (the daemon shares one among all its
  pools). A connection counts from the moment it starts opening until it
  has closed;
* `HostConnections.lease(target)` yields the host's connection, opened if
  need be, and it stays open while the lease is held: whoever uses a
  connection (a command, an SFTP session, a forwarded socket, a supervised
  run being followed) holds a lease for as long as it does, so it is never
  closed under its user. Leases of one host share its one connection;
* a lease that needs a new connection while n are open takes the place of
  the least recently used idle one (closing it first), or waits, first come
  first served, until one closes or falls idle. A waiting caller holds
  nothing, and a lease is of one host only, so callers cannot wait on each
  other in a circle: with n = 1 they take turns;
* `release(host)`: the host's work is done for now: its connection closes
  at once if idle, else when its last lease ends (a new lease first keeps
  it). A connection that broke is replaced by the next lease;
* a host whose connect is retried gives its place back while it waits
  between attempts: a host that is down does not hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from orchestrator.errors import UsageError
from orchestrator.model import HostTarget
from orchestrator.retry import Sleep

DEFAULT_MAX_CONNECTIONS = 256


class Connection(Protocol):
    """What the limit needs of a connection (`asyncssh.SSHClientConnection` is one)."""

    def is_closed(self) -> bool: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


C = TypeVar("C", bound=Connection)
# opens one connection; the second argument is the sleep between its attempts
Dial = Callable[[HostTarget, Sleep], Awaitable[C]]


def check_max_connections(value: object, where: str = "max_connections") -> int:
    """The setting, or a `UsageError` that says what is wrong with it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where} must be a whole number of connections, 1 or more: {value!r}")
    return value


class _Held(Generic[C]):
    """One open (or closing) connection of a host, and its leases."""

    __slots__ = ("closing", "conn", "host", "owner", "retire", "users")

    def __init__(self, conn: C, owner: HostConnections[C], host: str) -> None:
        self.conn, self.owner, self.host = conn, owner, host
        self.users = 0
        self.retire = False  # close it once its last lease ends
        self.closing = False


class ConnectionLimit:
    """The cap, the idle connections (least recently used first) and who waits."""

    def __init__(self, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.max_connections = check_max_connections(max_connections)
        self._taken = 0  # connections opening, open or closing
        self._idle: OrderedDict[_Held[Any], None] = OrderedDict()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closings: dict[asyncio.Task[None], _Held[Any]] = {}
        self._unclosed = 0  # closings that have not given their place yet

    @property
    def open(self) -> int:
        """Connections that are opening, open, or not yet closed."""
        return self._taken

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def take(self) -> None:
        """A place for a connection about to open: a free one, an idle one's, or wait."""
        if self._taken < self.max_connections:
            self._taken += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._close_for_waiters()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over just now: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """A place is free: to the first waiter, else back to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._taken -= 1

    def leased(self, held: _Held[Any]) -> None:
        held.users += 1
        held.retire = False
        self._idle.pop(held, None)

    def unleased(self, held: _Held[Any]) -> None:
        held.users -= 1
        if held.users or held.closing:
            return
        if held.retire or held.conn.is_closed():
            self.close(held)
            return
        self._idle[held] = None  # the most recently used
        self._close_for_waiters()

    def close(self, held: _Held[Any]) -> asyncio.Task[None]:
        """Close a connection (leased or not: the pool is closing); its place is
        given once it has closed."""
        if held.closing:
            raise AssertionError(f"{held.host}: its connection is already closing")
        held.closing = True
        self._idle.pop(held, None)
        held.owner.forget(held)
        held.conn.close()
        self._unclosed += 1
        task = asyncio.ensure_future(self._closed(held))
        self._closings[task] = held
        task.add_done_callback(self._closings.pop)
        return task

    def closing(self, owner: HostConnections[Any]) -> list[asyncio.Task[None]]:
        """The closings under way of `owner`'s connections."""
        return [task for task, held in self._closings.items() if held.owner is owner]

    async def _closed(self, held: _Held[Any]) -> None:
        try:
            await held.conn.wait_closed()
        finally:
            self._unclosed -= 1
            self.give()

    def _close_for_waiters(self) -> None:
        """Close idle connections, oldest first, for waiters no closing will serve."""
        while len(self._waiters) > self._unclosed and self._idle:
            self.close(next(iter(self._idle)))


class HostConnections(Generic[C]):
    """One pool's connections, one per host at most, within a shared `ConnectionLimit`."""

    def __init__(self, limit: ConnectionLimit, dial: Dial[C], sleep: Sleep | None = None) -> None:
        self.limit = limit
        self._dial = dial
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._current: dict[str, _Held[C]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def lease(self, target: HostTarget) -> AsyncIterator[C]:
        """The host's connection, kept open until the block ends."""
        held = self._usable(target.name)
        if held is None:
            async with self._locks.setdefault(target.name, asyncio.Lock()):
                held = self._usable(target.name)  # another task may have opened it meanwhile
                if held is None:
                    held = _Held(await self._open(target), self, target.name)
                    self._current[target.name] = held
        self.limit.leased(held)
        try:
            yield held.conn
        finally:
            self.limit.unleased(held)

    def release(self, host: str) -> None:
        """The host's work is done for now: close its connection once it is idle."""
        held = self._current.get(host)
        if held is None:
            return
        if held.users:
            held.retire = True
        else:
            self.limit.close(held)

    def is_open(self, host: str) -> bool:
        held = self._current.get(host)
        return held is not None and not held.conn.is_closed()

    def forget(self, held: _Held[C]) -> None:
        if self._current.get(held.host) is held:
            del self._current[held.host]

    async def close(self) -> None:
        """Close every connection, in use or not, and wait until they are closed."""
        for held in list(self._current.values()):
            self.limit.close(held)
        if closing := self.limit.closing(self):
            await asyncio.gather(*closing)

    def _usable(self, host: str) -> _Held[C] | None:
        held = self._current.get(host)
        if held is not None and held.conn.is_closed():  # it broke: the next one replaces it
            self.limit.close(held)
            return None
        return held

    async def _open(self, target: HostTarget) -> C:
        await self.limit.take()
        holding = True

        async def backoff(delay: float) -> None:
            nonlocal holding
            holding = False
            self.limit.give()  # nobody waits for a place behind a host that is down
            await self._sleep(delay)
            await self.limit.take()
            holding = True

        try:
            return await self._dial(target, backoff)
        except BaseException:
            if holding:
                self.limit.give()
            raise
