"""`minicloud-manage`: expand, the online data migration's counts and exit codes,
and contract's refusals, run as real commands in a conductor host's directory;
and which release's code runs: 1.0's refuses to do 2.0's schema work."""

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
from orchestrator.minicloud.layout import Cloud, create_cloud, read_release, set_pin

NEW = "releases/2.0/bin/minicloud-manage"  # 2.0's code on the host, staged beside 1.0


async def manage(cloud: Cloud, args: str, command: str = NEW) -> Result:
    """Release 2.0's minicloud-manage on ctl-1 (staged there first), or `command`."""
    if command == NEW:
        await run(cloud, "ctl-1", "minicloud-ctl stage 2.0", check=True)
    return await run(cloud, "ctl-1", f"{command} {args}")


def columns(cloud: Cloud) -> list[str]:
    conn = sqlite3.connect(cloud.db)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(instances)")]
    finally:
        conn.close()


def tables(cloud: Cloud) -> list[str]:
    conn = sqlite3.connect(cloud.db)
    try:
        return sorted(
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        )
    finally:
        conn.close()


@pytest.mark.parametrize("command", ["minicloud-manage", "releases/1.0/bin/minicloud-manage"])
@pytest.mark.parametrize(
    ("args", "why"),
    [
        ("db expand", "db expand: release 1.0 knows no schema newer than 1.0"),
        ("db migrate-data", "db migrate-data: release 1.0 has no online data migrations"),
        ("db contract", "db contract: a 2.0 command; release 1.0 has nothing to contract"),
        ("db contract --check", "db contract: a 2.0 command"),
    ],
)
async def test_release_1_0_refuses_2_0_schema_work(
    tmp_path: Path, command: str, args: str, why: str
) -> None:
    cloud = create_cloud(tmp_path / "cloud", conductors=1, apis=1, computes=1)
    db.create_instance(cloud.db, "vm", "cmp-1", legacy=True, placement=False)

    result = await manage(cloud, args, command)

    assert result.exit_status == 2
    assert result.output.startswith(f"minicloud-manage: {why}"), result.output
    assert "`minicloud-ctl stage 2.0`, then `releases/2.0/bin/minicloud-manage " in result.output
    assert tables(cloud) == ["instances", "services", "sqlite_sequence"]  # nothing expanded
    assert "host" in columns(cloud)
    # what 1.0's code does know still works
    assert (await manage(cloud, "version", command)).output == "1.0\n"
    status = await manage(cloud, "db status", command)
    assert json.loads(status.output) == {"instances": 1, "placements": 0, "unmigrated": 1}


async def test_the_code_that_runs_is_a_release_staged_on_the_host(tmp_path: Path) -> None:
    cloud = create_cloud(tmp_path / "cloud", conductors=1, apis=1, computes=1)
    directory = cloud.host("ctl-1").directory

    early = await run(cloud, "ctl-1", "minicloud-manage --release 2.0 db expand")
    assert (early.exit_status, early.output) == (
        2,
        "minicloud-manage: release 2.0 is not installed on this host (staged: 1.0); "
        "`minicloud-ctl stage 2.0` puts it there\n",
    )
    assert not (directory / NEW).exists()

    staged = await run(cloud, "ctl-1", "minicloud-ctl stage 2.0", check=True)
    assert staged.output == (
        "ctl-1: staged 2.0 in releases/2.0 (on the host: 1.0, 2.0); services still point at 1.0\n"
    )
    assert read_release(directory) == "1.0"  # staging moves nothing
    assert (await manage(cloud, "version", "minicloud-manage")).output == "1.0\n"
    assert (await manage(cloud, "version")).output == "2.0\n"
    assert (await manage(cloud, "--release 2.0 version", "minicloud-manage")).output == "2.0\n"
    refused = await manage(cloud, "db expand", "minicloud-manage")
    assert refused.exit_status == 2  # the 1.0 on PATH still cannot, 2.0 staged or not
    done = await manage(cloud, "db expand")
    assert (done.exit_status, done.output) == (0, "expanded: placements added\n")

    # once the host points at 2.0, the minicloud-manage on its PATH is 2.0's
    await run(cloud, "ctl-1", "minicloud-ctl install 2.0", check=True)
    assert (await manage(cloud, "version", "minicloud-manage")).output == "2.0\n"
    again = await manage(cloud, "db expand", "minicloud-manage")
    assert (again.exit_status, again.output) == (0, "already expanded\n")


async def test_migrate_data_counts_and_exit_codes(tmp_path: Path) -> None:
    cloud = create_cloud(tmp_path / "cloud", conductors=1, apis=1, computes=1)
    for i in range(5):
        db.create_instance(cloud.db, f"vm-{i}", "cmp-1", legacy=True, placement=False)

    before = await manage(cloud, "db migrate-data")
    assert before.exit_status == 2
    assert "not expanded: run `minicloud-manage db expand` (2.0's code) first" in before.output

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
        assert (await manage(cloud, "db contract --done")).exit_status == 1

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
        assert (await manage(cloud, "db contract --done")).output == "contracted\n"
        again = await manage(cloud, "db contract")
        assert (again.exit_status, again.output) == (0, "already contracted\n")

        async with session.post(api + "/instances", json={"name": "new"}) as response:
            assert response.status == 201
        for instance_id in (1, 2):
            async with session.get(f"{api}/instances/{instance_id}") as response:
                assert response.status == 200
                assert (await response.json())["host"] == "cmp-1"
