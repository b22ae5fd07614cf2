"""The tier's JSON-RPC drain of a conductor (`ironiccloud.CONDUCTOR_DRAIN`),
on a plain HTTP server on loopback, with the real iptables.

A drain must refuse new calls (a new connection, or a new request on a
kept-alive one) before they reach the conductor, and must let the answer of
a call already running reach its caller. The first version reset every
packet to the port, which cut such answers off mid-read ("Connection broken:
ConnectionResetError"), which the APIs' client does not retry: seen as an
HTTP 500 in the Ironic upgrade under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator

import pytest

from tests.openstack.ironiccloud import CONDUCTOR_DRAIN
from tests.openstack.tier import Programs

pytestmark = pytest.mark.openstack

ADDRESS = "127.77.9.1"  # no tier host uses it


def rendered(command: str, port: int) -> str:
    return command.replace("{{ host.address }}", ADDRESS).replace("{{ json_rpc_port }}", str(port))


def shell(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=True, capture_output=True, timeout=30)


class HeldServer:
    """An HTTP/1.1 server that answers each request only when told to."""

    def __init__(self) -> None:
        self.requests = 0
        self.arrived = asyncio.Event()
        self.answer = asyncio.Event()
        self.handlers: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while await reader.readuntil(b"\r\n\r\n"):
                    self.requests += 1
                    self.arrived.set()
                    await self.answer.wait()
                    body = b"x" * 200_000  # more than one segment: the caller ACKs as it reads
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    writer.write(body)
                    await writer.drain()
        finally:
            writer.close()  # also when cancelled: no writer is left to a closed loop

    async def close(self) -> None:
        """Every connection's handler done before the loop closes."""
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)


async def closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """One request on a kept-alive connection; the length of the body read back."""
    writer.write(b"POST / HTTP/1.1\r\nHost: c\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return len(await reader.readexactly(length))


@pytest.fixture
async def held(programs: Programs) -> AsyncIterator[tuple[HeldServer, int]]:
    server = HeldServer()
    listening = await asyncio.start_server(server.handle, ADDRESS, 0)
    port = listening.sockets[0].getsockname()[1]
    try:
        yield server, port
    finally:
        shell(rendered(CONDUCTOR_DRAIN["undo"], port))
        listening.close()
        await listening.wait_closed()
        await server.close()


async def test_a_call_running_when_the_drain_starts_gets_its_whole_answer(
    held: tuple[HeldServer, int],
) -> None:
    server, port = held
    reader, writer = await asyncio.open_connection(ADDRESS, port)
    running = asyncio.create_task(call(reader, writer))
    await server.arrived.wait()
    shell(rendered(CONDUCTOR_DRAIN["run"], port))
    server.answer.set()
    assert await running == 200_000
    await closed(writer)


async def test_a_drained_conductor_gets_no_new_call(held: tuple[HeldServer, int]) -> None:
    server, port = held
    server.answer.set()
    reader, writer = await asyncio.open_connection(ADDRESS, port)
    assert await call(reader, writer) == 200_000  # a kept-alive connection, idle
    shell(rendered(CONDUCTOR_DRAIN["run"], port))
    shell(rendered(CONDUCTOR_DRAIN["run"], port))  # run twice: idempotent
    # a new request on the idle connection: reset before the server reads it
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await call(reader, writer)
    await closed(writer)
    # a new connection: refused
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(ADDRESS, port)
    assert server.requests == 1
    shell(rendered(CONDUCTOR_DRAIN["undo"], port))
    reader, writer = await asyncio.open_connection(ADDRESS, port)
    assert await call(reader, writer) == 200_000  # undone: calls reach it again
    await closed(writer)
    assert server.requests == 2
