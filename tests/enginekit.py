"""Helpers for engine tests: plans over in-process SSH hosts, run by a real
UpgradeManager with a real journal. Not a test module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from orchestrator import model
from orchestrator.engine.manager import UpgradeManager
from orchestrator.engine.states import UpgradeState
from orchestrator.pipeline import build_text
from orchestrator.plan import Options
from orchestrator.store.journal import Journal
from tests.sshhosts import SSHHosts

# A small cloud procedure in plain shell: each host keeps its release in
# `version`, an RPC pin in etc/app.conf, a `drained` marker while drained.
# Non-idempotent steps (mkdir) declare a check; they append to runs.log so a
# test can prove no step ran twice.
PLAYBOOK = """
name: shell-upgrade
on_failure: {on_failure}
phases:
  - name: expand
    once: app
    steps:
      - run: "mkdir m-expand && echo expand >> runs.log"
        check: "test -d m-expand"
        undo: "rmdir m-expand"
  - name: pin
    all: [app]
    steps:
      - config:
          {{file: etc/app.conf, section: upgrade_levels, key: app, value: "{{{{ from_version }}}}"}}
  - name: upgrade
    rolling: app
    batch: {batch}
    max_failures: {max_failures}
    steps:
      - run: "{fail_cmd}echo {{{{ to_version }}}} > version"
        undo: "echo {{{{ from_version }}}} > version"
        idempotent: true
      - run: "mkdir m-upgrade && echo upgrade >> runs.log"
        check: "test -d m-upgrade"
        undo: "rmdir m-upgrade"
  - name: unpin
    all: [app]
    gate: all_at_target
    steps:
      - config: {{file: etc/app.conf, section: upgrade_levels, key: app, state: absent}}
  - name: contract
    once: app
    gate: all_at_target
    approve: {approve}
    irreversible: true
    steps:
      - run: "mkdir m-contract && echo contract >> runs.log"
        check: "test -d m-contract"
"""


def inventory_text(
    hosts: SSHHosts, *, drain: bool = True, extra_roles: dict[str, Any] | None = None
) -> str:
    first = hosts.target(hosts.names[0])
    role: dict[str, Any] = {
        "version": {"run": "cat version"},
        "health": [{"run": "test -f version"}],
        "health_policy": {"passes": 1, "interval": "50ms", "deadline": "5s"},
    }
    if drain:
        role["drain"] = {"run": "touch drained", "undo": "rm -f drained"}
    data = {
        "name": "shell-cloud",
        "ssh": {
            "user": first.user,
            "key": first.key,
            "known_hosts": first.known_hosts,
            "connect_timeout": "5s",
            "command_timeout": "30s",
        },
        "vars": {"from_version": "1.0"},
        "roles": {"app": role, **(extra_roles or {})},
        "hosts": {
            name: {"address": "127.0.0.1", "roles": ["app"], "ssh": {"port": hosts.port(name)}}
            for name in hosts.names
        },
    }
    return yaml.safe_dump(data, sort_keys=False)


def seed(hosts: SSHHosts, version: str = "1.0") -> None:
    for name in hosts.names:
        directory = hosts.host_dir(name)
        (directory / "etc").mkdir(parents=True, exist_ok=True)
        (directory / "etc" / "app.conf").write_text("[DEFAULT]\n# managed by hand\ndebug = false\n")
        (directory / "version").write_text(version + "\n")


def make_plan(
    hosts: SSHHosts,
    *,
    on_failure: str = "rollback",
    batch: Any = 1,
    max_failures: int = 0,
    fail_on: str | None = None,
    approve: bool = False,
    playbook: str | None = None,
    drain: bool = True,
    fail_while: str | None = None,
) -> model.Plan:
    """`fail_on`: that host's upgrade step always fails; `fail_while`: the
    upgrade step fails on any host while that file is in its directory."""
    fail_cmd = ""
    if fail_on is not None:
        fail_cmd = f'test \\"$HOST_NAME\\" != {fail_on} && '
    if fail_while is not None:
        fail_cmd = f"test ! -e {fail_while} && "
    text = (playbook or PLAYBOOK).format(
        on_failure=on_failure,
        batch=json.dumps(batch),
        max_failures=max_failures,
        fail_cmd=fail_cmd,
        approve=str(approve).lower(),
    )
    return build_text(inventory_text(hosts, drain=drain), text, Options(to_version="2.0"))


def host_state(hosts: SSHHosts, name: str) -> dict[str, Any]:
    directory = hosts.host_dir(name)
    runs = directory / "runs.log"
    return {
        "version": (directory / "version").read_text().strip(),
        "drained": (directory / "drained").exists(),
        "conf": (directory / "etc" / "app.conf").read_text(),
        "runs": runs.read_text().split() if runs.exists() else [],
        "markers": sorted(p.name for p in directory.glob("m-*")),
    }


async def open_manager(path: Path) -> tuple[Journal, UpgradeManager]:
    journal = await Journal.open(path)
    manager = UpgradeManager(journal)
    await manager.start()
    return journal, manager


async def run_to_end(
    plan: model.Plan, path: Path, *, timeout: float = 30.0
) -> tuple[str, UpgradeState, UpgradeManager, Journal]:
    journal, manager = await open_manager(path)
    up, _ = await manager.submit(plan)
    state = await manager.wait(up.id, timeout=timeout)
    return up.id, state, manager, journal
