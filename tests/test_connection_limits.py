"""The SSH connection limit from the engine's and the daemon's side: a host's
connection closes when its phase work is done; `ssh.max_connections` and
`serve --ssh-max-connections` reach every pool, and bad values are refused."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.daemon import ServeConfig, serve, ssh_pools
from orchestrator.daemonconfig import load_config
from orchestrator.engine.states import HostState, StepState, UpgradeState
from orchestrator.errors import InputError, UsageError
from orchestrator.pipeline import build_text
from orchestrator.plan import Options
from orchestrator.secrets import SecretStore
from orchestrator.transport import supervise
from orchestrator.transport.slots import ConnectionLimit
from tests.enginekit import inventory_text, open_manager, seed
from tests.sshhosts import MakeSSHHosts

# each host's step waits for a `go` file in its own directory
PLAYBOOK = """
name: one-by-one
phases:
  - name: roll
    rolling: app
    batch: 1
    steps:
      - run: >-
          while [ ! -f go ]; do sleep 0.02; done;
          echo {{ to_version }} > version
        idempotent: true
"""


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the servers' side to catch up; the test's timeout bounds it."""
    while not condition():  # noqa: ASYNC110 - the servers' connection counts have no event
        await asyncio.sleep(0.01)


async def test_a_hosts_connection_closes_once_its_phase_work_is_done(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(3)
    seed(hosts)
    plan = build_text(inventory_text(hosts), PLAYBOOK, Options(to_version="2.0"))
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        phase = up.view.phase("roll")
        (hosts.host_dir("host-1") / "go").touch()
        await until(
            lambda: any(
                step.state is StepState.RUNNING for step in phase.host("host-2").steps.values()
            )
        )
        assert phase.host("host-1").state is HostState.DONE
        await until(lambda: hosts.open_connections("host-1") == 0)
        assert hosts.open_connections("host-2") == 1  # still at work
        for name in ("host-2", "host-3"):
            (hosts.host_dir(name) / "go").touch()
        assert await manager.wait(up.id) is UpgradeState.SUCCEEDED
        await until(lambda: sum(hosts.open_connections(n) for n in hosts.names) == 0)
        # preflight's connection served the whole phase, and the run records
        # went over it before it closed: the end state had nothing to ask
        assert [hosts.accepted(n) for n in hosts.names] == [1, 1, 1]
        for name in hosts.names:
            assert not (hosts.host_dir(name) / supervise.upgrade_dir(up.id)).exists()
    finally:
        await manager.close()
        await journal.close()


def test_the_daemons_pools_share_one_limit() -> None:
    limit = ConnectionLimit(3)
    make = ssh_pools(limit)
    plan = build_text(
        "vars: {from_version: '1.0'}\nhosts:\n  a: {address: 127.0.0.1, roles: [app]}\n",
        PLAYBOOK,
        Options(to_version="2.0"),
    )
    assert make(plan, SecretStore((), {})).limit is make(plan, SecretStore((), {})).limit is limit


def test_the_config_file_sets_max_connections(tmp_path: Path) -> None:
    assert load_config(None).ssh.max_connections == 256
    config = tmp_path / "daemon.yaml"
    config.write_text("ssh:\n  max_connections: 64\n")
    assert load_config(config).ssh.max_connections == 64


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "must be at least 1, got 0"),
        ("-5", "must be at least 1, got -5"),
        ("2.5", "expected an integer, got float 2.5"),
        ("ten", "expected an integer, got str 'ten'"),
        ("true", "expected an integer, got bool True"),
    ],
)
def test_a_bad_max_connections_in_the_file_names_file_line_and_field(
    tmp_path: Path, value: str, says: str
) -> None:
    config = tmp_path / "daemon.yaml"
    config.write_text(f"limits:\n  streams_per_token: 4\nssh:\n  max_connections: {value}\n")
    with pytest.raises(InputError) as caught:
        load_config(config)
    assert str(caught.value) == f"{config}:4:3: ssh.max_connections: {says}"


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "many"])
def test_a_bad_ssh_max_connections_flag_is_a_usage_error(value: str) -> None:
    err = io.StringIO()
    code = main(["serve", f"--ssh-max-connections={value}"], io.StringIO(), err)
    assert code == 2
    assert "argument --ssh-max-connections: expected a whole number of at least 1" in (
        err.getvalue()
    )


async def test_serve_refuses_a_bad_limit_before_touching_anything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(UsageError, match="--ssh-max-connections must be a whole number"):
        await serve(ServeConfig(state_dir=state, ssh_max_connections=0))
    assert not state.exists()
