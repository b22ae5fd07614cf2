"""minicloud's versioned RPC and the 2.0 schema move, against real service processes.

1.0 code rejects 2.0 messages and cannot produce 2.0 objects; a pinned 2.0
conductor speaks 1.0 and writes both `instances.host` and `placements`; an
unpinned one writes only placements and needs the expanded schema."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.minicloud import db
from orchestrator.minicloud.control import run, running_cloud
from orchestrator.minicloud.layout import Cloud, set_pin


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path / "cloud", conductors=1, apis=1, computes=1) as c:
        yield c


async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, await response.json()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


def rpc(version: str, method: str, object_version: str | None = None, **args: Any) -> Any:
    return {"version": version, "method": method, "args": args, "object_version": object_version}


async def upgrade(cloud: Cloud, name: str, service: str, pin: str | None) -> None:
    host = cloud.host(name)
    set_pin(host.directory, pin)
    await run(
        cloud, host, f"minicloud-ctl install 2.0 && minicloud-ctl restart {service}", check=True
    )


def rows(cloud: Cloud) -> list[tuple[Any, ...]]:
    with sqlite3.connect(cloud.db) as conn:
        conn.row_factory = None
        placements = dict(conn.execute("SELECT instance_id, host FROM placements").fetchall())
        result = [
            (i, name, host, placements.get(i))
            for i, name, host in conn.execute("SELECT id, name, host FROM instances ORDER BY id")
        ]
    conn.close()
    return result


async def test_1_0_rejects_2_0_messages_and_2_0_accepts_both(cloud: Cloud) -> None:
    compute = cloud.host("cmp-1")

    status, body = await post(
        compute.url("compute") + "/rpc", rpc("2.0", "build_instance", name="x")
    )
    assert (status, body) == (409, {"error": "unsupported RPC version 2.0"})
    status, body = await post(
        compute.url("compute") + "/rpc", rpc("1.0", "build_instance", name="x")
    )
    assert (status, body) == (200, {"result": {"host": "cmp-1"}})

    await upgrade(cloud, "cmp-1", "compute", pin=None)

    for version in ("1.0", "2.0"):
        status, body = await post(
            compute.url("compute") + "/rpc", rpc(version, "build_instance", name="x")
        )
        assert (status, body) == (200, {"result": {"host": "cmp-1"}})
    assert (await get(compute.url("compute") + "/"))[1]["version"] == "2.0"


async def test_a_1_0_conductor_cannot_serve_a_2_0_api(cloud: Cloud) -> None:
    conductor = cloud.host("ctl-1").url("conductor") + "/rpc"

    status, body = await post(conductor, rpc("1.0", "create_instance", "2.0", name="x"))
    assert (status, body) == (
        409,
        {"error": "object version 2.0 unknown: upgrade conductors first"},
    )
    status, body = await post(conductor, rpc("2.0", "get_instance", "1.0", id=1))
    assert (status, body) == (409, {"error": "unsupported RPC version 2.0"})

    # the real thing: an API upgraded before the conductors fails every call
    await upgrade(cloud, "api-1", "api", pin="1.0")
    status, body = await post(cloud.host("api-1").url("api") + "/instances", {"name": "vm"})
    assert status == 502
    assert body["error"] == "conductor: object version 2.0 unknown: upgrade conductors first"


async def test_pinned_2_0_writes_both_places_unpinned_only_placements(cloud: Cloud) -> None:
    api = cloud.host("api-1").url("api")
    ctl = cloud.host("ctl-1")
    assert (await post(api + "/instances", {"name": "old"}))[0] == 201
    await run(
        cloud,
        ctl,
        "minicloud-ctl stage 2.0 && releases/2.0/bin/minicloud-manage db expand",
        check=True,
    )

    await upgrade(cloud, "ctl-1", "conductor", pin="1.0")
    status, created = await post(api + "/instances", {"name": "pinned"})
    assert (status, created["host"]) == (201, "cmp-1")  # a 1.0 compute took the 1.0 build

    set_pin(ctl.directory, None)
    await run(cloud, ctl, "minicloud-ctl restart conductor", check=True)
    # unpinned, the conductor speaks 2.0 to a 1.0 compute: refused
    status, body = await post(api + "/instances", {"name": "refused"})
    assert status == 502
    assert "unsupported RPC version 2.0" in body["error"]

    await upgrade(cloud, "cmp-1", "compute", pin=None)
    status, created = await post(api + "/instances", {"name": "unpinned"})
    assert status == 201

    assert rows(cloud) == [
        (1, "old", "cmp-1", None),
        (2, "pinned", "cmp-1", "cmp-1"),
        (3, "unpinned", None, "cmp-1"),
    ]
    # a 1.0 API reads them all through the 2.0 conductor: placement first, then the column
    for instance_id in (1, 2, 3):
        status, read = await get(f"{api}/instances/{instance_id}")
        assert (status, read["host"]) == (200, "cmp-1")
    assert (await get(f"{api}/instances/99"))[0] == 404


async def test_2_0_conductor_before_expand_fails_to_write(cloud: Cloud) -> None:
    api = cloud.host("api-1").url("api")
    await upgrade(cloud, "ctl-1", "conductor", pin="1.0")

    status, body = await post(api + "/instances", {"name": "x"})

    assert status == 502
    assert body["error"] == "conductor: database: no such table: placements"
    assert db.counts(cloud.db) == {"instances": 0, "placements": 0, "unmigrated": 0}
