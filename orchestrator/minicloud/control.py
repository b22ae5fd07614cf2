"""Drive a minicloud from asyncio: run host commands, start and stop the whole cloud.

Commands run exactly as an SSH session on the host would run them:
`/bin/sh -c COMMAND` in the host's directory with the cloud's `bin/` on PATH.
Used by the tests, `orchestrator demo` and the benchmarks; everything here
is async so a load balancer and a load generator keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.minicloud import MinicloudError, ctl, db
from orchestrator.minicloud.layout import Cloud, Host, create_cloud, read_host_config


@dataclass(frozen=True, slots=True)
class Result:
    host: str
    command: str
    exit_status: int
    output: str


class HostCommandFailed(MinicloudError):
    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(
            f"{result.host}: '{result.command}' exited {result.exit_status}: "
            f"{result.output.strip()[-500:]}"
        )


async def run(
    cloud: Cloud,
    host: Host | str,
    command: str,
    *,
    timeout: float = 60.0,
    check: bool = False,
) -> Result:
    """`/bin/sh -c command` on `host`; stdout and stderr together in `output`."""
    target = cloud.host(host) if isinstance(host, str) else host
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        cwd=target.directory,
        env=cloud.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout kills all of it
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.communicate()  # reap it and close the pipes
        raise MinicloudError(
            f"{target.name}: '{command}' still running after {timeout:g}s"
        ) from None
    result = Result(target.name, command, process.returncode or 0, out.decode(errors="replace"))
    if check and result.exit_status != 0:
        raise HostCommandFailed(result)
    return result


async def on_hosts(cloud: Cloud, hosts: tuple[Host, ...], command: str) -> list[Result]:
    """The same command on several hosts at once; raises on the first failure after all ran."""
    results = await asyncio.gather(*(run(cloud, h, command) for h in hosts))
    for result in results:
        if result.exit_status != 0:
            raise HostCommandFailed(result)
    return list(results)


async def start_cloud(cloud: Cloud) -> None:
    """Conductors first (the others report to them), then computes and APIs."""
    await on_hosts(cloud, cloud.by_role("conductor"), "minicloud-ctl start all")
    rest = tuple(h for h in cloud.hosts if "conductor" not in h.roles)
    await on_hosts(cloud, rest, "minicloud-ctl start all")


def kill_leftovers(cloud: Cloud) -> list[int]:
    """SIGKILL every service process a pid file still names: the last resort of a cleanup."""
    killed = []
    for host in cloud.hosts:
        config = read_host_config(host.directory)
        for service in host.roles:
            pid = ctl.running_pid(config, service)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            ctl.pid_file(config, service).unlink(missing_ok=True)
    return killed


async def stop_cloud(cloud: Cloud) -> None:
    """Stop every service gracefully (APIs and computes first), then kill what is left."""
    try:
        rest = tuple(h for h in cloud.hosts if "conductor" not in h.roles)
        await asyncio.gather(*(run(cloud, h, "minicloud-ctl stop all") for h in rest))
        await asyncio.gather(
            *(run(cloud, h, "minicloud-ctl stop all") for h in cloud.by_role("conductor"))
        )
    finally:
        kill_leftovers(cloud)


@contextlib.asynccontextmanager
async def running_cloud(
    directory: Path, conductors: int = 2, apis: int = 2, computes: int = 3
) -> AsyncIterator[Cloud]:
    """A fresh cloud at 1.0 with every service running; everything stopped on exit."""
    cloud = create_cloud(directory, conductors=conductors, apis=apis, computes=computes)
    try:
        await start_cloud(cloud)
        yield cloud
    finally:
        await stop_cloud(cloud)


def pin_drift(cloud: Cloud) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    """(binary, host) -> (running pin, configured pin) of every live service
    whose running pin is not what its host's config says: a config change
    (or its undo) that no restart made real. Empty at every true end state."""
    now = time.time()
    configured = {h.name: read_host_config(h.directory).pin for h in cloud.hosts}
    return {
        (r.binary, r.host): (r.pin, configured.get(r.host))
        for r in db.services(cloud.db)
        if r.alive(now) and r.pin != configured.get(r.host)
    }


def versions(cloud: Cloud) -> dict[tuple[str, str], str]:
    """(binary, host) -> version, for every service alive in the services table."""
    now = time.time()
    return {(r.binary, r.host): r.version for r in db.services(cloud.db) if r.alive(now)}
