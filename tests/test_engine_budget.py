"""The failure budget (issue 10, defect 4): a host that fails within
`max_failures` is rolled back and kept out of service; the next gate, the
point of no return and the end wait for the operator to retry or skip it.

On main a tolerated host made the next all_at_target gate fail and the whole
fleet roll back; under `on_failure: pause` it could not be retried; with no
gate the upgrade ended `succeeded` with the host left at the old release."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import events
from orchestrator.engine.manager import Upgrade
from orchestrator.engine.states import HostState, UpgradeState
from orchestrator.engine.status import status_document
from orchestrator.errors import ConflictError
from tests.enginekit import PLAYBOOK, host_state, make_plan, open_manager, seed
from tests.sshhosts import MakeSSHHosts


async def _until(cond: Callable[[], bool], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 - polling the engine's live view
            await asyncio.sleep(0.02)


def _paused_on(up: Upgrade, what: str) -> bool:
    return up.view.state is UpgradeState.PAUSED and (up.view.reason or "").startswith(what)


async def test_tolerated_host_holds_the_gate_until_skipped(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(3)
    seed(hosts)
    plan = make_plan(hosts, fail_on="host-2", max_failures=1)
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        await _until(lambda: _paused_on(up, "phase unpin waits"))
        reason = up.view.reason or ""
        assert "1 host(s) failed within the failure budget" in reason
        assert "host-2 in phase upgrade" in reason and "skip HOST" in reason
        # rolled back, and out of service while it waits
        st = host_state(hosts, "host-2")
        assert (st["version"], st["drained"], "upgrade" in st["runs"]) == ("1.0", True, False)
        assert {host_state(hosts, h)["version"] for h in ("host-1", "host-3")} == {"2.0"}
        journaled = await journal.events(up.id)
        assert not [e for e in journaled if e.kind == "gate"]  # the gate was never asked
        doc = status_document(up.id, up.plan, up.view, up.digest)
        upgrade = next(p for p in doc["phases"] if p["name"] == "upgrade")
        by_host = {h["host"]: h for b in upgrade["batches"] for h in b["hosts"]}
        assert (by_host["host-2"]["state"], by_host["host-2"]["tolerated"]) == ("failed", True)
        assert by_host["host-1"]["tolerated"] is False

        # a host that did not fail can be neither retried nor skipped
        with pytest.raises(ConflictError, match="host-1 has not failed"):
            await manager.control_host(up.id, "skip", "host-1", by="alice")
        await manager.control_host(up.id, "skip", "host-2", by="alice")
        await manager.control(up.id, "resume", by="alice")
        assert await manager.wait(up.id, timeout=20) is UpgradeState.SUCCEEDED
        assert "1 host(s) skipped by the operator" in (up.view.reason or "")
        assert "host-2 (failed in upgrade)" in (up.view.reason or "")
        assert up.view.phases["unpin"].hosts["host-2"].state is HostState.SKIPPED
        assert host_state(hosts, "host-2")["version"] == "1.0"
        assert host_state(hosts, "host-2")["drained"]  # left out of service
        assert "upgrade_levels" in host_state(hosts, "host-2")["conf"]  # never unpinned
        for name in ("host-1", "host-3"):
            assert "upgrade_levels" not in host_state(hosts, name)["conf"]
        controls = [events.parse(e.kind, e.data) for e in await journal.events(up.id)]
        assert events.Control(action="skip", host="host-2", phase="upgrade", by="alice") in controls
        assert events.Control(action="resume", by="alice") in controls
        doc = status_document(up.id, up.plan, up.view, up.digest)
        assert doc["skipped_hosts"] == {"host-2": "upgrade"}
    finally:
        await manager.close()
        await journal.close()


@pytest.mark.parametrize("on_failure", ["pause", "rollback"])
async def test_tolerated_host_retried_after_the_fault_is_fixed(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path, on_failure: str
) -> None:
    hosts = await make_ssh_hosts(3)
    seed(hosts)
    (hosts.host_dir("host-2") / "broken").touch()
    plan = make_plan(hosts, fail_while="broken", max_failures=1, on_failure=on_failure)
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        await _until(lambda: _paused_on(up, "phase unpin waits"))
        (hosts.host_dir("host-2") / "broken").unlink()
        await manager.control_host(up.id, "retry", "host-2", by="bob")
        await manager.control(up.id, "resume", by="bob")
        assert await manager.wait(up.id, timeout=20) is UpgradeState.SUCCEEDED, up.view.reason
        assert up.view.skipped == {}
        for name in hosts.names:
            st = host_state(hosts, name)
            assert (st["version"], st["drained"]) == ("2.0", False), name
            assert "upgrade_levels" not in st["conf"], name
        assert host_state(hosts, "host-2")["runs"].count("upgrade") == 1
        retries = [
            typed
            for e in await journal.events(up.id)
            if isinstance(typed := events.parse(e.kind, e.data), events.Control)
            and typed.action == "retry"
        ]
        assert retries == [events.Control(action="retry", host="host-2", phase="upgrade", by="bob")]
        with pytest.raises(ConflictError, match="needs a paused upgrade; this one is succeeded"):
            await manager.control_host(up.id, "retry", "host-2")
    finally:
        await manager.close()
        await journal.close()


NO_GATE = PLAYBOOK.split("  - name: unpin")[0]


async def test_without_a_gate_the_end_waits_and_rollback_restores_service(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(3)
    seed(hosts)
    plan = make_plan(hosts, fail_on="host-2", max_failures=1, playbook=NO_GATE)
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        await _until(lambda: _paused_on(up, "the end waits"))
        assert not up.view.state.terminal  # on main: succeeded, exit 0, host-2 at 1.0
        await manager.control(up.id, "rollback")
        assert await manager.wait(up.id, timeout=20) is UpgradeState.ROLLED_BACK
        for name in hosts.names:
            st = host_state(hosts, name)
            assert (st["version"], st["drained"]) == ("1.0", False), name
    finally:
        await manager.close()
        await journal.close()
