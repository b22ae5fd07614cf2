"""The daemon's event loop: urgent sockets first, the others a batch at a time
(orchestrator.eventloop)."""

from __future__ import annotations

import asyncio
import selectors
import socket
from collections.abc import Iterator

import pytest

from orchestrator import eventloop
from orchestrator.api.limits import Guard
from orchestrator.eventloop import UrgentFirstLoop, UrgentFirstSelector

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


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
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    selector = UrgentFirstSelector()
    try:
        a, b = socket.socketpair()
        pairs.append((a, b))
        selector.prefer(a.fileno())
        selector.register(a, READ, "urgent")
        assert selector.select(0) == []
        b.send(b"x")
        got = selector.select(None)  # blocks in the main set, whose member it is
        assert [(key.data, events) for key, events in got] == [("urgent", READ)]
    finally:
        selector.close()


def test_register_modify_unregister_and_the_map(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    selector = UrgentFirstSelector()
    try:
        a, b = socket.socketpair()
        pairs.append((a, b))
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
    finally:
        selector.close()


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
        for end in others:
            loop.add_reader(end, lambda e=end: (e.recv(1), order.append("host")))
        loop.add_reader(api, lambda: (api.recv(1), order.append("api")))
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
