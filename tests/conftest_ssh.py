"""Fixtures for in-process SSH hosts; enable with ``pytest_plugins = ["tests.conftest_ssh"]``.

* ``make_ssh_hosts(n_or_names, env=...)`` starts a fresh `SSHHosts` (closed
  after the test); call it as often as needed.
* ``ssh_hosts`` is one `SSHHosts` with one host, or as many as an indirect
  parameter asks for: ``@pytest.mark.parametrize("ssh_hosts", [3], indirect=True)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.sshhosts import MakeSSHHosts, SSHHosts


@pytest.fixture
async def make_ssh_hosts(tmp_path: Path) -> AsyncIterator[MakeSSHHosts]:
    started: list[SSHHosts] = []

    async def make(
        hosts: int | Sequence[str] = 1, *, env: Mapping[str, str] | None = None
    ) -> SSHHosts:
        group = SSHHosts(tmp_path / f"ssh-{len(started)}", hosts, env=env)
        started.append(group)
        await group.start()
        return group

    yield make
    for group in reversed(started):
        await group.close()


@pytest.fixture
async def ssh_hosts(request: pytest.FixtureRequest, make_ssh_hosts: MakeSSHHosts) -> SSHHosts:
    count: int | Sequence[str] = getattr(request, "param", 1)
    return await make_ssh_hosts(count)
