"""The headline: minicloud upgraded 1.0 -> 2.0 in the right order under steady API load
loses nothing; the wrong orders (no pin, APIs before conductors, no drain) fail calls.

The procedure is `playbooks/minicloud.yaml` compiled by the real planner against the
cloud's inventory. A small sequential executor plays the engine's part: per batch,
each host is drained through the load balancer's runtime API (the real `Drainer`),
runs its rendered steps as shell commands in its own directory, passes its health
checks and version probe, and is put back. The load generator runs throughout.
"""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from orchestrator import model
from orchestrator.actions.drain import Drainer, tcp_runtime_api
from orchestrator.inventory import parse_inventory_text
from orchestrator.minicloud import ctl
from orchestrator.minicloud.control import run, running_cloud, versions
from orchestrator.minicloud.inventory import LB_NAME, inventory_yaml
from orchestrator.minicloud.layout import Cloud, read_host_config, staged_releases
from orchestrator.minicloud.lb import LoadBalancer
from orchestrator.minicloud.loadgen import LoadGenerator, LoadReport
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import load_playbook
from tests.test_minicloud_lb import NoRemote

RATE = 20.0  # iterations (a create and a read) per second


def compile_minicloud_plan(cloud: Cloud) -> model.Plan:
    # SSH ports are placeholders: this executor runs commands by subprocess
    ssh_ports = {h.name: 20000 + i for i, h in enumerate(cloud.hosts)}
    inventory, inv_doc = parse_inventory_text(
        inventory_yaml(cloud, ssh_ports=ssh_ports, health_passes=1), "minicloud-inventory.yaml"
    )
    playbook, pb_doc = load_playbook("minicloud")
    return compile_plan(inventory, inv_doc, playbook, pb_doc, Options(to_version="2.0"))


async def runtime_api(lb: model.LoadBalancerTarget, command: str) -> str:
    assert lb.address is not None
    return await tcp_runtime_api(lb.address, command)


class Executor:
    def __init__(self, cloud: Cloud, plan: model.Plan, session: aiohttp.ClientSession) -> None:
        self.cloud, self.plan, self.session = cloud, plan, session
        balancers = {lb.name: lb for lb in plan.load_balancers}
        self.drainer = Drainer(NoRemote(), session, balancers, runtime_api, asyncio.sleep)

    def phase(self, name: str) -> model.Phase:
        return next(p for p in self.plan.phases if p.name == name)

    async def run_phases(self, *names: str, drain: bool = True) -> None:
        for name in names:
            phase = self.phase(name)
            for gate in phase.gates:
                await self.gate(gate)
            for batch in phase.batches:
                hosts = (
                    batch.hosts
                    if drain
                    else [dataclasses.replace(h, drains=()) for h in batch.hosts]
                )
                await asyncio.gather(*(self.host(h) for h in hosts))

    async def host(self, plan: model.HostPlan) -> None:
        for drain in plan.drains:
            await self.drainer.drain(plan.host, drain)
        try:
            for step in plan.steps:
                await self.step(plan.host, step)
            if plan.health is not None:
                await self.healthy(plan.health)
            if plan.version is not None:
                assert await self.version(plan.version) == self.plan.to_version
        finally:
            for drain in reversed(plan.drains):
                await self.drainer.undrain(plan.host, drain)

    async def step(self, host: str, step: model.Step) -> None:
        action = step.action
        if isinstance(action, model.ConfigAction):
            path = self.cloud.host(host).directory / action.file
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(path, encoding="utf-8")
            if not parser.has_section(action.section):
                parser.add_section(action.section)
            if action.value is None:
                parser.remove_option(action.section, action.key)
            else:
                parser.set(action.section, action.key, action.value)
            with path.open("w", encoding="utf-8") as f:
                parser.write(f)
            return
        assert isinstance(action, model.RunAction)
        for _ in range(action.repeat_max):
            result = await run(self.cloud, host, action.command, timeout=30)
            if result.exit_status not in action.repeat_while_exit:
                break
            await asyncio.sleep(action.repeat_interval)
        assert result.exit_status in action.ok_exit, result

    async def healthy(self, health: model.Health) -> None:
        passes = 0
        async with asyncio.timeout(health.deadline):
            while passes < health.passes:
                statuses = []
                for check in health.checks:
                    assert isinstance(check, model.HttpCheck)
                    async with self.session.get(check.url) as response:
                        statuses.append(response.status == check.expect_status)
                passes = passes + 1 if all(statuses) else 0
                if passes < health.passes:
                    await asyncio.sleep(health.interval)

    async def version(self, probe: model.VersionProbe) -> str:
        assert probe.http is not None and probe.json_path == "version"
        async with self.session.get(probe.http) as response:
            return str((await response.json())["version"])

    async def gate(self, gate: model.Gate) -> None:
        if gate.kind == "all_at_target":
            found = {host: await self.version(probe) for host, probe in gate.probes}
            assert set(found.values()) == {self.plan.to_version}, found
        else:
            assert gate.host is not None and gate.run is not None
            result = await run(self.cloud, gate.host, gate.run)
            assert result.exit_status == gate.expect_exit, result


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path / "cloud", conductors=2, apis=2, computes=2) as c:
        yield c


@pytest.fixture
async def executor(cloud: Cloud) -> AsyncIterator[Executor]:
    async with aiohttp.ClientSession() as session:
        yield Executor(cloud, compile_minicloud_plan(cloud), session)


async def under_load(
    cloud: Cloud, executor: Executor, *phases: str, drain: bool = True
) -> LoadReport:
    """Run `phases` while the load generator sends traffic through the load balancer."""
    async with (
        LoadBalancer.for_cloud(cloud) as lb,
        LoadGenerator(lb.url, rate=RATE, workers=4, max_duration=60) as load,
    ):
        assert lb.api_address == f"127.0.0.1:{cloud.lb_api_port}"  # what the plan drains
        await load.wait(20)  # warm: the cloud answers before anything changes
        await executor.run_phases(*phases, drain=drain)
        await load.wait(len(load.latencies) + 20)  # and still answers after
    report = load.report()
    print(f"\n{' -> '.join(phases)}: {report.summary()}")
    return report


# fourteen rolling host procedures, each a real process restart: ~20 s on an idle
# machine, more when the machine is busy
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_playbook_order_upgrades_with_zero_failed_requests(
    cloud: Cloud, executor: Executor
) -> None:
    phases = [p.name for p in executor.plan.phases]
    assert phases == [
        "expand-db",
        "pin-rpc",
        "upgrade-conductors",
        "upgrade-apis",
        "upgrade-computes",
        "unpin-rpc",
        "unpin-apis",
        "unpin-computes",
        "migrate-data",
        "contract-db",
    ]
    assert LB_NAME in {lb.name for lb in executor.plan.load_balancers}

    report = await under_load(cloud, executor, *phases)

    assert report.failed == 0, report.examples
    assert report.requests >= 200
    assert set(versions(cloud).values()) == {"2.0"}
    assert len(versions(cloud)) == len(cloud.hosts)
    conn = sqlite3.connect(cloud.db)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(instances)")]
        unplaced = conn.execute(
            "SELECT COUNT(*) FROM instances WHERE id NOT IN (SELECT instance_id FROM placements)"
        ).fetchone()[0]
    finally:
        conn.close()
    assert "host" not in columns  # contracted
    assert unplaced == 0
    status = await run(cloud, "api-1", "minicloud-ctl status --json", check=True)
    assert '"release_running": "2.0"' in status.output
    assert '"pin_configured": null' in status.output


def service_pids(cloud: Cloud) -> dict[str, int | None]:
    pids = {}
    for host in cloud.hosts:
        config = read_host_config(host.directory)
        for service in host.roles:
            pids[f"{service}@{host.name}"] = ctl.running_pid(config, service)
    return pids


async def test_expand_db_stages_2_0_on_one_conductor_and_restarts_nothing(
    cloud: Cloud, executor: Executor
) -> None:
    (batch,) = executor.phase("expand-db").batches
    (expander,) = batch.hosts
    assert expander.host == "ctl-1"
    commands = [s.action.command for s in expander.steps if isinstance(s.action, model.RunAction)]
    assert commands == ["minicloud-ctl stage 2.0", "releases/2.0/bin/minicloud-manage db expand"]
    before = service_pids(cloud)
    assert None not in before.values()

    await executor.run_phases("expand-db")

    assert service_pids(cloud) == before  # not one service restarted
    assert set(versions(cloud).values()) == {"1.0"}
    assert {h.name: staged_releases(h.directory) for h in cloud.hosts} == {
        h.name: ("1.0", "2.0") if h.name == "ctl-1" else ("1.0",) for h in cloud.hosts
    }
    conn = sqlite3.connect(cloud.db)
    try:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'placements'").fetchone()
    finally:
        conn.close()


async def test_no_pin_upgraded_conductors_break_api_calls(cloud: Cloud, executor: Executor) -> None:
    report = await under_load(cloud, executor, "expand-db", "upgrade-conductors")

    assert report.failed > 0
    assert set(report.failures) == {"status 502"}
    assert any("unsupported RPC version 2.0" in e for e in report.examples), report.examples


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_apis_before_conductors_break_api_calls(cloud: Cloud, executor: Executor) -> None:
    report = await under_load(cloud, executor, "expand-db", "pin-rpc", "upgrade-apis")

    assert report.failed > 0
    assert set(report.failures) == {"status 502"}
    assert any("object version 2.0 unknown" in e for e in report.examples), report.examples


async def test_restarting_apis_without_drain_drops_connections(
    cloud: Cloud, executor: Executor
) -> None:
    # pin-rpc changes nothing a 1.0 service does: only the restarts can fail calls
    report = await under_load(cloud, executor, "pin-rpc", drain=False)

    assert report.failed > 0
    assert set(report.failures) <= {"connection", "status 503"}, report.failures
