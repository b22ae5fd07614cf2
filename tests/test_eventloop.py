"""The daemon's event loop: urgent sockets first, the others a batch at a time
(orchestrator.eventloop)."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import os
import selectors
import socket
from collections.abc import Iterator

import pytest

from orchestrator import eventloop
from orchestrator.api.limits import Guard
from orchestrator.eventloop import ReadyQueue, UrgentFirstLoop, UrgentFirstSelector

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def socketpair(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> tuple[socket.socket, socket.socket]:
    """A connected pair, closed after the test."""
    a, b = socket.socketpair()
    pairs.append((a, b))
    return a, b


@pytest.fixture
def selector() -> Iterator[UrgentFirstSelector]:
    made = UrgentFirstSelector()
    yield made
    made.close()


def readable(pairs: list[tuple[socket.socket, socket.socket]], n: int) -> list[socket.socket]:
    """`n` sockets with a byte each to read."""
    ends = []
    for _ in range(n):
        a, b = socket.socketpair()
        pairs.append((a, b))
        b.send(b"x")
        ends.append(a)
    return ends


def test_at_most_a_batch_of_others_per_select_and_every_one_in_turn(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    selector = UrgentFirstSelector(batch=4)
    try:
        ends = readable(pairs, 10)
        for i, end in enumerate(ends):
            selector.register(end, READ, i)
        seen: list[int] = []
        for _ in range(3):
            got = selector.select(0)
            assert len(got) <= 4
            for key, events in got:
                assert events == READ
                seen.append(key.data)
                selector.unregister(key.fileobj)  # handled: not ready again
        assert sorted(seen) == list(range(10))
        assert selector.select(0) == []
    finally:
        selector.close()


def test_ready_urgent_sockets_come_first_and_beyond_the_batch(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    selector = UrgentFirstSelector(batch=2)
    try:
        others = readable(pairs, 20)
        for end in others:
            selector.register(end, READ, "other")
        urgent = readable(pairs, 3)
        for end in urgent:
            selector.prefer(end.fileno())  # before registering: urgent once it is
            selector.register(end, READ, "urgent")
        got = [key.data for key, _ in selector.select(0)]
        assert got == ["urgent"] * 3 + ["other"] * 2
        # marked while registered: moved at once; and back again
        selector.prefer(others[0].fileno())
        assert selector.urgent(others[0].fileno())
        selector.unprefer(urgent[0].fileno())
        assert not selector.urgent(urgent[0].fileno())
        got = [key.fd for key, _ in selector.select(0)]
        assert set(got[:3]) == {others[0].fileno(), urgent[1].fileno(), urgent[2].fileno()}
        assert len(got) == 5
    finally:
        selector.close()


def test_urgent_sockets_wake_a_sleeping_select(
    pairs: list[tuple[socket.socket, socket.socket]], selector: UrgentFirstSelector
) -> None:
    a, b = socketpair(pairs)
    selector.prefer(a.fileno())
    selector.register(a, READ, "urgent")
    assert selector.select(0) == []
    b.send(b"x")
    got = selector.select(None)  # blocks in the main set, whose member it is
    assert [(key.data, events) for key, events in got] == [("urgent", READ)]


def test_register_modify_unregister_and_the_map(
    pairs: list[tuple[socket.socket, socket.socket]], selector: UrgentFirstSelector
) -> None:
    a, b = socketpair(pairs)
    key = selector.register(a, READ, "r")
    assert selector.get_map()[a] is key
    assert selector.get_key(a.fileno()) is key
    with pytest.raises(KeyError, match="already registered"):
        selector.register(a, READ)
    with pytest.raises(ValueError, match="invalid events"):
        selector.register(b, 0)
    assert selector.select(0) == []  # nothing to read yet
    key = selector.modify(a, READ | WRITE, "rw")
    assert [(k.data, events) for k, events in selector.select(0)] == [("rw", WRITE)]
    selector.unregister(a)
    assert len(selector.get_map()) == 0
    with pytest.raises(KeyError):
        selector.unregister(a)
    with pytest.raises(KeyError):
        selector.modify(a, READ)
    with pytest.raises(ValueError, match="at least 1"):
        UrgentFirstSelector(batch=0)


def test_in_the_loop_an_urgent_reader_runs_first_in_its_turn(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """100 hosts' sockets ready before the API's: its callback still runs first
    (asyncio's own loop runs it last, after all 100, in the same turn)."""
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        others = readable(pairs, 100)
        api = readable(pairs, 1)[0]
        eventloop.prefer_fd(api.fileno())

        def reader(end: socket.socket, who: str) -> None:
            end.recv(1)
            order.append(who)

        for end in others:
            loop.add_reader(end, reader, end, "host")
        loop.add_reader(api, reader, api, "api")
        async with asyncio.timeout(10):
            while len(order) < 101:  # noqa: ASYNC110  # callbacks, not an event
                await asyncio.sleep(0)
        for end in [*others, api]:
            loop.remove_reader(end)

    with asyncio.Runner(loop_factory=eventloop.new_loop) as runner:
        assert isinstance(runner.get_loop(), UrgentFirstLoop)
        runner.run(main())
    assert order[0] == "api"
    assert order.count("host") == 100


def test_the_guard_serves_api_connections_first_and_forgets_them_when_closed() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UrgentFirstLoop)
        made: list[asyncio.BaseTransport] = []

        class Echo(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.append(transport)

        server = await loop.create_server(Guard(10, 5, 5).wrap(Echo), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            while not made:  # noqa: ASYNC110  # a callback, not an event
                await asyncio.sleep(0)
        fd = made[0].get_extra_info("socket").fileno()
        assert loop.urgent_first.urgent(fd)
        assert loop.urgent_first.prefers(fd)
        made[0].close()  # its connection_lost forgets the mark before the fd is closed
        async with asyncio.timeout(10):
            while loop.urgent_first.prefers(fd):  # noqa: ASYNC110
                await asyncio.sleep(0)
        assert not loop.urgent_first.urgent(fd)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    with asyncio.Runner(loop_factory=eventloop.new_loop) as runner:
        runner.run(main())


def test_outside_the_urgent_loop_preferring_does_nothing() -> None:
    async def main() -> None:
        eventloop.prefer_fd(0)  # asyncio's own loop: nothing to mark, no error

    asyncio.run(main())


def test_the_ready_queue_gives_urgent_callbacks_first_and_counts_a_turn() -> None:
    loop = asyncio.new_event_loop()
    try:
        queue = ReadyQueue(turn=3)
        normal = [asyncio.Handle(print, (i,), loop) for i in range(6)]
        ctx = contextvars.copy_context()
        ctx.run(eventloop.URGENT.set, True)
        urgent = [asyncio.Handle(print, (i,), loop, ctx) for i in range(3)]
        assert not queue
        for handle in [normal[0], urgent[0], *normal[1:5], urgent[1]]:
            queue.append(handle)
        assert queue
        assert queue.waiting == 7
        # a turn, as the loop takes it: every urgent one first, then at most 3
        assert len(queue) == 2 + 3
        assert queue.popleft() is urgent[0]
        queue.append(urgent[2])  # came during the turn: runs in it, first
        queue.append(normal[5])
        assert [queue.popleft() for _ in range(4)] == [urgent[1], urgent[2], *normal[:2]]
        assert len(queue) == 3  # normal[2:6]: at most 3 of them in a turn
        assert [queue.popleft() for _ in range(4)] == normal[2:]
        assert not queue
        queue.append(urgent[0])
        queue.append(normal[0])
        queue.clear()
        assert not queue
        assert queue.waiting == 0
        with pytest.raises(ValueError, match="at least 1"):
            ReadyQueue(turn=0)
    finally:
        loop.close()


def test_a_turn_runs_at_most_turn_other_callbacks_in_their_order() -> None:
    """asyncio's own loop runs all 100 in one turn; this one 8 at a time."""
    seen: list[tuple[int, int]] = []  # (turn, callback)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, UrgentFirstLoop)
        turns = 0
        select = loop.urgent_first.select

        def counting(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            nonlocal turns
            turns += 1
            return select(timeout)

        loop.urgent_first.select = counting  # type: ignore[method-assign]

        def note(i: int) -> None:
            seen.append((turns, i))

        for i in range(100):
            loop.call_soon(note, i)
        async with asyncio.timeout(10):
            while len(seen) < 100:  # noqa: ASYNC110  # callbacks, not an event
                await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=lambda: UrgentFirstLoop(turn=8)) as runner:
        runner.run(main())
    assert [i for _, i in seen] == list(range(100))
    per_turn = collections.Counter(turn for turn, _ in seen)
    assert max(per_turn.values()) <= 8
    assert len(per_turn) >= 100 // 8


def test_what_an_urgent_socket_starts_runs_before_what_the_hosts_queued(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """500 callbacks queued, then a request comes on an API socket: its reader
    and the task the reader starts run within the next turns, not after the
    500 (asyncio's own loop, and the selector alone, ran the task last)."""
    order: list[str] = []

    async def handle() -> None:
        order.append("api task")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        api, client = socket.socketpair()
        pairs.append((api, client))
        eventloop.prefer_fd(api.fileno())

        def on_request() -> None:
            api.recv(1)
            order.append("api reader")
            asyncio.get_running_loop().create_task(handle())

        loop.add_reader(api, on_request)
        await asyncio.sleep(0)  # the reader is registered
        for _ in range(500):
            loop.call_soon(order.append, "host")
        client.send(b"x")
        async with asyncio.timeout(10):
            while len(order) < 502:  # noqa: ASYNC110  # callbacks, not an event
                await asyncio.sleep(0)
        loop.remove_reader(api)

    with asyncio.Runner(loop_factory=eventloop.new_loop) as runner:
        runner.run(main())
    assert order.index("api task") < 2 * eventloop.TURN + 2
    assert order.index("api reader") < order.index("api task")
    assert order.count("host") == 500


def test_background_work_started_from_urgent_work_is_not_urgent() -> None:
    async def urgency() -> bool:
        return eventloop.URGENT.get()

    async def main() -> tuple[bool, bool]:
        eventloop.URGENT.set(True)  # as in an API request's task
        inherited = await asyncio.get_running_loop().create_task(urgency())
        started = await eventloop.background(urgency(), name="engine")
        return inherited, started

    assert asyncio.run(main()) == (True, False)


def test_a_mark_outliving_its_socket_does_not_make_the_next_one_urgent(
    pairs: list[tuple[socket.socket, socket.socket]], selector: UrgentFirstSelector
) -> None:
    """A TLS connection's protocol hears of its end after its socket is closed:
    the next socket given the same number (an SSH host's) stays ordinary."""
    a, b = socket.socketpair()
    fd = a.fileno()
    selector.prefer(fd)
    other = socketpair(pairs)[0]  # made while `fd` is taken: another number
    a.close()
    b.close()
    reused = socket.socket(fileno=os.dup2(other.fileno(), fd))
    try:
        selector.register(reused, READ, "host")
        assert not selector.urgent(fd)
        assert not selector.prefers(fd)
        selector.prefer(fd)  # marked for this socket: urgent at once
        assert selector.urgent(fd)
    finally:
        selector.unregister(reused)
        reused.close()
