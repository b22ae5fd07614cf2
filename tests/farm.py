"""Many simulated SSH hosts in a child process of their own, and the real
daemon beside them: what the 2,000-host test and the benches share.

In a cloud the hosts are other machines. Here their servers (tests.sshhosts,
`sleep` answered without a shell) run in a process apart from the daemon and
from the caller, so that serving them does not share the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.demo import Daemon, running_daemon

REPO = Path(__file__).resolve().parent.parent

# the child: hosts host-FIRST .. host-(FIRST+COUNT-1) under DIR; prints their
# login and ports as one JSON line, and stops when its stdin closes
_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from tests.sshhosts import SSHHosts

async def main() -> None:
    first, count = int(sys.argv[2]), int(sys.argv[3])
    names = [f"host-{i}" for i in range(first, first + count)]
    hosts = SSHHosts(Path(sys.argv[1]), names, builtin_sleep=True)
    await hosts.start()
    t = hosts.target(hosts.names[0])
    print(json.dumps({"user": t.user, "key": t.key, "known_hosts": t.known_hosts,
                      "ports": {n: hosts.port(n) for n in hosts.names}}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await hosts.close()

asyncio.run(main())
"""


@dataclass(frozen=True, slots=True)
class Farm:
    """One child process's hosts: the login they share and each one's port."""

    process: asyncio.subprocess.Process
    user: str
    key: str
    known_hosts: str
    ports: dict[str, int]

    def inventory_hosts(self) -> dict[str, dict[str, object]]:
        """The hosts as inventory entries (role `app`), each with its own key files."""
        return {
            name: {
                "address": "127.0.0.1",
                "roles": ["app"],
                "ssh": {"port": port, "key": self.key, "known_hosts": self.known_hosts},
            }
            for name, port in self.ports.items()
        }


def nofile(limit: int) -> Callable[[], None]:
    """A preexec_fn: the child's soft and hard limit of open file descriptors."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def _child_setup(nice: int, fds: int | None) -> Callable[[], None] | None:
    if not nice and fds is None:
        return None

    def apply() -> None:
        if nice:
            os.nice(nice)
        if fds is not None:
            nofile(fds)()

    return apply


@contextlib.asynccontextmanager
async def ssh_farm(
    directory: Path, count: int, *, first: int = 1, nice: int = 0, fds: int | None = None
) -> AsyncIterator[Farm]:
    """`count` hosts (host-FIRST onwards) in a child process; `nice`: its
    niceness (they yield the cores to the daemon), `fds`: its descriptor limit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SCRIPT,
        str(directory),
        str(first),
        str(count),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_child_setup(nice, fds),
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"the SSH hosts' process exited ({await process.wait()})")
        info = json.loads(line)
        yield Farm(process, info["user"], info["key"], info["known_hosts"], info["ports"])
    finally:
        process.stdin.close()
        await process.wait()


def daemon_env() -> dict[str, str]:
    """This process's environment without ORCHESTRATOR_ settings: the daemon
    under test reads no configuration of the machine's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}


@contextlib.asynccontextmanager
async def daemon(
    state: Path, *, args: Sequence[str] = (), fds: int | None = None
) -> AsyncIterator[Daemon]:
    """The real daemon (`orchestrator serve`) logging warnings and worse to
    STATE/daemon.log; `fds`: its descriptor limit. It may take as long as it
    needs to start: only its exit ends the wait."""
    async with running_daemon(
        state,
        args=["--log-level", "warning", *args],
        env=daemon_env(),
        preexec_fn=None if fds is None else nofile(fds),
        start_deadline=float("inf"),
    ) as running:
        yield running
