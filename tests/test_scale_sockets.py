"""A 2,000-host upgrade through the real daemon with at most 1024 file descriptors.

Three processes, as in production: the simulated SSH hosts (tests.sshhosts,
2,000 servers on loopback, `sleep` answered without a shell) with a high
descriptor limit, the real daemon (`orchestrator serve`) under
``RLIMIT_NOFILE`` 1024, and this test. A pool that kept one connection per
host for the whole upgrade needs more than 2,000 descriptors: it ran out in
preflight, which opens them all (EMFILE; asyncssh then even failed to look
the local user up, "Unknown local username"), and the upgrade failed. The
pool keeps at most ``ssh.max_connections`` (default 256) open.

Nothing here depends on the machine's speed: steps are `sleep 0`, and the
test waits for the upgrade's end state, however long it takes.
"""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.farm import Farm, daemon, ssh_farm

pytestmark = pytest.mark.slow

HOSTS = 2000
DAEMON_NOFILE = 1024
MAX_CONNECTIONS = 256  # the default of ssh.max_connections
# the daemon's other descriptors: journal, HTTP, event loop, interpreter
OTHER_FDS = 64
# the hosts' process: a listening and an accepted socket per host, and room
HOSTS_NOFILE = 3 * HOSTS + 256

PLAYBOOK = """
name: fd-limit
phases:
  - name: roll
    rolling: app
    batch: "25%"
    health: false
    verify_version: false
    steps:
      - {run: "sleep 0", idempotent: true}
      - {run: "sleep 0", idempotent: true}
"""


def inventory(farm: Farm) -> str:
    data = {
        "name": "fd-limit",
        "ssh": {"user": farm.user, "connect_timeout": "30s"},
        "vars": {"from_version": "1.0"},
        "hosts": farm.inventory_hosts(),
    }
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
async def hosts_farm(tmp_path: Path) -> AsyncIterator[Farm]:
    """2,000 in-process SSH hosts in a child process of their own."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= HOSTS_NOFILE, (
        f"the simulated hosts need {HOSTS_NOFILE} file descriptors; the hard limit is {hard}"
    )
    async with ssh_farm(tmp_path / "hosts", HOSTS, fds=HOSTS_NOFILE) as farm:
        yield farm


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(600)
async def test_a_2000_host_upgrade_runs_with_1024_file_descriptors(
    hosts_farm: Farm, tmp_path: Path
) -> None:
    async with daemon(tmp_path / "state", fds=DAEMON_NOFILE) as running:
        headers = {"Authorization": f"Bearer {running.endpoint.token}"}
        async with aiohttp.ClientSession(running.endpoint.url, headers=headers) as session:
            body = {"inventory": inventory(hosts_farm), "playbook": PLAYBOOK, "to_version": "2.0"}
            async with session.post("/v1/upgrades", json=body) as resp:
                created = await resp.json()
                assert resp.status == 201, created
            most_fds = 0
            while True:
                most_fds = max(most_fds, _open_fds(running.process.pid))
                async with session.get(f"/v1/upgrades/{created['id']}") as resp:
                    doc = await resp.json()
                if doc["terminal"]:
                    break
                await asyncio.sleep(0.2)
    log = running.log.read_text()
    assert doc["state"] == "succeeded", (doc.get("reason"), log[-3000:])
    assert doc["progress"]["hosts_by_state"] == {"done": HOSTS}
    assert "Too many open files" not in log
    assert 0 < most_fds <= MAX_CONNECTIONS + OTHER_FDS  # as often as it was looked at
