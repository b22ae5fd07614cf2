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
import json
import os
import resource
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HOSTS = 2000
DAEMON_NOFILE = 1024
MAX_CONNECTIONS = 256  # the default of ssh.max_connections
# the daemon's other descriptors: journal, HTTP, event loop, interpreter
OTHER_FDS = 64
# the hosts' process: a listening and an accepted socket per host, and room
HOSTS_NOFILE = 3 * HOSTS + 256

SERVER = """
import asyncio, json, sys
from pathlib import Path
from tests.sshhosts import SSHHosts

async def main() -> None:
    hosts = SSHHosts(Path(sys.argv[1]), int(sys.argv[2]), builtin_sleep=True)
    await hosts.start()
    t = hosts.target(hosts.names[0])
    print(json.dumps({"user": t.user, "key": t.key, "known_hosts": t.known_hosts,
                      "ports": {n: hosts.port(n) for n in hosts.names}}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await hosts.close()

asyncio.run(main())
"""

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


def nofile(limit: int) -> Callable[[], None]:
    """A preexec_fn: the child's soft and hard descriptor limit."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def inventory(info: dict[str, Any]) -> str:
    data = {
        "name": "fd-limit",
        "ssh": {
            "user": info["user"],
            "key": info["key"],
            "known_hosts": info["known_hosts"],
            "connect_timeout": "30s",
        },
        "vars": {"from_version": "1.0"},
        "hosts": {
            name: {"address": "127.0.0.1", "roles": ["app"], "ssh": {"port": port}}
            for name, port in info["ports"].items()
        },
    }
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
async def ssh_hosts_process(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """2,000 in-process SSH hosts in a child process of their own."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= HOSTS_NOFILE, (
        f"the simulated hosts need {HOSTS_NOFILE} file descriptors; the hard limit is {hard}"
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER,
        str(tmp_path / "hosts"),
        str(HOSTS),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=nofile(HOSTS_NOFILE),
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        yield json.loads(await server.stdout.readline())
    finally:
        server.stdin.close()
        await server.wait()


async def start_daemon(state: Path, log: Path) -> tuple[asyncio.subprocess.Process, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    with log.open("wb") as out:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state),
            "--log-level",
            "warning",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=nofile(DAEMON_NOFILE),
        )
    while (address := _listening(state)) is None:
        if daemon.returncode is not None:
            raise AssertionError(f"the daemon exited: {_read(log)[-3000:]}")
        await asyncio.sleep(0.05)
    return daemon, *address


def _listening(state: Path) -> tuple[str, str] | None:
    """(url, token) once the daemon has written where it listens."""
    try:
        url = json.loads((state / "daemon.json").read_text())["url"]
    except (OSError, ValueError):
        return None
    return str(url), (state / "token").read_text().strip()


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _read(log: Path) -> str:
    return log.read_text()


@pytest.mark.timeout(600)
async def test_a_2000_host_upgrade_runs_with_1024_file_descriptors(
    ssh_hosts_process: dict[str, Any], tmp_path: Path
) -> None:
    daemon, url, token = await start_daemon(tmp_path / "state", tmp_path / "daemon.log")
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(url, headers=headers) as session:
            body = {
                "inventory": inventory(ssh_hosts_process),
                "playbook": PLAYBOOK,
                "to_version": "2.0",
            }
            async with session.post("/v1/upgrades", json=body) as resp:
                created = await resp.json()
                assert resp.status == 201, created
            most_fds = 0
            while True:
                most_fds = max(most_fds, _open_fds(daemon.pid))
                async with session.get(f"/v1/upgrades/{created['id']}") as resp:
                    doc = await resp.json()
                if doc["terminal"]:
                    break
                await asyncio.sleep(0.2)
    finally:
        daemon.terminate()
        await daemon.wait()
    log = _read(tmp_path / "daemon.log")
    assert doc["state"] == "succeeded", (doc.get("reason"), log[-3000:])
    assert doc["progress"]["hosts_by_state"] == {"done": HOSTS}
    assert "Too many open files" not in log
    assert 0 < most_fds <= MAX_CONNECTIONS + OTHER_FDS  # as often as it was looked at
