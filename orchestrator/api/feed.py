"""One reader of the journal per upgrade, for all of that upgrade's event streams.

Each open stream used to read the journal and encode every event itself:
K clients, K reads and K encodings of each event. A `Feed` reads its
upgrade's events once, encodes each once as an SSE message and keeps the
latest `keep` of them; every stream of the upgrade writes those same bytes,
so an event costs each client a copy of its bytes and nothing else. A stream
that starts behind what the feed keeps (an old Last-Event-ID) reads the gap
from the journal on its own, then joins.

The feed runs while some stream reads it (`Feeds.reader`) and stops with
the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import structlog

from orchestrator.errors import OrchestratorError
from orchestrator.store.base import Event

log = structlog.get_logger("orchestrator.api")

POLL = 1.0  # the longest a feed waits on the journal before it asks again
BATCH = 500  # events read from the journal at once
KEEP = 10_000  # messages a feed keeps for streams that are behind

Encode = Callable[[Event], bytes]


class EventSource(Protocol):
    """The journal, as a feed reads it."""

    async def events(
        self, upgrade_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]: ...

    async def wait_for(self, upgrade_id: str, after: int, timeout: float) -> list[Event]: ...


class Feed:
    """The SSE messages of one upgrade's events after `after`, as the journal has them."""

    def __init__(
        self,
        source: EventSource,
        upgrade_id: str,
        after: int,
        encode: Encode,
        *,
        keep: int = KEEP,
        poll: float = POLL,
    ) -> None:
        if keep < 1:
            raise ValueError(f"a feed keeps at least one message, not {keep}")
        self.upgrade_id = upgrade_id
        self.readers = 0
        self._source = source
        self._encode = encode
        self._keep = keep
        self._poll = poll
        self._first = after + 1  # the seq of _messages[0]
        self._messages: list[bytes] = []
        self._grown = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def last(self) -> int:
        """The seq of the latest event the feed holds (or started after)."""
        return self._first + len(self._messages) - 1

    def since(self, after: int) -> tuple[int, bytes] | None:
        """(seq of the last, the messages of the events after `after`), b"" when
        there are none yet; None when some of them are older than the feed keeps."""
        if after + 1 < self._first:
            return None
        start = after + 1 - self._first
        if start >= len(self._messages):
            return after, b""
        return self.last, b"".join(self._messages[start:])

    async def wait(self, after: int, timeout: float) -> None:
        """Until the feed holds an event after `after`, or `timeout` seconds pass."""
        if self.last > after:
            return
        grown = self._grown
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await grown.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name=f"feed-{self.upgrade_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def cancel(self) -> None:
        """Stop reading the journal (the last stream went away)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def add(self, events: list[Event]) -> None:
        """Encode `events` (the next ones, in seq order) once, and wake the streams."""
        for event in events:
            if event.seq != self.last + 1:
                raise ValueError(f"feed of {self.upgrade_id}: event {event.seq} after {self.last}")
            self._messages.append(self._encode(event))
        extra = len(self._messages) - self._keep
        if extra > self._keep // 4:  # trimmed now and then: amortized O(1) per event
            del self._messages[:extra]
            self._first += extra
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()

    async def _follow(self) -> None:
        while True:
            after = self.last
            try:
                found = await self._source.events(self.upgrade_id, after, limit=BATCH)
                if not found:
                    found = await self._source.wait_for(self.upgrade_id, after, self._poll)
                self.add(found)
            except OrchestratorError as exc:  # the store is down or closing: ask again
                log.warning("event feed cannot read", upgrade=self.upgrade_id, error=str(exc))
                await asyncio.sleep(self._poll)
            except Exception:  # a bug: said, and tried again rather than gone silent
                log.exception("event feed failed", upgrade=self.upgrade_id)
                await asyncio.sleep(self._poll)


class Feeds:
    """The app's feeds, one per upgrade with streams open. `encode` turns an
    event into its SSE message (sse.format_event; tests count its calls)."""

    def __init__(
        self, source: EventSource, encode: Encode, *, keep: int = KEEP, poll: float = POLL
    ) -> None:
        self.source = source
        self.encode = encode
        self.keep = keep
        self.poll = poll
        self._feeds: dict[str, Feed] = {}

    def feed(self, upgrade_id: str) -> Feed | None:
        """The feed of `upgrade_id`, while a stream reads it."""
        return self._feeds.get(upgrade_id)

    def readers(self, upgrade_id: str) -> int:
        feed = self._feeds.get(upgrade_id)
        return 0 if feed is None else feed.readers

    @contextlib.contextmanager
    def reader(self, upgrade_id: str, after: int) -> Iterator[Feed]:
        """The feed of `upgrade_id` for one stream (started for the first)."""
        feed = self._feeds.get(upgrade_id)
        if feed is None:
            feed = self._feeds[upgrade_id] = Feed(
                self.source, upgrade_id, after, self.encode, keep=self.keep, poll=self.poll
            )
            feed.start()
        feed.readers += 1
        try:
            yield feed
        finally:
            feed.readers -= 1
            if feed.readers == 0 and self._feeds.get(upgrade_id) is feed:
                del self._feeds[upgrade_id]
                feed.cancel()

    async def close(self) -> None:
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            await feed.stop()
