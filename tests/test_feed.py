"""Event streams share one reader of the journal per upgrade: each event is
encoded once, however many streams are open, and a stream that starts
behind what the feed keeps reads the gap from the journal itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orchestrator.api import keys
from orchestrator.api.feed import Feed, Feeds
from orchestrator.api.sse import format_event
from orchestrator.errors import StoreError
from orchestrator.store.base import Event
from tests.sshhosts import MakeSSHHosts
from tests.test_api import PLAYBOOK, Api, poll, read_events, release, running_api

ROLL_ONLY = PLAYBOOK.split("  - name: contract", maxsplit=1)[0]


class Journal:
    """Events in memory, as a feed reads them (`EventSource`)."""

    def __init__(self) -> None:
        self.log: list[Event] = []
        self.reads = 0
        self.grown = asyncio.Event()

    def append(self, count: int) -> None:
        for _ in range(count):
            seq = len(self.log) + 1
            self.log.append(Event("u", seq, float(seq), "step", {"n": seq}))
        self.grown.set()
        self.grown = asyncio.Event()

    async def events(
        self, upgrade_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        self.reads += 1
        return self.log[after : None if limit is None else after + limit]

    async def wait_for(self, upgrade_id: str, after: int, timeout: float) -> list[Event]:
        if len(self.log) <= after:
            grown = self.grown
            try:
                async with asyncio.timeout(timeout):
                    await grown.wait()
            except TimeoutError:
                return []
        return await self.events(upgrade_id, after)


def message(seq: int) -> bytes:
    return format_event(Event("u", seq, float(seq), "step", {"n": seq}))


async def test_a_feed_hands_every_stream_the_same_bytes_and_trims_what_it_keeps() -> None:
    journal = Journal()
    feed = Feed(journal, "u", 0, format_event, keep=4)
    assert feed.since(0) == (0, b"")
    feed.add(journal.log)  # nothing yet
    journal.append(3)
    feed.add(journal.log)
    assert feed.since(0) == (3, message(1) + message(2) + message(3))
    assert feed.since(2) == (3, message(3))
    assert feed.since(3) == (3, b"")
    journal.append(3)
    feed.add(journal.log[3:])  # six kept of four: trimmed past a quarter over
    assert feed.last == 6
    assert feed.since(1) is None  # older than it keeps: the stream reads the journal
    assert feed.since(2) == (6, b"".join(message(s) for s in range(3, 7)))
    with pytest.raises(ValueError, match="event 9 after 6"):
        feed.add([Event("u", 9, 9.0, "step", {})])
    with pytest.raises(ValueError, match="at least one"):
        Feed(journal, "u", 0, format_event, keep=0)


async def test_a_feed_follows_the_journal_and_wakes_the_streams_waiting() -> None:
    journal = Journal()
    feeds = Feeds(journal, format_event)
    with feeds.reader("u", 0) as feed, feeds.reader("u", 0) as same:
        assert same is feed and feed.readers == 2
        waiting = asyncio.create_task(feed.wait(0, timeout=30))
        await asyncio.sleep(0)
        assert not waiting.done()
        journal.append(2)
        await asyncio.wait_for(waiting, 10)
        await poll(lambda: asyncio.sleep(0, feed.last), lambda last: last == 2)
        reads = journal.reads
        assert feed.since(0) == (2, message(1) + message(2))
        assert journal.reads == reads  # handing out what it holds reads nothing
    # the last stream gone, the feed stops; the next stream starts a new one
    with feeds.reader("u", 2) as fresh:
        assert fresh is not feed and fresh.since(2) == (2, b"")
    await feeds.close()


class Flaky(Journal):
    """A journal whose next reads fail, as a store that went away does."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def events(
        self, upgrade_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        if self.failures:
            self.failures -= 1
            raise StoreError("journal read failed: database is locked")
        return await super().events(upgrade_id, after, limit)


async def test_a_feed_that_cannot_read_says_so_and_reads_again() -> None:
    journal = Flaky()
    journal.append(2)
    journal.failures = 2
    feeds = Feeds(journal, format_event, poll=0.01)
    with capture_logs() as logs, feeds.reader("u", 0) as feed:
        await poll(lambda: asyncio.sleep(0, feed.last), lambda last: last == 2)
    assert [e["event"] for e in logs] == ["event feed cannot read"] * 2
    assert "database is locked" in logs[0]["error"]
    await feeds.close()


@pytest.fixture
async def api(make_ssh_hosts: MakeSSHHosts, tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(await make_ssh_hosts(3), tmp_path) as running:
        yield running


def counted(feeds: Feeds) -> list[int]:
    """The seq of every event `feeds` encodes, from now on."""
    seqs: list[int] = []
    encode = feeds.encode

    def counting(event: Event) -> bytes:
        seqs.append(event.seq)
        return encode(event)

    feeds.encode = counting
    return seqs


async def test_k_streams_of_one_upgrade_encode_each_event_once(api: Api) -> None:
    assert api.client.app is not None
    feeds = api.client.app[keys.FEEDS]
    encoded = counted(feeds)
    upgrade_id = await api.submit(playbook=ROLL_ONLY)
    await api.wait_step(upgrade_id, "roll", "host-1", "running")

    streams = [asyncio.create_task(read_events(api, upgrade_id)) for _ in range(4)]
    await poll(lambda: asyncio.sleep(0, feeds.readers(upgrade_id)), lambda n: n == 4)
    release(api.hosts)
    seen = await asyncio.gather(*streams)

    assert all(events == seen[0] for events in seen[1:])
    assert seen[0][-1][1] == "end"
    seqs = [int(e[0]) for e in seen[0] if e[0] is not None]
    assert seqs == list(range(1, len(seqs) + 1))
    assert encoded == seqs  # once each, for four streams
    assert feeds.readers(upgrade_id) == 0


async def test_a_stream_behind_the_feed_reads_the_gap_from_the_journal(api: Api) -> None:
    assert api.client.app is not None
    feeds = api.client.app[keys.FEEDS]
    feeds.keep = 4  # the feed keeps only the latest few messages
    encoded = counted(feeds)
    upgrade_id = await api.submit(playbook=ROLL_ONLY)
    await api.wait_step(upgrade_id, "roll", "host-1", "running")

    first = asyncio.create_task(read_events(api, upgrade_id))
    feed = await poll(lambda: asyncio.sleep(0, feeds.feed(upgrade_id)), bool)
    assert feed is not None
    await poll(lambda: asyncio.sleep(0, feed.since(0)), lambda kept: kept is None)
    late = asyncio.create_task(read_events(api, upgrade_id))
    resumed = asyncio.create_task(read_events(api, upgrade_id, last_event_id="3"))
    await poll(lambda: asyncio.sleep(0, feeds.readers(upgrade_id)), lambda n: n == 3)
    release(api.hosts)
    whole = await first

    assert whole[-1][1] == "end" and len(whole) > 10  # far more than the feed keeps
    assert await late == whole
    assert await resumed == whole[3:]
    # the feed encoded each event once; the two streams behind it, the gap again
    seqs = [int(e[0]) for e in whole if e[0] is not None]
    assert sorted(set(encoded)) == seqs
    assert len(encoded) > len(seqs)
