"""When the daemon's garbage collector may stop the event loop for a full pass.

CPython collects reference cycles in three generations. The young passes walk
only recent objects and take a few milliseconds. A full pass walks every live
object, and CPython starts one on its own whenever enough objects have lived
into the oldest generation since the last. During a 2,000-host upgrade on two
cores that was a pass every 3 to 4 s, each stopping the event loop for 170 to
300 ms: the connections that asyncssh and asyncio close leave reference cycles
behind (about 80 objects a host), which live long enough to reach the oldest
generation. Every request that arrived meanwhile waited.

`Collector` leaves the young passes alone and takes the full ones over: one
runs when CPython would have started one (its count of young passes since the
last full one has passed the threshold) and at least `min_interval` seconds
after the last, so the loop stops for one at most every `min_interval`. That
trades many stops for fewer, longer ones: at 2,000 hosts the pass after 30 s of
waiting took up to 767 ms in one run, against 170 to 300 ms each every 3 to 4 s
before.

`start` first collects, then freezes what is alive by then (modules, resumed
upgrades): that lives as long as the daemon, and no pass walks it again.
`stop` unfreezes it and gives CPython its own schedule back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Protocol

import structlog

log = structlog.get_logger("orchestrator.collector")

MIN_INTERVAL = 30.0  # seconds between full passes, at least
CHECK_EVERY = 1.0  # seconds between looks at the collector's counts
# a threshold the count of young passes never reaches: CPython starts no full pass
NEVER = 2**31 - 1


class GarbageCollector(Protocol):
    """What `Collector` uses of the `gc` module (tests give a fake)."""

    def get_threshold(self) -> tuple[int, int, int]: ...

    def set_threshold(
        self, threshold0: int, threshold1: int = ..., threshold2: int = ...
    ) -> None: ...

    def get_count(self) -> tuple[int, int, int]: ...

    def collect(self, generation: int = ...) -> int: ...

    def freeze(self) -> None: ...

    def unfreeze(self) -> None: ...


class Collector:
    """Full collections at most every `min_interval` seconds, while started."""

    def __init__(
        self,
        min_interval: float = MIN_INTERVAL,
        *,
        check_every: float = CHECK_EVERY,
        collector: GarbageCollector = gc,
    ) -> None:
        if min_interval <= 0 or check_every <= 0:
            raise ValueError("min_interval and check_every must be positive")
        self.min_interval = min_interval
        self.check_every = check_every
        self.full_passes = 0
        self._gc = collector
        self._saved: tuple[int, int, int] | None = None
        self._frozen = False
        self._task: asyncio.Task[None] | None = None
        self._last = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self, *, freeze: bool = True) -> None:
        """Take the full passes over; from inside the running loop.

        With `freeze`, what is alive now is collected first, then kept out of
        every later pass.
        """
        if self._task is not None:
            raise RuntimeError("the collector schedule is already started")
        loop = asyncio.get_running_loop()
        if freeze:
            self._gc.collect(2)
            self._gc.freeze()
            self._frozen = True
        self._saved = self._gc.get_threshold()
        young, middle, _ = self._saved
        self._gc.set_threshold(young, middle, NEVER)
        self._last = loop.time()
        self._task = loop.create_task(self._run(), name="collector")

    async def stop(self) -> None:
        """CPython's own schedule again."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._saved is not None:
            self._gc.set_threshold(*self._saved)
            self._saved = None
        if self._frozen:
            self._gc.unfreeze()
            self._frozen = False

    def due(self, now: float) -> bool:
        """Would CPython collect in full by now, and has `min_interval` gone by?"""
        assert self._saved is not None
        return self._gc.get_count()[2] > self._saved[2] and now - self._last >= self.min_interval

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.check_every)
            started = loop.time()
            if self.due(started):
                freed = self._gc.collect(2)
                self._last = loop.time()
                self.full_passes += 1
                log.debug(
                    "full collection",
                    freed=freed,
                    took_ms=round((self._last - started) * 1000, 1),
                )
