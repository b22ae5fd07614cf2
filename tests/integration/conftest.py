"""Fixtures of the integration tier: real sshd hosts, a real HAProxy, a real-server minicloud.

Each fixture is a factory (call it with what the test needs; everything it
started stops after the test). Without the servers a test skips with the
command that installs them; under ``CI=true`` it fails instead.

* ``real_sshd_hosts(names, env=...)`` -> `RealSSHHosts`, started
* ``real_haproxy({server: port})`` -> `RealHAProxy` (backend ``api``), started
* ``real_cloud(computes=..., faults=...)`` -> `RealCloud`: the twin of
  ``orchestrator.minicloud.embedded.embedded_cloud``
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.integration.realcloud import RealCloud
from tests.integration.realcloud import real_cloud as start_real_cloud
from tests.integration.realhaproxy import RealHAProxy
from tests.integration.realsshd import RealSSHHosts
from tests.integration.servers import Servers, require_servers


class MakeSSHHosts(Protocol):
    async def __call__(
        self, hosts: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> RealSSHHosts: ...


class MakeHAProxy(Protocol):
    async def __call__(self, backends: Mapping[str, int]) -> RealHAProxy: ...


class MakeCloud(Protocol):
    async def __call__(self, **options: Any) -> RealCloud: ...


@pytest.fixture
def servers() -> Servers:
    return require_servers()


@pytest.fixture
async def real_sshd_hosts(servers: Servers, tmp_path: Path) -> AsyncIterator[MakeSSHHosts]:
    started: list[RealSSHHosts] = []

    async def make(hosts: Sequence[str], *, env: Mapping[str, str] | None = None) -> RealSSHHosts:
        group = RealSSHHosts(servers, tmp_path / f"sshd-{len(started)}", hosts, env=env)
        started.append(group)
        await group.start()
        return group

    yield make
    for group in reversed(started):
        await group.close()


@pytest.fixture
async def real_haproxy(servers: Servers, tmp_path: Path) -> AsyncIterator[MakeHAProxy]:
    started: list[RealHAProxy] = []

    async def make(backends: Mapping[str, int]) -> RealHAProxy:
        lb = RealHAProxy(servers, tmp_path / f"haproxy-{len(started)}", backends)
        started.append(lb)
        await lb.start()
        return lb

    yield make
    for lb in reversed(started):
        await lb.close()


@pytest.fixture
async def real_cloud(servers: Servers, tmp_path: Path) -> AsyncIterator[MakeCloud]:
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def make(**options: Any) -> RealCloud:
            nonlocal count
            count += 1
            directory = tmp_path / f"cloud-{count}"
            return await stack.enter_async_context(start_real_cloud(servers, directory, **options))

        yield make
