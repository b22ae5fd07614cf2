"""Fixtures of the PostgreSQL tier: one real server per test session, a fresh
database per test. Without PostgreSQL a test skips with the command that
installs it; under ``CI=true`` it fails instead (`.ci/run` installs it).

* ``pg_server`` -> `PostgresServer`, started once for the session
* ``pg_url`` -> the URL of an empty database of its own
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.servers import missing_parts
from tests.pgserver import INSTALL_HINT, PostgresServer, find_bin_dir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        missing_parts(f"the PostgreSQL tier needs initdb and postgres; {INSTALL_HINT}")
    with PostgresServer.started(bin_dir) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    return pg_server.new_database()
