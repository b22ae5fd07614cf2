"""The haproxy drain driver against a real HAProxy, its runtime API reached the
production way: a UNIX socket on the load balancer host, through a real sshd's
stream-local forwarding (`SSHPool.unix_request`).

The backends are two small HTTP servers in this process; `/slow` holds its
answer until the test releases it, so a session is in flight exactly as long
as the test wants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from orchestrator import model
from orchestrator.actions.drain import Drainer, sessions
from orchestrator.errors import DrainError
from orchestrator.minicloud.layout import free_ports
from orchestrator.transport.ssh import SSHPool
from tests.integration.conftest import MakeHAProxy, MakeSSHHosts
from tests.integration.realhaproxy import RealHAProxy

pytestmark = [pytest.mark.integration]

LB_HOST = "lb-1"


@dataclass
class Rig:
    haproxy: RealHAProxy
    pool: SSHPool
    lb: model.LoadBalancerTarget
    held: dict[str, asyncio.Event]  # server -> set when its /slow request arrived
    release: dict[str, asyncio.Event]  # server -> set to let /slow answer

    async def runtime_api(self, lb: model.LoadBalancerTarget, command: str) -> str:
        assert lb.host is not None and lb.socket is not None
        return await self.pool.unix_request(lb.host, lb.socket, command)

    def drainer(self, session: aiohttp.ClientSession) -> Drainer:
        return Drainer(self.pool, session, {self.lb.name: self.lb}, self.runtime_api, asyncio.sleep)


def backend(name: str, held: asyncio.Event, release: asyncio.Event) -> web.Application:
    async def who(_: web.Request) -> web.Response:
        return web.Response(text=name)

    async def slow(_: web.Request) -> web.Response:
        held.set()
        await release.wait()
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/", who)
    app.router.add_get("/slow", slow)
    return app


@pytest.fixture
async def rig(real_haproxy: MakeHAProxy, real_sshd_hosts: MakeSSHHosts) -> AsyncIterator[Rig]:
    held = {name: asyncio.Event() for name in ("a", "b")}
    release = {name: asyncio.Event() for name in ("a", "b")}
    runners = []
    ports = dict(zip(("a", "b"), free_ports(2), strict=True))
    for name, port in ports.items():
        runner = web.AppRunner(backend(name, held[name], release[name]))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    try:
        haproxy = await real_haproxy(ports)
        hosts = await real_sshd_hosts([LB_HOST])
        lb = model.LoadBalancerTarget(
            name="public",
            driver="haproxy",
            backend="api",
            host=LB_HOST,
            socket=str(haproxy.socket),
            address=None,
        )
        async with SSHPool(hosts.targets()) as pool:
            yield Rig(haproxy, pool, lb, held, release)
    finally:
        for event in release.values():
            event.set()
        for runner in runners:
            await runner.cleanup()


async def fetch(url: str, path: str = "/") -> str:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.get(url + path) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.text()


async def hold_on_a(rig: Rig) -> asyncio.Task[str]:
    """A /slow request in flight on server a (b is in maint while it is sent)."""
    await rig.haproxy.command("set server api/b state maint")
    held = asyncio.create_task(fetch(rig.haproxy.url, "/slow"))
    await asyncio.wait_for(rig.held["a"].wait(), 5)
    await rig.haproxy.command("set server api/b state ready")
    return held


def drain_of(server: str, timeout: float = 10.0) -> model.LoadBalancerDrain:
    return model.LoadBalancerDrain(
        load_balancer="public", server=server, backend="api", timeout=timeout
    )


async def test_real_show_stat_over_ssh_is_what_the_driver_parses(rig: Rig) -> None:
    stat = await rig.runtime_api(rig.lb, "show stat")
    header = stat.splitlines()[0]
    assert header.startswith("# pxname,svname,qcur,qmax,scur,")  # HAProxy's own columns
    assert sessions(stat, "api", "a") == 0
    assert sessions(stat, "api", "nope") is None
    assert await fetch(rig.haproxy.url) in ("a", "b")
    assert (await rig.haproxy.stat())["a"]["status"] == "no check"  # ready, no health checks


async def test_drain_waits_for_the_session_then_maint_then_ready(rig: Rig) -> None:
    held = await hold_on_a(rig)
    assert (await rig.haproxy.stat())["a"]["scur"] == "1"
    async with aiohttp.ClientSession() as session:
        drainer = rig.drainer(session)
        draining = asyncio.create_task(drainer.drain("a", drain_of("a")))
        async with asyncio.timeout(5):
            while await rig.haproxy.admin_state("a") != "drain":  # noqa: ASYNC110 - set by the drainer
                await asyncio.sleep(0.02)
        during = [await fetch(rig.haproxy.url) for _ in range(4)]
        stat = await rig.haproxy.stat()
        assert stat["a"]["status"] == "DRAIN" and stat["a"]["scur"] == "1"
        await asyncio.sleep(0.5)
        assert not draining.done()  # the live session keeps the drain waiting

        rig.release["a"].set()
        assert await held == "a"  # the established session finished normally
        message = await asyncio.wait_for(draining, 5)

        assert during == ["b"] * 4
        assert message == "api/a drained to 0 sessions, maint"
        assert await rig.haproxy.admin_state("a") == "maint"
        stat = await rig.haproxy.stat()
        assert stat["a"]["status"] == "MAINT" and stat["a"]["scur"] == "0"
        assert [await fetch(rig.haproxy.url) for _ in range(3)] == ["b"] * 3

        assert await drainer.undrain("a", drain_of("a")) == "api/a ready"
        assert await rig.haproxy.admin_state("a") == "ready"
        assert sorted([await fetch(rig.haproxy.url) for _ in range(4)]) == ["a", "a", "b", "b"]


async def test_drain_past_its_deadline_fails_and_undrain_restores(rig: Rig) -> None:
    held = await hold_on_a(rig)
    async with aiohttp.ClientSession() as session:
        drainer = rig.drainer(session)
        with pytest.raises(DrainError, match=r"api/a still has 1 sessions after 0.5s"):
            await drainer.drain("a", drain_of("a", timeout=0.5))
        assert await rig.haproxy.admin_state("a") == "drain"  # the engine undrains next
        assert await drainer.undrain("a", drain_of("a")) == "api/a ready"
    assert await rig.haproxy.admin_state("a") == "ready"
    rig.release["a"].set()
    assert await held == "a"


async def test_unknown_server_and_refused_commands_fail_clearly(rig: Rig) -> None:
    async with aiohttp.ClientSession() as session:
        drainer = rig.drainer(session)
        with pytest.raises(DrainError, match="has no server api/nope"):
            await drainer.drain("nope", drain_of("nope"))
        with pytest.raises(DrainError, match="answered: No such server"):
            await drainer.undrain("nope", drain_of("nope"))
    assert {await rig.haproxy.admin_state(s) for s in ("a", "b")} == {"ready"}
