"""The orchestrator upgrading minicloud under load, end to end: the engine,
real SSH (in-process asyncssh hosts), real services, the load balancer and
checked API traffic. The headline is N requests, 0 failed; the negative
controls run deliberately wrong playbooks and must show failures or a
refusal, so that the headline has teeth."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.engine.manager import Upgrade, UpgradeManager
from orchestrator.engine.states import UpgradeState
from orchestrator.errors import ConflictError
from orchestrator.minicloud import ctl
from orchestrator.minicloud.control import pin_drift, versions
from orchestrator.minicloud.embedded import EmbeddedCloud, embedded_cloud
from orchestrator.minicloud.layout import read_host_config, staged_releases
from orchestrator.minicloud.loadgen import LoadReport
from orchestrator.model import Plan
from orchestrator.pipeline import build_text
from orchestrator.plan import Options
from orchestrator.playbook import resolve_playbook
from orchestrator.store.journal import Journal
from tests.loadrun import run_under_load

pytestmark = [pytest.mark.slow]

PLAYBOOK = yaml.safe_load(resolve_playbook("minicloud").read_text())


def _phases(*names: str, **changes: dict[str, Any]) -> str:
    by_name = {p["name"]: p for p in PLAYBOOK["phases"]}
    phases = []
    for name in names:
        phase = dict(by_name[name])
        phase.update(changes.get(name.replace("-", "_"), {}))
        phases.append(phase)
    return yaml.safe_dump({**PLAYBOOK, "phases": phases}, sort_keys=False)


async def _upgrade(
    ec: EmbeddedCloud, tmp_path: Path, playbook: str, **options: Any
) -> tuple[Upgrade, LoadReport]:
    run = await run_under_load(
        ec.inventory_text, ec.lb.url, tmp_path / "journal.db", playbook=playbook, **options
    )
    return run.upgrade, run.report


def _running_versions(ec: EmbeddedCloud) -> set[str]:
    return set(versions(ec.cloud).values())


def _pins(ec: EmbeddedCloud) -> set[str | None]:
    return {read_host_config(h.directory).pin for h in ec.cloud.hosts}


def _has_old_column(ec: EmbeddedCloud) -> bool:
    with sqlite3.connect(ec.cloud.db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(instances)")]
    return "host" in columns


def _tables(ec: EmbeddedCloud) -> set[str]:
    with sqlite3.connect(ec.cloud.db) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _failed_output(journal: Path, phase: str) -> str:
    """What the failed step of `phase` printed, as journaled (the view keeps what its
    rollback printed last)."""
    with sqlite3.connect(journal) as conn:
        rows = conn.execute("SELECT kind, data FROM events ORDER BY seq").fetchall()
    for kind, data in rows:
        event = json.loads(data)
        if kind == "step" and event.get("phase") == phase and event.get("state") == "failed":
            return str(event.get("output", ""))
    return ""


def _service_pids(ec: EmbeddedCloud) -> dict[str, int | None]:
    return {
        f"{service}@{host.name}": ctl.running_pid(read_host_config(host.directory), service)
        for host in ec.cloud.hosts
        for service in host.roles
    }


@pytest.mark.timeout(300)
async def test_correct_playbook_under_load_loses_nothing(tmp_path: Path) -> None:
    async with embedded_cloud(tmp_path / "cloud", computes=3) as ec:
        playbook = resolve_playbook("minicloud").read_text()
        up, report = await _upgrade(ec, tmp_path, playbook, approve_after=1000)
        assert up.view.state is UpgradeState.SUCCEEDED, up.view.reason
        assert report.requests >= 1000, report.summary()
        assert report.failed == 0, report.summary()
        assert _running_versions(ec) == {"2.0"}
        assert _pins(ec) == {None}
        assert pin_drift(ec.cloud) == {}  # every service runs the pin its config has
        assert not _has_old_column(ec)

        # issue 10, defect 2: the same upgrade again has nothing to do. It was
        # accepted, pinned the fleet to 1.0, failed the contract gate and "rolled
        # back". Now the daemon that saw the first one refuses it at submit (409);
        # one with a fresh journal finds out in preflight, from the probes and the
        # contract step's check, and ends it before any step runs
        plan = _plan(ec, playbook)
        journal = await Journal.open(tmp_path / "journal.db")
        manager = UpgradeManager(journal)
        try:
            await manager.start()
            with pytest.raises(ConflictError) as refused:
                await manager.submit(plan)
            assert len(manager.upgrades) == 1
        finally:
            await manager.close()
            await journal.close()
        said = "nothing to do: all 7 hosts report 2.0 and phase contract-db, the point of no return"
        assert str(refused.value) == f"{said}, is already done (upgrade {up.id} did it)"
        journal = await Journal.open(tmp_path / "fresh.db")
        manager = UpgradeManager(journal)
        try:
            await manager.start()
            again, _ = await manager.submit(plan)
            assert await manager.wait(again.id, timeout=60) is UpgradeState.FAILED
            assert again.view.reason == f"{said}, is already done (its steps' checks pass)"
            assert not any(p.hosts for p in again.view.phases.values())  # no step ran
        finally:
            await manager.close()
            await journal.close()
        assert _pins(ec) == {None}
        assert pin_drift(ec.cloud) == {}


def _plan(ec: EmbeddedCloud, playbook: str) -> Plan:
    return build_text(ec.inventory_text, playbook, Options(to_version="2.0"))


@pytest.mark.timeout(300)
async def test_failing_compute_rolls_everything_back_without_losing_requests(
    tmp_path: Path,
) -> None:
    faults = {"cmp-2": ["unhealthy-2.0"]}
    # a host that never gets healthy fails after 10 s instead of the usual 30
    cloud = embedded_cloud(tmp_path / "cloud", computes=3, faults=faults, health_deadline="10s")
    async with cloud as ec:
        up, report = await _upgrade(ec, tmp_path, resolve_playbook("minicloud").read_text())
        assert up.view.state is UpgradeState.ROLLED_BACK, up.view.reason
        assert up.view.phases["upgrade-computes"].hosts["cmp-2"].error
        assert report.failed == 0, report.summary()
        assert _running_versions(ec) == {"1.0"}
        assert _pins(ec) == {None}
        assert pin_drift(ec.cloud) == {}  # every service runs the pin its config has
        assert _has_old_column(ec)  # the database is still usable by 1.0


NEGATIVE: dict[str, Callable[[], str]] = {
    # conductors at 2.0 unpinned send 2.0 RPC to 1.0 computes
    "without pin-rpc": lambda: _phases("expand-db", "upgrade-conductors"),
    # an API restarting while the load balancer still sends it traffic
    "APIs without drain": lambda: _phases(
        "expand-db",
        "pin-rpc",
        "upgrade-conductors",
        "upgrade-apis",
        upgrade_apis={"drain": False},
    ),
    # 2.0 APIs ask 1.0 conductors for objects they cannot produce
    "APIs before conductors": lambda: _phases("expand-db", "pin-rpc", "upgrade-apis"),
}


@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", list(NEGATIVE))
async def test_wrong_order_fails_real_requests(tmp_path: Path, name: str) -> None:
    async with embedded_cloud(tmp_path / "cloud", conductors=1, apis=2, computes=2) as ec:
        up, report = await _upgrade(ec, tmp_path, NEGATIVE[name](), rate=30)
        assert up.view.state.terminal
        assert report.failed > 0, f"{name}: {report.summary()}"
        assert pin_drift(ec.cloud) == {}
        print(f"negative control '{name}': {report.summary()}")


# The expand-db phase minicloud.yaml shipped before it staged the new code first:
# the schema sync run by the minicloud-manage a 1.0 conductor has, 1.0's.
OLD_EXPAND_DB = {
    "name": "expand-db",
    "description": "add the placements table; release 1.0 keeps working",
    "once": "conductor",
    "steps": [{"run": "minicloud-manage db expand", "idempotent": True}],
}


@pytest.mark.timeout(200)
async def test_expanding_with_the_old_code_fails_touching_no_service(tmp_path: Path) -> None:
    phases = [OLD_EXPAND_DB if p["name"] == "expand-db" else p for p in PLAYBOOK["phases"]]
    old_order = yaml.safe_dump({**PLAYBOOK, "phases": phases}, sort_keys=False)
    async with embedded_cloud(tmp_path / "cloud", conductors=1, apis=2, computes=2) as ec:
        pids, schema = _service_pids(ec), _tables(ec)
        assert None not in pids.values()

        up, report = await _upgrade(ec, tmp_path, old_order, rate=20)

        assert up.view.state is UpgradeState.ROLLED_BACK, up.view.reason
        expand = up.view.phases["expand-db"]
        assert "1 host(s) failed" in (expand.reason or ""), expand.reason
        assert "exit status 2" in (expand.hosts["ctl-1"].error or "")
        (step,) = expand.hosts["ctl-1"].steps.values()
        assert step.exit == 2
        output = _failed_output(tmp_path / "journal.db", "expand-db")
        assert "db expand: release 1.0 knows no schema newer than 1.0" in output, output
        assert [name for name, phase in up.view.phases.items() if phase.hosts] == ["expand-db"]
        assert _service_pids(ec) == pids  # not one service stopped or restarted
        assert _running_versions(ec) == {"1.0"}
        assert _pins(ec) == {None}
        assert pin_drift(ec.cloud) == {}  # every service runs the pin its config has
        assert _tables(ec) == schema  # nothing expanded
        assert {staged_releases(h.directory) for h in ec.cloud.hosts} == {("1.0",)}
        assert report.failed == 0, report.summary()


@pytest.mark.timeout(200)
async def test_contract_before_migrate_data_is_refused(tmp_path: Path) -> None:
    names = [p["name"] for p in PLAYBOOK["phases"]]
    names.remove("contract-db")
    names.insert(names.index("migrate-data"), "contract-db")
    async with embedded_cloud(tmp_path / "cloud", conductors=2, apis=2, computes=2) as ec:
        up, report = await _upgrade(ec, tmp_path, _phases(*names))
        assert up.view.state is UpgradeState.ROLLED_BACK
        gate = up.view.phases["contract-db"]
        assert "gate failed" in (gate.reason or "")
        assert "not migrated" in (gate.reason or ""), gate.reason
        assert _has_old_column(ec)
        assert pin_drift(ec.cloud) == {}
        assert report.failed == 0, report.summary()
