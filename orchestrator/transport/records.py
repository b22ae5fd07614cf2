"""The run records a pool leaves on its hosts, and their removal (docs/transport.md).

* A returned run's record goes with the next supervised command's exec on
  its host, unless that command repeats the same chain (`RUN~n`).
* `forget(target, upgrade)` removes what is left of an upgrade on a host:
  every finished record, stray script files, the directory once empty.
  When nothing is kept, the pool remembers that the host is clean, and until
  it starts another run of that upgrade there it answers 0 without asking.
* `forget_soon(target, upgrade, then)` does the same in the background, for
  a host whose work in a phase is done and journaled, while its connection is
  still open; `then` runs after it (the pool lets the connection go). A
  `forget`, or a new run of the same upgrade on the host (`settle`: the
  removal would take the records' directory from under it), waits for it.
  At most `BACKGROUND_REMOVALS` run at once, and each waits for a lull in
  the pool's own commands (`Lull`): housekeeping gives way to the upgrade's
  commands. A batch ends with all its hosts at once, and the next one starts
  its commands at that moment; the removals run while those commands run.
  A removal does not wait for a lull when something waits for it: a run of
  the same upgrade on the host, a `forget`, or a host waiting for a place
  under `max_connections`; nor for a place among the background ones when a
  run or a `forget` waits for it (at the upgrade's end, the last batch's 50
  hosts took 80 ms eight at a time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from orchestrator.errors import OrchestratorError
from orchestrator.model import HostTarget
from orchestrator.retry import Sleep
from orchestrator.transport import supervise
from orchestrator.transport.follow import KILL_GRACE, MakeError

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger("orchestrator.transport.ssh")

BACKGROUND_REMOVALS = 8
# a lull: no command of the pool began or returned for this long (seconds)
LULL = 0.02
# a removal waits for a lull this long at most (seconds)
LONGEST_DEFERRAL = 2.0

# runs a short helper script of ours on a host: exit status, stdout, stderr
Call = Callable[[HostTarget, str], Awaitable[tuple[int, str, str]]]


class Lull:
    """When the pool's own commands last began or returned, and a wait for a
    pause in them.

    200 hosts that start a step together cost the orchestrator's side some
    50 ms of CPU on two cores; a record removal's exec in their midst delays
    them all (at 200 hosts, 20 -> 14 ms a step beyond its sleep without the
    removals in the way). While they run, the pool has nothing to do."""

    def __init__(
        self,
        pressed: Callable[[], bool],
        *,
        quiet: float = LULL,
        longest: float = LONGEST_DEFERRAL,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._pressed, self._quiet, self._longest = pressed, quiet, longest
        self._clock, self._sleep = clock, sleep
        self._last = -float("inf")
        self._nudged = asyncio.Event()

    def busy(self) -> None:
        """A command of the pool begins or returns."""
        self._last = self._clock()

    def nudge(self) -> None:
        """A caller's `pressed` may say so now: the waits look again at once."""
        self._nudged.set()

    async def wait(self, pressed: Callable[[], bool] = lambda: False) -> None:
        """Until no command began or returned for `quiet` seconds, `longest`
        seconds passed, or the pool's or the caller's `pressed` says so."""
        give_up = self._clock() + self._longest
        while not (self._pressed() or pressed()):
            now = self._clock()
            until = min(self._last + self._quiet, give_up)
            if now >= until:
                return
            self._nudged.clear()
            nap = asyncio.ensure_future(self._sleep(until - now))
            nudge = asyncio.ensure_future(self._nudged.wait())
            try:
                await asyncio.wait({nap, nudge}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                nap.cancel()
                nudge.cancel()


class Places:
    """At most `limit` background removals at once; one that something waits
    for goes at once, over the limit (its waiter has a limit of its own)."""

    def __init__(self, limit: int) -> None:
        self._limit, self._taken = limit, 0
        self._changed = asyncio.Event()

    async def take(self, now: Callable[[], bool]) -> None:
        while self._taken >= self._limit and not now():
            self._changed.clear()
            await self._changed.wait()
        self._taken += 1

    def give(self) -> None:
        self._taken -= 1
        self._changed.set()

    def look_again(self) -> None:
        """A waiting removal's `now` may say so: it looks again."""
        self._changed.set()


class Records:
    """Which records of which upgrade this pool left on each host."""

    def __init__(self, call: Call, error: MakeError, lull: Lull | None = None) -> None:
        self._call, self._error = call, error
        self._lull = lull if lull is not None else Lull(lambda: False, quiet=0)
        # (host, upgrade) -> how many runs or forgets wait for its removal: it
        # takes no place, and while any waits no removal waits for a lull
        self._wanted: dict[tuple[str, str], int] = {}
        # per host: (chain, record) of runs whose result was returned
        self._returned: dict[str, list[tuple[str, str]]] = {}
        # (host, upgrade) -> supervised runs started there by this pool
        self._started: dict[tuple[str, str], int] = {}
        # (host, upgrade) -> the runs started when its records were last all removed
        self._clean: dict[tuple[str, str], int] = {}
        self._removing: dict[tuple[str, str], asyncio.Task[int | None]] = {}
        self._places = Places(BACKGROUND_REMOVALS)

    async def settle(self, host: str, run_id: str) -> None:
        """Before a run starts: wait for a removal of its upgrade's records on the host."""
        key = (host, supervise.upgrade_of(run_id))
        removing = self._removing.get(key)
        if removing is not None:
            await self._wait_for(key, removing)

    def starting(self, host: str, run_id: str) -> tuple[str, ...]:
        """A supervised run starts on `host`: the records to remove with its exec
        (every returned one of another chain)."""
        key = (host, supervise.upgrade_of(run_id))
        self._started[key] = self._started.get(key, 0) + 1
        mine = supervise.chain(run_id)
        pending = self._returned.get(host, [])
        self._returned[host] = [entry for entry in pending if entry[0] == mine]
        return tuple(record for chain, record in pending if chain != mine)

    def returned(self, host: str, run_id: str, record: str) -> None:
        self._returned.setdefault(host, []).append((supervise.chain(run_id), record))

    async def forget(self, target: HostTarget, upgrade_id: str) -> int:
        """Remove an upgrade's records on a host; returns how many were kept
        (their commands still run)."""
        key = (target.name, upgrade_id)
        removing = self._removing.get(key)
        if removing is not None:  # at the phase's end: wait for it (it never raises)
            await self._wait_for(key, removing)
        if self._clean.get(key, -1) == self._started.get(key, 0):
            return 0
        return await self._forget(target, upgrade_id)

    def forget_soon(self, target: HostTarget, upgrade_id: str, then: Callable[[], None]) -> None:
        """`forget` in the background when this pool ran anything of the upgrade
        on the host since it was last clean; `then` once it is over (or now)."""
        key = (target.name, upgrade_id)
        started = self._started.get(key, 0)
        if not started or self._clean.get(key) == started or key in self._removing:
            then()
            return

        async def remove() -> int | None:
            try:
                await self._places.take(lambda: key in self._wanted)
                try:
                    await self._lull.wait(lambda: bool(self._wanted))
                    return await self._forget(target, upgrade_id)
                finally:
                    self._places.give()
            except (OrchestratorError, OSError) as exc:
                _log.warning("run records not removed", host=target.name, error=str(exc))
                return None
            except Exception:  # a defect of ours: said now, not when the task is collected
                _log.exception("run records not removed: unexpected error", host=target.name)
                return None
            finally:
                then()

        task = asyncio.ensure_future(remove())
        self._removing[key] = task
        task.add_done_callback(lambda _: self._removing.pop(key, None))

    async def close(self) -> None:
        """Let removals under way finish, a little while."""
        if self._removing:
            _, late = await asyncio.wait(list(self._removing.values()), timeout=KILL_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _wait_for(self, key: tuple[str, str], removing: asyncio.Task[int | None]) -> None:
        """Wait for a removal, which then waits for no lull and no place."""
        self._wanted[key] = self._wanted.get(key, 0) + 1
        self._lull.nudge()
        self._places.look_again()
        try:
            await asyncio.wait({removing})
        finally:
            if (left := self._wanted[key] - 1) > 0:
                self._wanted[key] = left
            else:
                del self._wanted[key]

    async def _forget(self, target: HostTarget, upgrade_id: str) -> int:
        host, key = target.name, (target.name, upgrade_id)
        started = self._started.get(key, 0)
        upgrade = supervise.upgrade_dir(upgrade_id)
        status, out, err = await self._call(target, supervise.forget_command(upgrade))
        self._returned[host] = [
            entry
            for entry in self._returned.get(host, ())
            if not entry[1].startswith(upgrade + "/")
        ]
        if status != 0:
            raise self._error(host, f"could not remove the records in {upgrade}: {err.strip()}")
        kept = int(out.strip() or "0")
        if not kept:
            self._clean[key] = started  # unless more started meanwhile
        _log.info("run records removed", host=host, upgrade=upgrade_id, still_running=kept)
        return kept
