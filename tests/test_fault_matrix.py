"""The fault matrix (issue 10): a minicloud upgrade whose compute cmp-2 never
gets healthy at 2.0, with the daemon SIGKILLed right after journal event k
and started again, for k sampled across the whole run. Every run must end
the way an uninterrupted one does: rolled back, every service at 1.0 and
running the pin its config has, no API left out of the load balancer, and
no service process beyond the one each host's pid file names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from orchestrator import model
from orchestrator.minicloud import ctl
from orchestrator.minicloud.control import pin_drift, versions
from orchestrator.minicloud.embedded import EmbeddedCloud, embedded_cloud
from orchestrator.minicloud.layout import read_host_config
from orchestrator.pipeline import build_text
from orchestrator.plan import Options
from orchestrator.playbook import resolve_playbook
from tests.test_engine_crash import _child

pytestmark = [pytest.mark.slow]
# kills per matrix; FAULT_SAMPLES=0 kills at every event (about 200 runs)
SAMPLES = int(os.environ.get("FAULT_SAMPLES", "6"))


def _service_processes(ec: EmbeddedCloud) -> dict[str, list[int]]:
    """host directory -> pids of minicloud service processes working there."""
    found: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if ctl.MODULE.encode() in cmdline:
            for host in ec.cloud.hosts:
                if cwd == str(host.directory):
                    found.setdefault(host.name, []).append(int(proc.name))
    return found


async def _wait_for_heartbeats(ec: EmbeddedCloud, deadline: float = 20.0) -> None:
    """Every service is alive in the services table (a restart has reported)."""
    expected = {(service, h.name) for h in ec.cloud.hosts for service in h.roles}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(deadline):
            while set(versions(ec.cloud)) != expected:  # noqa: ASYNC110 - a database
                await asyncio.sleep(0.1)


async def _assert_true_end(ec: EmbeddedCloud, k: int | None) -> None:
    await _wait_for_heartbeats(ec)
    assert set(versions(ec.cloud).values()) == {"1.0"}, (k, versions(ec.cloud))
    assert {read_host_config(h.directory).pin for h in ec.cloud.hosts} == {None}, k
    assert pin_drift(ec.cloud) == {}, (k, pin_drift(ec.cloud))
    assert {s.name: s.state for s in ec.lb.servers.values()} == {
        s.name: "ready" for s in ec.lb.servers.values()
    }, k
    expected = {
        h.name: sorted(
            pid
            for service in h.roles
            if (pid := ctl.running_pid(read_host_config(h.directory), service)) is not None
        )
        for h in ec.cloud.hosts
    }
    assert all(len(pids) == len(h.roles) for h in ec.cloud.hosts for pids in [expected[h.name]])
    assert {h: sorted(p) for h, p in _service_processes(ec).items()} == expected, k


@pytest.mark.timeout(600)
async def test_sigkill_at_every_kth_event_of_a_failing_upgrade_still_rolls_back(
    tmp_path: Path,
) -> None:
    faults = {"cmp-2": ["unhealthy-2.0"]}
    cloud = embedded_cloud(tmp_path / "cloud", computes=3, faults=faults, health_deadline="3s")
    async with cloud as ec:
        text = resolve_playbook("minicloud").read_text()
        plan = build_text(ec.inventory_text, text, Options(to_version="2.0"))
        plan_path = tmp_path / "plan.json"
        plan_path.write_text(model.to_json(plan))

        code, out = await _child(tmp_path / "reference.db", plan_path, None)
        assert code == 0 and out.startswith("rolled_back"), out
        await _assert_true_end(ec, None)
        with sqlite3.connect(tmp_path / "reference.db") as db:
            (total,) = db.execute("SELECT count(*) FROM events").fetchone()

        indices = list(range(1, total + 1))
        if SAMPLES and total > SAMPLES:
            step = (total - 2) / (SAMPLES - 1)
            indices = sorted({2 + round(i * step) for i in range(SAMPLES)})
        for k in indices:
            journal = tmp_path / f"crash-{k}.db"
            code, out = await _child(journal, plan_path, k)
            assert code == -9, f"k={k}: the daemon was not killed: {out}"
            code, out = await _child(journal, plan_path, None)
            assert code == 0 and out.startswith("rolled_back"), f"k={k} of {total}: {out}"
            await _assert_true_end(ec, k)
