"""minicloud 1.0 -> 2.0 through real sshd and a real HAProxy, under load.

Each host is its own sshd; the API hosts are drained through HAProxy's
runtime API reached over SSH from the load balancer host. The figures are
printed (run with -s to see them)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yaml

from orchestrator.engine.states import UpgradeState
from orchestrator.minicloud.control import pin_drift, versions
from orchestrator.minicloud.layout import read_host_config, read_release
from orchestrator.minicloud.loadgen import LoadGenerator
from orchestrator.playbook import resolve_playbook
from tests.integration.conftest import MakeCloud
from tests.integration.realcloud import RealCloud, run_upgrade

pytestmark = [pytest.mark.integration]


def running_versions(rc: RealCloud) -> set[str]:
    return set(versions(rc.cloud).values())


def pins(rc: RealCloud) -> set[str | None]:
    return {read_host_config(h.directory).pin for h in rc.cloud.hosts}


def tables(rc: RealCloud) -> dict[str, list[str]]:
    with sqlite3.connect(rc.cloud.db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: [c[1] for c in conn.execute(f"PRAGMA table_info({n})")] for n in names}


def host_files(rc: RealCloud) -> dict[str, str]:
    """Every file of every host but its logs: what an upgrade step would change."""
    files = {}
    for host in rc.cloud.hosts:
        for path in sorted(host.directory.rglob("*")):
            if path.is_file() and "log" not in path.relative_to(host.directory).parts:
                files[str(path.relative_to(rc.cloud.directory))] = path.read_text()
    return files


@pytest.mark.timeout(300)
async def test_full_upgrade_through_real_servers_loses_no_request(
    real_cloud: MakeCloud, tmp_path: Path
) -> None:
    rc = await real_cloud(computes=3)
    run = await run_upgrade(rc, tmp_path / "journal.db", rate=45, approve_after=1000)
    view = run.upgrade.view
    print(
        f"\nreal sshd + haproxy upgrade: {view.state.label} in {run.seconds:.1f}s; "
        f"{run.during} requests during it; load {run.report.summary()}"
    )
    assert view.state is UpgradeState.SUCCEEDED, view.reason
    assert run.during >= 1000, run.report.summary()
    assert run.report.failed == 0, run.report.summary()
    assert running_versions(rc) == {"2.0"}
    assert {read_release(h.directory) for h in rc.cloud.hosts} == {"2.0"}
    assert pins(rc) == {None}
    assert pin_drift(rc.cloud) == {}  # every service runs the pin its config has
    assert "host" not in tables(rc)["instances"]  # contracted
    for api in rc.cloud.by_role("api"):
        assert await rc.haproxy.admin_state(api.name) == "ready"
        # each API went through drain -> maint -> ready over the real runtime API
        assert "enters drain state" in rc.haproxy.log.read_text()
        assert f"Server api/{api.name} is going DOWN for maintenance" in rc.haproxy.log.read_text()
    for host in rc.cloud.hosts:  # every host was worked on through its own sshd
        assert rc.hosts.sessions(host.name), host.name


@pytest.mark.timeout(300)
async def test_api_fault_through_real_haproxy_rolls_back_and_returns_to_ready(
    real_cloud: MakeCloud, tmp_path: Path
) -> None:
    rc = await real_cloud(computes=2, faults={"api-2": ["unhealthy-2.0"]}, health_deadline="10s")
    run = await run_upgrade(rc, tmp_path / "journal.db", rate=45)
    view = run.upgrade.view
    print(
        f"\nAPI fault through real haproxy: {view.state.label} in {run.seconds:.1f}s; "
        f"{run.during} requests during it; load {run.report.summary()}"
    )
    assert view.state is UpgradeState.ROLLED_BACK, view.reason
    assert view.phases["upgrade-apis"].hosts["api-2"].error
    assert run.report.failed == 0, run.report.summary()
    assert running_versions(rc) == {"1.0"}
    assert pins(rc) == {None}
    assert pin_drift(rc.cloud) == {}  # every service runs the pin its config has
    assert "host" in tables(rc)["instances"]  # 1.0 can still use the database
    for api in rc.cloud.by_role("api"):
        assert await rc.haproxy.admin_state(api.name) == "ready", api.name
    # and api-2 really takes traffic again
    before = int((await rc.haproxy.stat())["api-2"]["stot"])
    async with LoadGenerator(rc.haproxy.url, rate=20, max_duration=10) as load:
        await load.wait(20)
    assert load.report().failed == 0, load.report().summary()
    assert int((await rc.haproxy.stat())["api-2"]["stot"]) > before


async def test_changed_host_key_stops_the_upgrade_in_preflight_touching_nothing(
    real_cloud: MakeCloud, tmp_path: Path
) -> None:
    rc = await real_cloud(conductors=1, apis=2, computes=2)
    await rc.hosts.change_host_key("cmp-2")  # "reinstalled": known_hosts has the old key
    files, schema = host_files(rc), tables(rc)
    run = await run_upgrade(rc, tmp_path / "journal.db", rate=10)
    view = run.upgrade.view
    print(f"\nchanged host key: {view.state.label}: {view.reason}")
    assert view.state is UpgradeState.FAILED
    assert view.reason is not None
    assert view.reason.startswith("preflight failed: cmp-2: ")
    assert "host key does not match known_hosts" in view.reason
    assert str(rc.hosts.known_hosts_path) in view.reason
    assert all(not p.hosts for p in view.phases.values())  # no phase touched a host
    for name in rc.hosts.names:  # not one command or SFTP session on any host
        assert rc.hosts.sessions(name) == [], name
    assert "Accepted publickey" not in rc.hosts.log("cmp-2")
    assert host_files(rc) == files
    assert tables(rc) == schema
    assert running_versions(rc) == {"1.0"}
    assert pin_drift(rc.cloud) == {}
    for api in rc.cloud.by_role("api"):
        assert await rc.haproxy.admin_state(api.name) == "ready"
    assert run.report.failed == 0, run.report.summary()


@pytest.mark.timeout(300)
async def test_negative_control_apis_without_drain_fail_requests_through_real_haproxy(
    real_cloud: MakeCloud, tmp_path: Path
) -> None:
    """The same restart without the drain: real HAProxy does not hide it, so "0 failed"
    above is the drain's doing."""
    playbook = yaml.safe_load(resolve_playbook("minicloud").read_text())
    wanted = ("expand-db", "pin-rpc", "upgrade-conductors", "upgrade-apis")
    phases = [dict(p) for p in playbook["phases"] if p["name"] in wanted]
    phases[-1]["drain"] = False
    text = yaml.safe_dump({**playbook, "phases": phases}, sort_keys=False)
    rc = await real_cloud(conductors=1, apis=2, computes=2)
    run = await run_upgrade(rc, tmp_path / "journal.db", playbook=text, rate=30)
    print(f"\nnegative control, APIs without drain: {run.report.summary()}")
    assert run.upgrade.view.state.terminal
    assert run.report.failed > 0, run.report.summary()
    assert pin_drift(rc.cloud) == {}
