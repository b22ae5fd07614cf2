"""The engine against real in-process SSH hosts running real shell commands."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import model
from orchestrator.engine.manager import UpgradeManager
from orchestrator.engine.states import HostState, PhaseState, StepState, UpgradeState
from orchestrator.errors import ConflictError, RollbackRefused
from orchestrator.inventory import parse_inventory_text
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import parse_playbook_text
from orchestrator.store.journal import Journal
from orchestrator.transport.ssh import SSHPool
from tests.enginekit import (
    PLAYBOOK,
    host_state,
    inventory_text,
    make_plan,
    open_manager,
    run_to_end,
    seed,
)
from tests.sshhosts import MakeSSHHosts, SSHHosts

PIN = "[upgrade_levels]\napp = 1.0\n"


async def test_full_upgrade_reaches_target_everywhere(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(3)
    seed(hosts)
    plan = make_plan(hosts, batch=[1, 2])
    upgrade_id, state, manager, journal = await run_to_end(plan, tmp_path / "j.db")
    try:
        assert state is UpgradeState.SUCCEEDED
        for name in hosts.names:
            st = host_state(hosts, name)
            assert st["version"] == "2.0"
            assert not st["drained"]
            assert "upgrade_levels" not in st["conf"]  # pinned, then unpinned
            assert "# managed by hand" in st["conf"]  # layout preserved
        first = host_state(hosts, hosts.names[0])
        assert sorted(first["runs"]) == ["contract", "expand", "upgrade"]
        view = manager.get(upgrade_id).view
        assert all(p.state is PhaseState.DONE for p in view.phases.values())
        assert view.irreversible_done == "contract"
        kinds = [e.kind for e in await journal.events(upgrade_id)]
        assert kinds.count("preflight.host") == 3
        assert kinds[-1] == "upgrade.state"
    finally:
        await manager.close()
        await journal.close()


async def test_failed_host_rolls_back_whole_fleet(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(3)
    seed(hosts)
    plan = make_plan(hosts, fail_on="host-2")
    upgrade_id, state, manager, journal = await run_to_end(plan, tmp_path / "j.db")
    try:
        assert state is UpgradeState.ROLLED_BACK
        for name in hosts.names:
            st = host_state(hosts, name)
            assert st["version"] == "1.0", name
            assert not st["drained"], name
            assert "upgrade_levels" not in st["conf"], name  # the pin was undone too
            assert st["markers"] == [], name
        view = manager.get(upgrade_id).view
        assert view.phases["upgrade"].hosts["host-2"].error is not None
        assert "contract" not in view.phases or view.phases["contract"].state is PhaseState.PENDING
    finally:
        await manager.close()
        await journal.close()


async def test_pause_policy_waits_for_the_operator_then_rollback(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    plan = make_plan(hosts, fail_on="host-2", on_failure="pause")
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        await _until(lambda: up.view.state is UpgradeState.PAUSED)
        assert "upgrade" in (up.view.reason or "")
        assert host_state(hosts, "host-1")["version"] == "2.0"  # kept while paused
        assert host_state(hosts, "host-2")["version"] == "1.0"  # the failed host was undone
        await manager.control(up.id, "rollback")
        assert await manager.wait(up.id, timeout=20) is UpgradeState.ROLLED_BACK
        assert host_state(hosts, "host-1")["version"] == "1.0"
        assert "upgrade_levels" not in host_state(hosts, "host-1")["conf"]
    finally:
        await manager.close()
        await journal.close()


async def test_approval_gate_and_refused_rollback_after_point_of_no_return(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    plan = make_plan(hosts, approve=True)
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        await _until(lambda: up.view.state is UpgradeState.WAITING_APPROVAL)
        assert up.view.phases["contract"].state is PhaseState.WAITING_APPROVAL
        assert not (hosts.host_dir("host-1") / "m-contract").exists()
        with pytest.raises(ConflictError):
            await manager.control(up.id, "resume")
        await manager.control(up.id, "approve")
        assert await manager.wait(up.id, timeout=20) is UpgradeState.SUCCEEDED
        with pytest.raises(RollbackRefused, match="contract"):
            await manager.control(up.id, "rollback")
    finally:
        await manager.close()
        await journal.close()


async def test_operator_rollback_while_waiting_for_approval(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    plan = make_plan(hosts, approve=True)
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        await _until(lambda: up.view.state is UpgradeState.WAITING_APPROVAL)
        await manager.control(up.id, "rollback")
        assert await manager.wait(up.id, timeout=20) is UpgradeState.ROLLED_BACK
        for name in hosts.names:
            st = host_state(hosts, name)
            assert (st["version"], st["drained"], st["markers"]) == ("1.0", False, [])
    finally:
        await manager.close()
        await journal.close()


async def test_pause_resume_and_two_stage_abort(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(3)
    seed(hosts)
    plan = make_plan(hosts)
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        await _until(lambda: up.view.phases.get("upgrade") is not None)
        await manager.control(up.id, "pause")
        assert up.view.state is UpgradeState.PAUSED
        seen = up.view.last_seq
        await asyncio.sleep(0.5)
        # paused between steps: steps that were running may finish (and a host
        # whose steps are done is health-checked and undrained), none starts
        started = [
            e.data["step"]
            for e in await journal.events(up.id, after=seen)
            if e.kind == "step" and e.data["state"] == "running"
        ]
        assert started == []
        await manager.control(up.id, "resume")
        await manager.control(up.id, "abort")
        state = await manager.wait(up.id, timeout=20)
        assert state is UpgradeState.ABORTED
        for name in hosts.names:
            assert not host_state(hosts, name)["drained"]
        with pytest.raises(ConflictError):
            await manager.control(up.id, "pause")
    finally:
        await manager.close()
        await journal.close()


async def test_preflight_fails_on_unknown_version_and_touches_nothing(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    (hosts.host_dir("host-2") / "version").write_text("0.9\n")
    plan = make_plan(hosts)
    upgrade_id, state, manager, journal = await run_to_end(plan, tmp_path / "j.db")
    try:
        assert state is UpgradeState.FAILED
        view = manager.get(upgrade_id).view
        assert "host-2" in (view.reason or "") and "0.9" in (view.reason or "")
        assert not (hosts.host_dir("host-1") / "m-expand").exists()
    finally:
        await manager.close()
        await journal.close()


async def test_rerun_skips_hosts_already_at_target(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    (hosts.host_dir("host-1") / "version").write_text("2.0\n")
    (hosts.host_dir("host-1") / "m-upgrade").mkdir()
    plan = make_plan(hosts)
    upgrade_id, state, manager, journal = await run_to_end(plan, tmp_path / "j.db")
    try:
        assert state is UpgradeState.SUCCEEDED
        view = manager.get(upgrade_id).view
        assert view.phases["upgrade"].hosts["host-1"].state is HostState.SKIPPED
        assert view.phases["upgrade"].hosts["host-2"].state is HostState.DONE
    finally:
        await manager.close()
        await journal.close()


async def _until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll a condition on the engine's live view (it has no event to await)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling a plain attribute
            await asyncio.sleep(0.02)


SLOW_PLAYBOOK = """
name: faults
phases:
  - name: upgrade
    rolling: app
    steps:
      - run: "echo {{{{ to_version }}}} > version"
        undo: "echo {{{{ from_version }}}} > version"
        idempotent: true
      - run: "{command}"
        timeout: {timeout}
        idempotent: true
"""


async def test_a_dropped_connection_is_followed_to_the_commands_real_end(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    """Issue 10, defect 6, at the engine: on main the drop failed the step
    ("may have run") and the undo started while the command still ran. Now
    the pool reconnects, follows the supervised run, and the step ends with
    the command's own exit status; it ran once and nothing was undone."""
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    command = "touch started; while [ ! -f go ]; do sleep 0.02; done; echo once >> ran"
    text = SLOW_PLAYBOOK.format(command=command, timeout=30)
    plan = make_plan(hosts, playbook=text.replace("{", "{{").replace("}", "}}"))
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        first = hosts.host_dir("host-1")
        await _until((first / "started").exists)
        hosts.drop("host-1")
        await _until(lambda: hosts.accepted("host-1") >= 2)  # it reconnected
        (first / "go").touch()
        (hosts.host_dir("host-2") / "go").touch()
        assert await manager.wait(up.id, timeout=20) is UpgradeState.SUCCEEDED, up.view.reason
        step = up.view.phases["upgrade"].hosts["host-1"].steps["upgrade/host-1/2"]
        assert (step.state, step.exit, step.attempts) == (StepState.DONE, 0, 1)
        assert (first / "ran").read_text() == "once\n"
        kinds = [
            (e.data["step"], e.data["state"])
            for e in await journal.events(up.id)
            if e.kind == "step" and e.data["host"] == "host-1"
        ]
        assert ("upgrade/host-1/2", "undoing") not in kinds
        # the end state removed the run records from the hosts
        for name in hosts.names:
            assert not list((hosts.host_dir(name) / ".orchestrator" / "runs").iterdir())
    finally:
        await manager.close()
        await journal.close()


async def test_command_hanging_past_its_timeout_fails_the_step(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(1)
    seed(hosts)
    text = SLOW_PLAYBOOK.format(command="sleep 30", timeout="300ms")
    plan = make_plan(hosts, playbook=text.replace("{", "{{").replace("}", "}}"))
    upgrade_id, state, manager, journal = await run_to_end(plan, tmp_path / "j.db", timeout=20)
    try:
        assert state is UpgradeState.ROLLED_BACK
        step = manager.get(upgrade_id).view.phases["upgrade"].hosts["host-1"]
        assert "timed out" in (step.error or "")
        assert host_state(hosts, "host-1")["version"] == "1.0"
    finally:
        await manager.close()
        await journal.close()


async def test_host_refusing_connections_fails_preflight(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    plan = make_plan(hosts)
    hosts.refuse("host-2")

    async def no_wait(_: float) -> None:
        return None

    journal = await Journal.open(tmp_path / "j.db")
    manager = UpgradeManager(
        journal, remote_factory=lambda p, s: SSHPool(p.hosts, s, policy_sleep=no_wait)
    )
    await manager.start()
    try:
        up, _ = await manager.submit(plan)
        assert await manager.wait(up.id, timeout=20) is UpgradeState.FAILED
        assert "host-2" in (up.view.reason or "")
        assert up.view.preflight["host-1"]["status"] == "ready"
        assert not (hosts.host_dir("host-1") / "m-expand").exists()
    finally:
        await manager.close()
        await journal.close()


async def test_changed_host_key_stops_preflight_and_touches_nothing(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    plan = make_plan(hosts)
    hosts.change_host_key("host-1")
    upgrade_id, state, manager, journal = await run_to_end(plan, tmp_path / "j.db")
    try:
        assert state is UpgradeState.FAILED
        reason = manager.get(upgrade_id).view.reason or ""
        assert "host-1" in reason and "known_hosts" in reason
        assert hosts.commands("host-2") == [] or all(
            "mkdir" not in c for c in hosts.commands("host-2")
        )
    finally:
        await manager.close()
        await journal.close()


async def test_preflight_bounds_the_handshakes_in_flight(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Preflight reaches every host, but not all at once: a burst of handshakes
    would stall the daemon's event loop (its status API) for its whole length."""
    hosts = await make_ssh_hosts(6)
    seed(hosts)
    monkeypatch.setattr("orchestrator.engine.preflight.PREFLIGHT_CONCURRENCY", 2)
    in_flight, most = 0, 0
    connect = SSHPool.connect

    async def counting_connect(self: SSHPool, host: str) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.05)  # let the others pile up if they may
            await connect(self, host)
        finally:
            in_flight -= 1

    monkeypatch.setattr(SSHPool, "connect", counting_connect)
    upgrade_id, state, manager, journal = await run_to_end(make_plan(hosts), tmp_path / "j.db")
    try:
        assert state is UpgradeState.SUCCEEDED
        assert set(manager.get(upgrade_id).view.preflight) == set(hosts.names)
        assert most == 2
    finally:
        await manager.close()
        await journal.close()


LAST_STEP_PLAYBOOK = """
name: last-step
on_failure: {on_failure}
phases:
  - name: upgrade
    rolling: app
    steps:
      - run: "touch started; until [ -f go ]; do sleep .05; done; echo {{{{ to_version }}}}>version"
        undo: "echo {{{{ from_version }}}} > version"
        idempotent: true
"""


async def test_abort_during_the_last_step_of_the_last_batch_ends_in_a_true_state(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    """Fails on the code before it: with no checkpoint left after the abort, the
    run tried ABORTING -> SUCCEEDED and ended 'failed: internal error:
    InvalidTransition'. Every step had finished, so the upgrade did succeed."""
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    (hosts.host_dir("host-1") / "go").touch()
    plan = make_plan(hosts, playbook=LAST_STEP_PLAYBOOK)
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)
        await _until((hosts.host_dir("host-2") / "started").exists)
        await manager.control(up.id, "abort")
        assert up.view.state is UpgradeState.ABORTING
        (hosts.host_dir("host-2") / "go").touch()
        state = await manager.wait(up.id, timeout=20)
        assert state is UpgradeState.SUCCEEDED, up.view.reason
        assert "abort" in (up.view.reason or ""), up.view.reason
        for name in hosts.names:
            st = host_state(hosts, name)
            assert (st["version"], st["drained"]) == ("2.0", False), name
    finally:
        await manager.close()
        await journal.close()


# the same step without 'idempotent': after a crash only the operator can tell
UNCHECKED_PLAYBOOK = LAST_STEP_PLAYBOOK.replace("        idempotent: true\n", "")


async def test_one_resume_after_verifying_a_step_by_hand_even_across_a_restart(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    """Fails on the code before it: a daemon restarted while the upgrade waited
    for a step to be verified by hand paused again after the operator's resume,
    asking for the same verification twice."""
    hosts = await make_ssh_hosts(1)
    seed(hosts)
    plan = make_plan(hosts, playbook=UNCHECKED_PLAYBOOK)
    path = tmp_path / "j.db"
    journal, manager = await open_manager(path)
    up, _ = await manager.submit(plan)
    await _until((hosts.host_dir("host-1") / "started").exists)
    # the daemon is stopped with two signals: the step in flight is cancelled
    graceful = asyncio.create_task(manager.stop())
    await _until(lambda: up.engine is not None and up.engine._suspend)
    await manager.stop(cancel=True)
    await graceful
    await manager.close()
    await journal.close()

    # the next daemon cannot tell whether the step ran: it asks the operator
    journal, manager = await open_manager(path)
    up = manager.get(up.id)
    await _until(lambda: up.view.state is UpgradeState.PAUSED)
    assert "verify it by hand" in (up.view.reason or "")
    await manager.close()  # and is restarted before the operator answers
    await journal.close()

    journal, manager = await open_manager(path)
    try:
        up = manager.get(up.id)
        assert up.view.state is UpgradeState.PAUSED
        (hosts.host_dir("host-1") / "go").touch()
        await manager.control(up.id, "resume")  # verified: once is enough
        state = await manager.wait(up.id, timeout=20)
        assert state is UpgradeState.SUCCEEDED, up.view.reason
        assert host_state(hosts, "host-1")["version"] == "2.0"
        resumes = [
            e
            for e in await journal.events(up.id)
            if e.kind == "control" and e.data["action"] == "resume"
        ]
        assert len(resumes) == 1
    finally:
        await manager.close()
        await journal.close()


def _renamed_plan(hosts: SSHHosts) -> model.Plan:
    """The same machines under another inventory name and other host names."""
    data = yaml.safe_load(inventory_text(hosts))
    data["name"] = "the-same-cloud-renamed"
    data["hosts"] = {f"node-{n}": spec for n, spec in enumerate(data["hosts"].values())}
    inv, inv_doc = parse_inventory_text(yaml.safe_dump(data), "renamed.yaml")
    text = PLAYBOOK.format(
        on_failure="rollback", batch="1", max_failures=0, fail_cmd="", approve="true"
    )
    pb, pb_doc = parse_playbook_text(text, "playbook.yaml")
    return compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2.0"))


async def test_a_second_upgrade_of_the_same_hosts_is_refused_whatever_their_names(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    """Fails on the code before it: "one active upgrade per inventory" was keyed
    on the inventory's name, so the same hosts renamed were upgraded twice at once."""
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    path = tmp_path / "j.db"
    journal, manager = await open_manager(path)
    try:
        first, _ = await manager.submit(make_plan(hosts, approve=True))
        await _until(lambda: first.view.state is UpgradeState.WAITING_APPROVAL)
        held = rf"host node-\d \(127\.0\.0\.1:\d+\) is held by upgrade {first.id}"
        with pytest.raises(ConflictError, match=held):
            await manager.submit(_renamed_plan(hosts))
    finally:
        await manager.close()
        await journal.close()

    # the leases are in the journal: a restarted daemon still refuses
    journal, manager = await open_manager(path)
    try:
        with pytest.raises(ConflictError, match=f"held by upgrade {first.id}"):
            await manager.submit(_renamed_plan(hosts))
        await manager.control(first.id, "rollback")
        assert await manager.wait(first.id, timeout=20) is UpgradeState.ROLLED_BACK
        assert await journal.leases() == {}, "an end state releases every host"
        second, _ = await manager.submit(_renamed_plan(hosts))
        await _until(lambda: second.view.state is UpgradeState.WAITING_APPROVAL)
        assert {holder for holder, _ in (await journal.leases()).values()} == {second.id}
        await manager.control(second.id, "rollback")
        assert await manager.wait(second.id, timeout=20) is UpgradeState.ROLLED_BACK
    finally:
        await manager.close()
        await journal.close()


# --- one commit between two commands -----------------------------------------

TWO_STEPS = """
name: two-steps
phases:
  - name: roll
    rolling: app
    batch: 1
    health: false
    verify_version: false
    steps:
      - {{run: "i=0; while [ ! -e release ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i+1)); done",
         idempotent: true}}
      - {{run: "echo two >> runs.log", idempotent: true}}
"""


async def test_a_steps_end_and_the_next_steps_start_are_one_commit(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two commands on a host the journal used to commit twice (the
    end, then the start): one commit's round trip is gone (issue 14)."""
    hosts = await make_ssh_hosts(2)
    seed(hosts)
    for name in hosts.names:
        (hosts.host_dir(name) / "release").touch()
    plan = make_plan(hosts, playbook=TWO_STEPS, drain=False)
    journal, manager = await open_manager(tmp_path / "j.db")
    commits: list[list[tuple[str, str, str]]] = []  # per call: (host, step, state)
    append_all = journal.append_all

    async def recording(upgrade_id: str, items: Any, *, release: bool = False) -> list[Any]:
        commits.append([(d["host"], d["step"], d["state"]) for kind, d in items if kind == "step"])
        return await append_all(upgrade_id, items, release=release)

    monkeypatch.setattr(journal, "append_all", recording)
    try:
        up, _ = await manager.submit(plan)
        assert await manager.wait(up.id, timeout=30) is UpgradeState.SUCCEEDED
        ids = {hp.host: [s.id for s in hp.steps] for b in plan.phases[0].batches for hp in b.hosts}
        steps = [e.data for e in await journal.events(up.id) if e.kind == "step"]
        for name in hosts.names:
            first, second = ids[name]
            assert [(name, first, "done"), (name, second, "running")] in commits
            # in the journal the end still comes before the start
            mine = [(d["step"], d["state"]) for d in steps if d["host"] == name]
            assert mine == [
                (first, "running"),
                (first, "done"),
                (second, "running"),
                (second, "done"),
            ]
    finally:
        await manager.close()
        await journal.close()


async def test_a_pause_between_steps_journals_the_last_steps_end_before_it_waits(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    """A step's end waits for the host's next event; when that is a pause, it
    is journaled alone: the status shows the step done while the upgrade waits."""
    hosts = await make_ssh_hosts(1)
    seed(hosts)
    plan = make_plan(hosts, playbook=TWO_STEPS, drain=False)
    first, second = (step.id for step in plan.phases[0].batches[0].hosts[0].steps)
    journal, manager = await open_manager(tmp_path / "j.db")
    try:
        up, _ = await manager.submit(plan)

        def step(name: str) -> StepState | None:
            phase = up.view.phases.get("roll")
            host = None if phase is None else phase.hosts.get(hosts.names[0])
            view = None if host is None else host.steps.get(name)
            return None if view is None else view.state

        await _until(lambda: step(first) is StepState.RUNNING)
        await manager.control(up.id, "pause")
        (hosts.host_dir(hosts.names[0]) / "release").touch()
        await _until(lambda: step(first) is StepState.DONE)
        journaled = [e.data for e in await journal.events(up.id) if e.kind == "step"]
        assert (journaled[-1]["step"], journaled[-1]["state"]) == (first, "done")
        assert up.view.state is UpgradeState.PAUSED and step(second) is None
        await manager.control(up.id, "resume")
        assert await manager.wait(up.id, timeout=30) is UpgradeState.SUCCEEDED
        assert host_state(hosts, hosts.names[0])["runs"] == ["two"]
    finally:
        await manager.close()
        await journal.close()
