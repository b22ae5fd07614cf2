"""A journal that cannot write (a full disk): the upgrade stalls, visibly, and
continues when the space is back and the operator resumes it.

The disk is a real one: a 2 MiB tmpfs mounted for the test (root, as CI is),
filled to the last byte while a step runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.api.app import make_app
from orchestrator.engine.manager import UpgradeManager
from orchestrator.engine.states import UpgradeState
from orchestrator.errors import ConflictError
from orchestrator.store.journal import Journal
from tests.enginekit import host_state, make_plan, seed
from tests.mounts import fill, tmpfs
from tests.sshhosts import MakeSSHHosts
from tests.test_engine import LAST_STEP_PLAYBOOK, _until

pytestmark = pytest.mark.slow
AUTH = {"Authorization": "Bearer token"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "size=2m")


async def test_a_full_disk_stalls_the_upgrade_visibly_and_resume_continues_it(
    make_ssh_hosts: MakeSSHHosts, small_disk: Path
) -> None:
    """Fails on the code before it: the first failed journal write killed the
    engine ('failed' could not be journaled either), and the API went on
    answering 'running' and /healthz ok."""
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    (hosts.host_dir("host-1") / "go").touch()
    plan = make_plan(hosts, playbook=LAST_STEP_PLAYBOOK)
    journal = await Journal.open(small_disk / "journal.db")
    manager = UpgradeManager(journal)
    client = TestClient(TestServer(make_app(manager, "token")))
    await client.start_server()  # the app starts (and later closes) the manager
    try:
        up, _ = await manager.submit(plan)
        await _until((hosts.host_dir("host-2") / "started").exists)
        filler = fill(small_disk)
        (hosts.host_dir("host-2") / "go").touch()  # its step ends: that must be journaled

        # the bounded retries run out (about 5 s), then it stalls
        await _until(lambda: bool(manager.stalled()), timeout=60)
        reason = manager.stalled()[up.id]
        assert "journal write failed" in reason and "full" in reason, reason
        assert up.view.state is UpgradeState.RUNNING  # nothing claims it ended
        health = await client.get("/healthz")
        assert health.status == 503
        assert (await health.json())["stalled"] == {up.id: reason}
        status = await client.get(f"/v1/upgrades/{up.id}", headers=AUTH)
        assert (await status.json())["stalled"] == reason
        with pytest.raises(ConflictError, match="stalled"):
            await manager.control(up.id, "pause")

        filler.unlink()  # the operator frees the space, then resumes
        await manager.control(up.id, "resume")
        assert await manager.wait(up.id, timeout=30) is UpgradeState.SUCCEEDED, up.view.reason
        assert manager.stalled() == {}
        assert (await client.get("/healthz")).status == 200
        for name in hosts.names:
            assert host_state(hosts, name)["version"] == "2.0"
        events = await journal.events(up.id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))  # nothing lost
        assert ("step", "done") in {(e.kind, e.data.get("state")) for e in events}
    finally:
        await client.close()
        await journal.close()
