"""The minicloud load balancer: round robin, drain/maint, and HAProxy's runtime API
as `orchestrator.actions.drain` speaks it (its real `Drainer` and TCP client)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator import model
from orchestrator.actions.drain import Drainer, sessions, tcp_runtime_api
from orchestrator.errors import DrainError
from orchestrator.minicloud.lb import LoadBalancer
from orchestrator.transport.ssh import CommandResult

RELEASE = web.AppKey("release", asyncio.Event)


@contextlib.asynccontextmanager
async def backend(name: str) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A real HTTP server answering its name; `/slow` waits until the event is set."""
    release = asyncio.Event()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=name)

    async def slow(request: web.Request) -> web.Response:
        await request.app[RELEASE].wait()
        return web.Response(text=name)

    app = web.Application()
    app[RELEASE] = release
    app.router.add_get("/", hello)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    try:
        yield port, release
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
async def lb() -> AsyncIterator[tuple[LoadBalancer, dict[str, asyncio.Event]]]:
    async with backend("a") as (port_a, slow_a), backend("b") as (port_b, slow_b):
        servers = [("a", "127.0.0.1", port_a), ("b", "127.0.0.1", port_b)]
        async with LoadBalancer(servers, backend="api") as balancer:
            yield balancer, {"a": slow_a, "b": slow_b}


async def fetch(url: str, path: str = "/") -> str:
    """One request on a new connection, as the load generator sends them."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url + path) as response,
    ):
        return await response.text()


class NoRemote:
    """The drain under test talks to the load balancer only; SSH is never used."""

    async def connect(self, host: str) -> None:
        raise AssertionError("a load balancer drain must not use SSH")

    async def run(
        self,
        host: str,
        command: str,
        *,
        timeout: float | None = None,
        become: bool = False,
        on_line: Callable[[str], None] | None = None,
        run_id: str | None = None,
    ) -> CommandResult:
        raise AssertionError("a load balancer drain must not use SSH")

    async def read_file(self, host: str, path: str) -> str | None:
        raise AssertionError("a load balancer drain must not use SSH")

    async def write_file(self, host: str, path: str, text: str) -> None:
        raise AssertionError("a load balancer drain must not use SSH")


def target(balancer: LoadBalancer) -> model.LoadBalancerTarget:
    return model.LoadBalancerTarget(
        name="public",
        driver="haproxy",
        backend="api",
        host=None,
        socket=None,
        address=balancer.api_address,
    )


async def runtime_api(lb: model.LoadBalancerTarget, command: str) -> str:
    assert lb.address is not None
    return await tcp_runtime_api(lb.address, command)


def stat_row(stat: str, server: str) -> dict[str, Any]:
    header = stat.splitlines()[0].lstrip("# ").split(",")
    for line in stat.splitlines()[1:]:
        row = dict(zip(header, line.split(","), strict=True)) if line else {}
        if row.get("svname") == server:
            return row
    raise AssertionError(f"no row for {server} in:\n{stat}")


async def test_round_robin_over_ready_servers(
    lb: tuple[LoadBalancer, dict[str, asyncio.Event]],
) -> None:
    balancer, _ = lb

    answers = [await fetch(balancer.url) for _ in range(6)]

    assert sorted(answers) == ["a", "a", "a", "b", "b", "b"]
    stat = await tcp_runtime_api(balancer.api_address, "show stat")
    assert stat.startswith("# pxname,svname,qcur,qmax,scur,smax,slim,stot,")
    assert stat_row(stat, "a")["stot"] == "3"
    assert stat_row(stat, "BACKEND")["status"] == "UP"
    assert stat_row(stat, "FRONTEND")["pxname"] == "api"
    assert sessions(stat, "api", "a") == 0


async def test_drain_waits_for_live_sessions_then_takes_no_new_connections(
    lb: tuple[LoadBalancer, dict[str, asyncio.Event]],
) -> None:
    balancer, slow = lb
    balancer.servers["b"].state = "maint"  # pin the long request to a
    held = asyncio.create_task(fetch(balancer.url, "/slow"))
    async with asyncio.timeout(5):
        while balancer.servers["a"].scur == 0:  # noqa: ASYNC110 - counters have no event
            await asyncio.sleep(0.01)
    balancer.servers["b"].state = "ready"
    async with aiohttp.ClientSession() as session:
        drainer = Drainer(
            NoRemote(), session, {"public": target(balancer)}, runtime_api, asyncio.sleep
        )
        drain = model.LoadBalancerDrain(
            load_balancer="public", server="a", backend="api", timeout=10.0
        )
        draining = asyncio.create_task(drainer.drain("a", drain))

        async with asyncio.timeout(5):
            while balancer.servers["a"].state != "drain":  # noqa: ASYNC110 - set by the drainer
                await asyncio.sleep(0.01)
        during = [await fetch(balancer.url) for _ in range(4)]
        stat = await tcp_runtime_api(balancer.api_address, "show stat")
        assert sessions(stat, "api", "a") == 1
        assert stat_row(stat, "a")["status"] == "DRAIN"
        assert not draining.done()  # the held session keeps the drain waiting

        slow["a"].set()
        assert await held == "a"  # the established session finished normally
        message = await asyncio.wait_for(draining, 5)

        assert during == ["b", "b", "b", "b"]
        assert message == "api/a drained to 0 sessions, maint"
        stat = await tcp_runtime_api(balancer.api_address, "show stat")
        assert sessions(stat, "api", "a") == 0
        assert stat_row(stat, "a")["status"] == "MAINT"
        assert [await fetch(balancer.url) for _ in range(3)] == ["b", "b", "b"]

        assert await drainer.undrain("a", drain) == "api/a ready"
        assert sorted([await fetch(balancer.url) for _ in range(4)]) == ["a", "a", "b", "b"]


async def test_drain_of_an_unknown_server_fails_clearly(
    lb: tuple[LoadBalancer, dict[str, asyncio.Event]],
) -> None:
    balancer, _ = lb
    answer = await tcp_runtime_api(balancer.api_address, "set server api/nope state drain")
    assert answer.strip() == "No such server."
    assert (await tcp_runtime_api(balancer.api_address, "set server api/a state up")).startswith(
        "'set server <srv> state' expects"
    )
    assert (await tcp_runtime_api(balancer.api_address, "set server api/a state maint")) == "\n"

    async with aiohttp.ClientSession() as session:
        drainer = Drainer(
            NoRemote(), session, {"public": target(balancer)}, runtime_api, asyncio.sleep
        )
        drain = model.LoadBalancerDrain(
            load_balancer="public", server="nope", backend="api", timeout=1.0
        )
        with pytest.raises(DrainError, match="has no server api/nope"):
            await drainer.drain("nope", drain)


async def test_maint_on_every_server_refuses_connections(
    lb: tuple[LoadBalancer, dict[str, asyncio.Event]],
) -> None:
    balancer, _ = lb
    await tcp_runtime_api(balancer.api_address, "disable server api/a;disable server api/b")

    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(balancer.url)
    stat = await tcp_runtime_api(balancer.api_address, "show stat")
    assert stat_row(stat, "BACKEND")["status"] == "DOWN"
    assert stat_row(stat, "a")["stot"] == "0"
