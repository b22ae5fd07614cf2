"""The load generator counts what it sends and catches every kind of wrong answer:
run against small real HTTP servers that answer right, wrong, or not at all."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from orchestrator.minicloud.layout import free_ports
from orchestrator.minicloud.loadgen import LoadGenerator, percentile

MODE = web.AppKey("mode", str)
IDS = web.AppKey("ids", itertools.count)


@contextlib.asynccontextmanager
async def fake_api(mode: str) -> AsyncIterator[str]:
    """An API that behaves (`good`) or answers 500s (`broken`) or the wrong host
    on read (`mismatch`)."""

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        if request.app[MODE] == "broken":
            return web.json_response({"error": "conductor: boom"}, status=500)
        ids: itertools.count[int] = request.app[IDS]
        return web.json_response(
            {"id": next(ids), "name": body["name"], "host": "cmp-1"}, status=201
        )

    async def read(request: web.Request) -> web.Response:
        host = "cmp-2" if request.app[MODE] == "mismatch" else "cmp-1"
        return web.json_response({"id": int(request.match_info["id"]), "name": "x", "host": host})

    app = web.Application()
    app[MODE] = mode
    app[IDS] = itertools.count(1)
    app.router.add_post("/instances", create)
    app.router.add_get("/instances/{id}", read)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_healthy_api_gives_requests_and_no_failures() -> None:
    async with fake_api("good") as url, LoadGenerator(url, rate=50, workers=3) as load:
        await load.wait(40)

    report = load.report()
    assert report.failed == 0, report.examples
    assert report.requests >= 40
    assert report.requests == 2 * report.iterations
    assert 0 < report.p50 <= report.p99
    assert report.summary().startswith(f"{report.requests} requests, 0 failed")


async def test_the_rate_bounds_the_traffic() -> None:
    async with fake_api("good") as url:
        load = LoadGenerator(url, rate=20, workers=4, max_duration=0.5)
        async with load:
            await load.join()  # the duration cap ends the workers by itself

    report = load.report()
    assert 8 <= report.iterations <= 11  # 20/s for 0.5 s, slots 0..9
    assert report.failed == 0


@pytest.mark.parametrize(("mode", "kind"), [("broken", "status 500"), ("mismatch", "mismatch")])
async def test_wrong_answers_are_failures_by_kind(mode: str, kind: str) -> None:
    async with fake_api(mode) as url, LoadGenerator(url, rate=50, workers=2) as load:
        await load.wait(10)

    report = load.report()
    assert report.failed > 0
    assert set(report.failures) == {kind}
    assert kind in report.summary()
    assert report.examples[0].startswith(kind)


async def test_nothing_listening_is_a_connection_failure() -> None:
    (port,) = free_ports(1)
    async with LoadGenerator(f"http://127.0.0.1:{port}", rate=50, workers=2) as load:
        await load.wait(5)

    report = load.report()
    assert report.failures == {"connection": report.requests}
    assert report.iterations == report.requests  # no GET without a created instance


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) == 0.0
