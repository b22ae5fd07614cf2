"""What preflight reads before anything changes: each host's version probe,
and whether the upgrade has anything left to do at all.

At submit, before the journal creates the upgrade, `done_by_earlier` asks
the journal whether the point of no return is already behind these hosts,
and only then `nothing_to_do` asks their version probes: a cloud already
where the plan leads is answered 409 instead of being run (a run would pin
the fleet back to the old RPC version, fail the contract gate, and roll
back). Without a journal record, `nothing_left` decides after preflight,
from the probes and the irreversible phase's step `check`s. All only read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from orchestrator import events, model
from orchestrator.actions.health import Checker
from orchestrator.actions.remote import Remote
from orchestrator.engine.states import PhaseState
from orchestrator.engine.view import UpgradeView
from orchestrator.errors import TransportError

# SSH handshakes preflight runs at once: all of them together would stall the
# event loop (status requests, other upgrades) for as long as the burst lasts
PREFLIGHT_CONCURRENCY = 64


def version_probes(plan: model.Plan) -> dict[str, model.VersionProbe]:
    """Host -> the probe preflight asks it: its own phase's, else a gate's."""
    probes: dict[str, model.VersionProbe] = {}
    for phase in plan.phases:
        for batch in phase.batches:
            for hp in batch.hosts:
                if hp.version is not None:
                    probes.setdefault(hp.host, hp.version)
        for gate in phase.gates:
            for host, probe in gate.probes:
                probes.setdefault(host, probe)
    return probes


@dataclass(frozen=True, slots=True)
class Earlier:
    """An upgrade the journal knows, as `nothing_to_do` weighs it."""

    id: str
    plan: model.Plan
    view: UpgradeView


def _endpoints_of(plan: model.Plan, hosts: Iterable[str]) -> frozenset[str]:
    by_name = {name: endpoint for endpoint, name in plan.endpoints().items()}
    return frozenset(by_name[h] for h in hosts if h in by_name)


def _phase_hosts(phase: model.Phase) -> list[model.HostPlan]:
    return [hp for batch in phase.batches for hp in batch.hosts]


def done_by_earlier(plan: model.Plan, earlier: Iterable[Earlier]) -> str | None:
    """An earlier upgrade to the same release finished the plan's irreversible
    phase on the same hosts: the journal alone answers, no host is asked."""
    phase = plan.irreversible_phase()
    if phase is None:
        return None
    mine = _endpoints_of(plan, (hp.host for hp in _phase_hosts(phase)))
    for other in earlier:
        if other.plan.to_version != plan.to_version:
            continue
        theirs = other.plan.irreversible_phase()
        if theirs is None or theirs.name != phase.name:
            continue
        pview = other.view.phases.get(phase.name)
        if pview is None or pview.state is not PhaseState.DONE:
            continue
        if mine and mine <= _endpoints_of(other.plan, (hp.host for hp in _phase_hosts(theirs))):
            return f"upgrade {other.id} did it"
    return None


async def _done_by_checks(remote: Remote, phase: model.Phase) -> str | None:
    """Every step of the phase declares a `check` and every check passes."""
    runs = [(hp.host, step) for hp in _phase_hosts(phase) for step in hp.steps]
    if not runs or any(step.check is None for _, step in runs):
        return None
    for host, step in runs:
        assert step.check is not None
        result = await remote.run(host, step.check, become=step.become)
        if result.exit_status != 0:
            return None
    return "its steps' checks pass"


async def nothing_to_do(plan: model.Plan, checker: Checker, why: str) -> str | None:
    """At submit, once `done_by_earlier` said `why` the point of no return is
    behind: the 409's message if every host also reports the target, else None."""
    phase = plan.irreversible_phase()
    probes = version_probes(plan)
    worked = _worked(plan)
    if phase is None or not worked or any(h not in probes for h in worked):
        return None  # a host without a probe could be anywhere
    handshakes = asyncio.Semaphore(PREFLIGHT_CONCURRENCY)

    async def at_target(host: str) -> bool:
        async with handshakes:
            try:
                seen = await checker.version(host, probes[host])
            except TransportError:
                return False
        return seen is not None and probes[host].reports(seen, plan.to_version)

    if not all(await asyncio.gather(*(at_target(h) for h in worked))):
        return None
    return _nothing(plan, phase, len(worked), why)


async def nothing_left(plan: model.Plan, view: UpgradeView, remote: Remote) -> str | None:
    """After preflight, with no journal to tell: every host reported the target
    and the irreversible phase's own step checks say it is done."""
    phase = plan.irreversible_phase()
    worked = _worked(plan)
    if phase is None or not worked:
        return None
    if any(view.preflight.get(h, {}).get("status") != "at_target" for h in worked):
        return None
    try:
        why = await _done_by_checks(remote, phase)
    except TransportError:
        return None
    return None if why is None else _nothing(plan, phase, len(worked), why)


def _worked(plan: model.Plan) -> list[str]:
    return sorted({hp.host for p in plan.phases for hp in _phase_hosts(p)})


def _nothing(plan: model.Plan, phase: model.Phase, hosts: int, why: str) -> str:
    return (
        f"nothing to do: all {hosts} hosts report {plan.to_version} and phase "
        f"{phase.name}, the point of no return, is already done ({why})"
    )


class Probing(Protocol):
    """What preflight needs from the engine."""

    plan: model.Plan
    view: UpgradeView
    remote: Remote
    checker: Checker

    async def record(self, event: events.JournalEvent) -> None: ...


async def probe_hosts(engine: Probing) -> list[str]:
    """Connect to every host and ask its version probe, journaling each
    answer (ready, at_target, error); a host already answered is not asked
    again. Returns the problems that fail preflight."""
    plan = engine.plan
    probes = version_probes(plan)
    problems: list[str] = []
    handshakes = asyncio.Semaphore(PREFLIGHT_CONCURRENCY)

    async def one(host: model.HostTarget) -> None:
        if host.name in engine.view.preflight:
            return
        try:
            async with handshakes:
                await engine.remote.connect(host.name)
        except TransportError as exc:
            problems.append(f"{host.name}: {exc.reason}")
            await engine.record(
                events.PreflightHost(host=host.name, status="error", error=exc.reason)
            )
            return
        probe = probes.get(host.name)
        version = None if probe is None else await engine.checker.version(host.name, probe)
        if probe is None or version is None or probe.reports(version, plan.from_version):
            status = "ready"
        elif probe.reports(version, plan.to_version):
            status = "at_target"
        else:
            status = "error"
            problems.append(
                f"{host.name}: reports version {probe.describe(version)}, neither "
                f"{plan.from_version} nor {plan.to_version}"
            )
        await engine.record(events.PreflightHost(host=host.name, status=status, version=version))

    async with asyncio.TaskGroup() as group:
        for target in plan.hosts:
            group.create_task(one(target))
    return problems
