"""The status document of an upgrade: plan structure merged with derived state.

One set of functions builds it for the HTTP API, the CLI and the demo, so
they all show the same thing: each phase, batch, host and step with its
state, timestamps, last output lines and error; progress counts; what comes
next. `status_document` builds it whole; `orchestrator.engine.livestatus`
keeps the same document encoded and rebuilds only the parts events changed.
Both are made of the parts below (`host_row`, `batch_part`, `phase_part`,
`document_part`), so the two cannot drift apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from orchestrator import model
from orchestrator.actions.health import HealthProgress
from orchestrator.engine.eta import BatchClock, History, critical_path
from orchestrator.engine.states import HostState, PhaseState, StepState, UpgradeState
from orchestrator.engine.view import HostView, PhaseView, UpgradeView

FINISHED_HOST = {HostState.DONE, HostState.SKIPPED, HostState.FAILED, HostState.ROLLED_BACK}
_FINISHED_VALUES = tuple(sorted(s.value for s in FINISHED_HOST))
# phases whose failed hosts count as tolerated (within the budget, not rolled back)
_LIVE = (PhaseState.RUNNING, PhaseState.DONE)


def host_row(
    hp: model.HostPlan, view: HostView | None, live: bool, health: HealthProgress | None
) -> dict[str, Any]:
    """One host in one batch; `live`: its phase runs or is done."""
    steps = []
    for step in hp.steps:
        sv = view.steps.get(step.id) if view else None
        steps.append(
            {
                "id": step.id,
                "name": step.name,
                "state": (sv.state if sv else StepState.PENDING).value,
                "started_at": sv.started_at if sv else None,
                "finished_at": sv.finished_at if sv else None,
                "exit": sv.exit if sv else None,
                "output": sv.output if sv else "",
                "error": sv.error if sv else None,
                "attempts": sv.attempts if sv else 0,
            }
        )
    return {
        "host": hp.host,
        "roles": list(hp.roles),
        "state": (view.state if view else HostState.PENDING).value,
        "drained": bool(view and view.drained),
        # failed within the phase's budget: back at the old release, out of
        # service, holding the next gate until retried or skipped
        "tolerated": bool(live and view and view.state is HostState.FAILED),
        "error": view.error if view else None,
        "started_at": view.started_at if view else None,
        "finished_at": view.finished_at if view else None,
        "health": health.to_data() if health is not None else None,
        "steps": steps,
    }


def is_live(pv: PhaseView | None) -> bool:
    """A failed host of this phase is tolerated (the phase runs or is done)."""
    return pv is not None and pv.state in _LIVE


def steps_done(row: Mapping[str, Any]) -> int:
    return sum(1 for s in row["steps"] if s["state"] == "done")


def finished(counts: Mapping[str, int]) -> int:
    """How many of the hosts counted by state are through with the phase."""
    return sum(counts.get(state, 0) for state in _FINISHED_VALUES)


def batch_part(
    batch: model.Batch, hosts: list[dict[str, Any]], counts: dict[str, int]
) -> dict[str, Any]:
    return {
        "index": batch.index,
        "zone": batch.zone,
        "canary": batch.canary,
        "hosts": hosts,
        "counts": counts,
    }


def phase_part(
    phase: model.Phase, pv: PhaseView | None, hosts_finished: int, batches: list[Any]
) -> dict[str, Any]:
    return {
        "name": phase.name,
        "kind": phase.kind,
        "roles": list(phase.roles),
        "state": (pv.state if pv else PhaseState.PENDING).value,
        "reason": pv.reason if pv else None,
        "started_at": pv.started_at if pv else None,
        "finished_at": pv.finished_at if pv else None,
        "irreversible": phase.irreversible,
        "approve": phase.approve,
        "hosts_total": phase.host_count,
        "hosts_finished": hosts_finished,
        "batches": batches,
    }


def next_action(plan: model.Plan, view: UpgradeView) -> str:
    state = view.state
    if state is UpgradeState.SUCCEEDED:
        return "nothing: every phase is done"
    if state is UpgradeState.ROLLED_BACK:
        return "nothing: the upgrade was rolled back"
    if state is UpgradeState.WAITING_APPROVAL:
        return f"approve to continue ({view.reason})"
    if state is UpgradeState.PAUSED:
        return f"resume, abort or rollback ({view.reason})"
    if state in (UpgradeState.FAILED, UpgradeState.ABORTED):
        if view.irreversible_done:
            return f"fix forward: phase '{view.irreversible_done}' was the point of no return"
        return "rollback to undo every change, or submit again to retry"
    for i, phase in enumerate(plan.phases):
        pv = view.phases.get(phase.name)
        if pv is None or pv.state is not PhaseState.DONE:
            if pv is None or pv.state is PhaseState.PENDING:
                return f"phase {phase.name}"
            # this one runs now: what comes next is what follows it
            later = plan.phases[i + 1 :]
            after = f"phase {later[0].name}" if later else "the end"
            return f"{after}, once {phase.name} is done"
    return "finishing"


def eta(
    plan: model.Plan,
    view: UpgradeView,
    past: History | None,
    now: float | None = None,
    clocks: Callable[[int, int], BatchClock] | None = None,
) -> float | None:
    """`eta_s`: seconds left on the critical path, rounded (see `critical_path`)."""
    if view.state.terminal:
        return 0.0
    if past is None:
        return None
    left = critical_path(plan, past, view, now, clocks)
    return None if left is None else round(left, 1)


def step_names(plan: model.Plan) -> dict[str, str]:
    """Step id -> its name, over the whole plan."""
    return {s.id: s.name for p in plan.phases for b in p.batches for h in b.hosts for s in h.steps}


def first_failure(
    plan: model.Plan, view: UpgradeView, names: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The first thing that went wrong, kept to the end (None: nothing did);
    `names`: `step_names(plan)`, when the caller keeps it."""
    failure = view.first_failure
    if failure is None:
        return None
    if names is None:
        names = step_names(plan)
    step = names.get(failure.step, failure.step) if failure.step else None
    return {
        "what": failure.what,
        "phase": failure.phase,
        "host": failure.host,
        "step": step,
        "exit": failure.exit,
        "message": failure.message,
        "output": failure.output,
        "at": failure.at,
        "summary": describe_failure(failure.what, failure.host, step, failure.message),
    }


def describe_failure(what: str, host: str | None, step: str | None, message: str) -> str:
    """One line: "cmp-2 failed its health check: ...", "cmp-2: step X failed (exit 1)"."""
    if what == "health":
        detail = message.split("health: ", 1)[-1]
        return f"{host} failed its health check: {detail}"
    if what == "step":
        return f"{host}: step {step!r} {message.removeprefix('step ')}"
    if host is not None:
        return f"{host}: {message}"
    return message


def host_phases(plan: model.Plan) -> dict[str, list[str]]:
    """Host -> the phases it takes part in, in plan order (hosts in order of appearance)."""
    places: dict[str, list[str]] = {}
    for phase in plan.phases:
        for batch in phase.batches:
            for hp in batch.hosts:
                places.setdefault(hp.host, []).append(phase.name)
    return places


def standing(view: UpgradeView, host: str, phases: Iterable[str]) -> tuple[str, bool]:
    """A host's state in the latest of `phases` (its own) that has started,
    and whether it is through every one of them."""
    current: str | None = None
    through = True
    for name in phases:
        pv = view.phases.get(name)
        hv = pv.hosts.get(host) if pv else None
        state = hv.state if hv else HostState.PENDING
        through = through and state is HostState.DONE
        if hv is not None or current is None:
            current = state.value
    assert current is not None, f"host {host} takes part in no phase"
    return current, through


def hosts_part(current: Mapping[str, str], through: Mapping[str, bool]) -> dict[str, Any]:
    return {
        "total": len(current),
        "through": sum(through.values()),
        "by_state": dict(sorted(Counter(current.values()).items())),
    }


def distinct_hosts(plan: model.Plan, view: UpgradeView) -> dict[str, Any]:
    """Hosts counted once each (not host x phase): how many there are, how
    many are through every phase they take part in, and each one's state in
    the latest phase of theirs that has started."""
    current: dict[str, str] = {}
    through: dict[str, bool] = {}
    for host, phases in host_phases(plan).items():
        current[host], through[host] = standing(view, host, phases)
    return hosts_part(current, through)


def progress_part(
    plan: model.Plan,
    view: UpgradeView,
    steps_total: int,
    done: int,
    hosts_by_state: Mapping[str, int],
) -> dict[str, Any]:
    phases_done = 0
    for phase in plan.phases:
        pv = view.phases.get(phase.name)
        phases_done += pv is not None and pv.state is PhaseState.DONE
    return {
        "phases_total": len(plan.phases),
        "phases_done": phases_done,
        "steps_total": steps_total,
        "steps_done": done,
        "hosts_by_state": dict(hosts_by_state),
        "fraction": round(done / steps_total, 4) if steps_total else 0.0,
    }


def document_part(
    upgrade_id: str,
    plan: model.Plan,
    view: UpgradeView,
    digest: str,
    *,
    progress: dict[str, Any],
    eta_s: float | None,
    hosts: dict[str, Any],
    failure: dict[str, Any] | None,
    phases: list[Any],
) -> dict[str, Any]:
    return {
        "id": upgrade_id,
        "name": plan.name,
        "inventory": plan.inventory,
        "from_version": plan.from_version,
        "to_version": plan.to_version,
        "digest": digest,
        "state": view.state.label,
        "terminal": view.state.terminal,
        "reason": view.reason,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
        "last_event": view.last_seq,
        "point_of_no_return": (p.name if (p := plan.irreversible_phase()) else None),
        "point_of_no_return_passed": view.irreversible_done is not None,
        "progress": progress,
        "eta_s": eta_s,
        "next": next_action(plan, view),
        "hosts": hosts,
        "first_failure": failure,
        "skipped_hosts": dict(sorted(view.skipped.items())),
        "approvals": [
            {"phase": phase, "by": by, "at": at} for phase, (by, at) in view.approved.items()
        ],
        "phases": phases,
    }


def status_document(
    upgrade_id: str,
    plan: model.Plan,
    view: UpgradeView,
    digest: str,
    *,
    past: History | None = None,
    health: Mapping[tuple[str, str], HealthProgress] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """`past`: earlier upgrades of the playbook, for `eta_s` (None: no estimate);
    `health`: (phase, host) -> where its health check stands (the engine's);
    `now`: the time the estimate counts from (default: the clock's)."""
    checking = health or {}
    phases = []
    hosts_by_state: Counter[str] = Counter()
    steps_total = done = 0
    for phase in plan.phases:
        pv = view.phases.get(phase.name)
        live = is_live(pv)
        batches = []
        hosts_finished = 0
        for batch in phase.batches:
            hosts = [
                host_row(
                    hp,
                    pv.hosts.get(hp.host) if pv else None,
                    live,
                    checking.get((phase.name, hp.host)),
                )
                for hp in batch.hosts
            ]
            counts = dict(Counter(h["state"] for h in hosts))
            hosts_by_state.update(counts)
            hosts_finished += finished(counts)
            steps_total += sum(len(h["steps"]) for h in hosts)
            done += sum(steps_done(h) for h in hosts)
            batches.append(batch_part(batch, hosts, counts))
        phases.append(phase_part(phase, pv, hosts_finished, batches))
    return document_part(
        upgrade_id,
        plan,
        view,
        digest,
        progress=progress_part(plan, view, steps_total, done, hosts_by_state),
        eta_s=eta(plan, view, past, now),
        hosts=distinct_hosts(plan, view),
        failure=first_failure(plan, view),
        phases=phases,
    )


def summary(upgrade_id: str, plan: model.Plan, view: UpgradeView, digest: str) -> dict[str, Any]:
    """The short form for listings."""
    return {
        "id": upgrade_id,
        "name": plan.name,
        "inventory": plan.inventory,
        "from_version": plan.from_version,
        "to_version": plan.to_version,
        "digest": digest,
        "state": view.state.label,
        "reason": view.reason,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }
