"""Fixtures of the `openstack` tier: real Ironic releases on real servers.

* ``ironic_venvs`` (session): the two releases' cached virtualenvs, built on
  first use (`tests.openstack.releases`);
* ``ironic_cloud()`` -> `IronicCloud`: a fresh 2026.1 cloud (MariaDB, two
  conductors, two APIs behind HAProxy, each host its own sshd), stopped
  after the test.

Without MariaDB, sshd or HAProxy a test skips with the command that installs
them; under ``CI=true`` it fails instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.openstack.ironiccloud import IronicCloud, ironic_cloud
from tests.openstack.releases import RELEASES, Venv, ensure_venv
from tests.openstack.tier import Programs, require_programs


class MakeIronicCloud(Protocol):
    async def __call__(self) -> IronicCloud: ...


@pytest.fixture
def programs() -> Programs:
    return require_programs()


@pytest.fixture(scope="session")
def ironic_venvs() -> dict[str, Venv]:
    return {release.name: ensure_venv(release) for release in RELEASES}


@pytest.fixture
async def make_ironic_cloud(
    programs: Programs, ironic_venvs: dict[str, Venv], tmp_path: Path
) -> AsyncIterator[MakeIronicCloud]:
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def make() -> IronicCloud:
            nonlocal count
            count += 1
            directory = tmp_path / f"ironic-{count}"
            return await stack.enter_async_context(ironic_cloud(programs, directory, ironic_venvs))

        yield make
