"""`minicloud-manage`: expand, the online data migration's counts and exit codes,
and contract's refusals, run as real commands in a conductor host's directory."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from orchestrator.minicloud import db
from orchestrator.minicloud.control import Result, on_hosts, run, running_cloud
from orchestrator.minicloud.layout import Cloud, create_cloud, set_pin


async def manage(cloud: Cloud, args: str) -> Result:
    return await run(cloud, "ctl-1", f"minicloud-manage {args}")


def columns(cloud: Cloud) -> list[str]:
    conn = sqlite3.connect(cloud.db)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(instances)")]
    finally:
        conn.close()


async def test_migrate_data_counts_and_exit_codes(tmp_path: Path) -> None:
    cloud = create_cloud(tmp_path / "cloud", conductors=1, apis=1, computes=1)
    for i in range(5):
        db.create_instance(cloud.db, f"vm-{i}", "cmp-1", legacy=True, placement=False)

    before = await manage(cloud, "db migrate-data")
    assert before.exit_status == 2
    assert "not expanded: run `minicloud-manage db expand` first" in before.output

    assert (await manage(cloud, "db expand")).output == "expanded: placements added\n"
    again = await manage(cloud, "db expand")
    assert (again.exit_status, again.output) == (0, "already expanded\n")

    runs = [await manage(cloud, "db migrate-data --max-count 2") for _ in range(4)]

    assert [(r.exit_status, r.output.strip()) for r in runs] == [
        (1, "2 migrated, 3 remaining"),
        (1, "2 migrated, 1 remaining"),
        (0, "1 migrated, 0 remaining"),
        (0, "0 migrated, 0 remaining"),
    ]
    assert db.counts(cloud.db) == {"instances": 5, "placements": 5, "unmigrated": 0}
    assert (await manage(cloud, "db migrate-data --max-count 0")).exit_status == 2


async def test_contract_refuses_until_expanded(tmp_path: Path) -> None:
    cloud = create_cloud(tmp_path / "cloud", conductors=1, apis=1, computes=1)

    result = await manage(cloud, "db contract")

    assert result.exit_status == 2
    assert "the schema is not expanded" in result.output
    assert "host" in columns(cloud)


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path / "cloud", conductors=1, apis=1, computes=1) as c:
        yield c


async def wait_versions(cloud: Cloud, want: dict[str, tuple[str, str | None]]) -> None:
    """Until every host's services row shows (version, pin)."""
    async with asyncio.timeout(10):
        while True:
            result = await manage(cloud, "service-versions --json")
            rows = {r["host"]: (r["version"], r["pin"]) for r in json.loads(result.output)}
            if rows == want:
                return
            await asyncio.sleep(0.2)


async def test_contract_refusals_then_success(cloud: Cloud) -> None:
    api = cloud.host("api-1").url("api")
    async with aiohttp.ClientSession() as session:
        async with session.post(api + "/instances", json={"name": "old"}) as response:
            assert response.status == 201
        await manage(cloud, "db expand")

        # 1. every service still runs 1.0
        refused = await manage(cloud, "db contract")
        assert refused.exit_status == 2
        assert "3 service(s) still need instances.host" in refused.output
        assert "conductor on ctl-1 (runs 1.0)" in refused.output
        assert "1 instance(s) not migrated" in refused.output
        assert (await manage(cloud, "db contract --check")).exit_status == 2

        # 2. all at 2.0, but the conductor is still pinned: it writes instances.host
        await on_hosts(cloud, cloud.hosts, "minicloud-ctl install 2.0")
        ctl = cloud.host("ctl-1")
        set_pin(ctl.directory, "1.0")
        await on_hosts(cloud, cloud.hosts, "minicloud-ctl restart all")
        await wait_versions(
            cloud, {"ctl-1": ("2.0", "1.0"), "api-1": ("2.0", None), "cmp-1": ("2.0", None)}
        )
        refused = await manage(cloud, "db contract")
        assert refused.exit_status == 2
        assert "conductor on ctl-1 (is pinned to 1.0)" in refused.output

        # 3. unpinned everywhere: only the unmigrated row is left in the way
        set_pin(ctl.directory, None)
        await run(cloud, ctl, "minicloud-ctl restart conductor", check=True)
        await wait_versions(
            cloud, {"ctl-1": ("2.0", None), "api-1": ("2.0", None), "cmp-1": ("2.0", None)}
        )
        refused = await manage(cloud, "db contract")
        assert refused.exit_status == 2
        assert "service(s)" not in refused.output
        assert "1 instance(s) not migrated" in refused.output

        # 4. migrated: contract drops the column, and the 2.0 cloud keeps working
        assert (await manage(cloud, "db migrate-data")).output == "1 migrated, 0 remaining\n"
        assert (await manage(cloud, "db contract --check")).exit_status == 0
        done = await manage(cloud, "db contract")
        assert (done.exit_status, done.output) == (0, "contracted: instances.host dropped\n")
        assert columns(cloud) == ["id", "name", "created"]
        again = await manage(cloud, "db contract")
        assert (again.exit_status, again.output) == (0, "already contracted\n")

        async with session.post(api + "/instances", json={"name": "new"}) as response:
            assert response.status == 201
        for instance_id in (1, 2):
            async with session.get(f"{api}/instances/{instance_id}") as response:
                assert response.status == 200
                assert (await response.json())["host"] == "cmp-1"
