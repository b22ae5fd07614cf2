"""The status document of an upgrade: plan structure merged with derived state.

One function builds it for the HTTP API, the CLI and the demo, so they all
show the same thing: each phase, batch, host and step with its state,
timestamps, last output lines and error; progress counts; what comes next.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from orchestrator import model
from orchestrator.actions.health import HealthProgress
from orchestrator.engine.eta import History, critical_path
from orchestrator.engine.states import HostState, PhaseState, StepState, UpgradeState
from orchestrator.engine.view import HostView, UpgradeView

FINISHED_HOST = {HostState.DONE, HostState.SKIPPED, HostState.FAILED, HostState.ROLLED_BACK}


def _host(
    hp: model.HostPlan, view: HostView | None, live: bool, health: HealthProgress | None
) -> dict[str, Any]:
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


def _eta(plan: model.Plan, view: UpgradeView, past: History | None) -> float | None:
    if view.state.terminal:
        return 0.0
    if past is None:
        return None
    left = critical_path(plan, past, view)
    return None if left is None else round(left, 1)


def first_failure(plan: model.Plan, view: UpgradeView) -> dict[str, Any] | None:
    """The first thing that went wrong, kept to the end (None: nothing did)."""
    failure = view.first_failure
    if failure is None:
        return None
    names = {s.id: s.name for p in plan.phases for b in p.batches for h in b.hosts for s in h.steps}
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


def distinct_hosts(plan: model.Plan, view: UpgradeView) -> dict[str, Any]:
    """Hosts counted once each (not host x phase): how many there are, how
    many are through every phase they take part in, and each one's state in
    the latest phase of theirs that has started."""
    current: dict[str, str] = {}
    through: dict[str, bool] = {}
    for phase in plan.phases:
        pv = view.phases.get(phase.name)
        for batch in phase.batches:
            for hp in batch.hosts:
                hv = pv.hosts.get(hp.host) if pv else None
                state = hv.state if hv else HostState.PENDING
                through[hp.host] = through.get(hp.host, True) and state is HostState.DONE
                if hv is not None or hp.host not in current:
                    current[hp.host] = state.value
    return {
        "total": len(current),
        "through": sum(through.values()),
        "by_state": dict(sorted(Counter(current.values()).items())),
    }


def status_document(
    upgrade_id: str,
    plan: model.Plan,
    view: UpgradeView,
    digest: str,
    *,
    past: History | None = None,
    health: Mapping[tuple[str, str], HealthProgress] | None = None,
) -> dict[str, Any]:
    """`past`: earlier upgrades of the playbook, for `eta_s` (None: no estimate);
    `health`: (phase, host) -> where its health check stands (the engine's)."""
    checking = health or {}
    phases = []
    hosts_by_state: Counter[str] = Counter()
    steps_total = steps_done = 0
    for phase in plan.phases:
        pv = view.phases.get(phase.name)
        batches = []
        per_batch: list[list[dict[str, Any]]] = []
        for batch in phase.batches:
            live = pv is not None and pv.state in (PhaseState.RUNNING, PhaseState.DONE)
            hosts = [
                _host(
                    hp,
                    pv.hosts.get(hp.host) if pv else None,
                    live,
                    checking.get((phase.name, hp.host)),
                )
                for hp in batch.hosts
            ]
            for h in hosts:
                hosts_by_state[h["state"]] += 1
                steps_total += len(h["steps"])
                steps_done += sum(1 for s in h["steps"] if s["state"] == "done")
            per_batch.append(hosts)
            states = Counter(h["state"] for h in hosts)
            batches.append(
                {
                    "index": batch.index,
                    "zone": batch.zone,
                    "canary": batch.canary,
                    "hosts": hosts,
                    "counts": dict(states),
                }
            )
        finished = sum(
            1
            for host_docs in per_batch
            for h in host_docs
            if HostState(h["state"]) in FINISHED_HOST
        )
        phases.append(
            {
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
                "hosts_finished": finished,
                "batches": batches,
            }
        )
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
        "progress": {
            "phases_total": len(plan.phases),
            "phases_done": sum(1 for p in phases if p["state"] == "done"),
            "steps_total": steps_total,
            "steps_done": steps_done,
            "hosts_by_state": dict(hosts_by_state),
            "fraction": round(steps_done / steps_total, 4) if steps_total else 0.0,
        },
        "eta_s": _eta(plan, view, past),
        "next": next_action(plan, view),
        "hosts": distinct_hosts(plan, view),
        "first_failure": first_failure(plan, view),
        "skipped_hosts": dict(sorted(view.skipped.items())),
        "approvals": [
            {"phase": phase, "by": by, "at": at} for phase, (by, at) in view.approved.items()
        ],
        "phases": phases,
    }


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
