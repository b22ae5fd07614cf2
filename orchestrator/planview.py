"""A plan as a readable tree: phase -> batch -> host -> rendered steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from orchestrator import model

_T = TypeVar("_T")


def describe_drain(drain: model.Drain) -> str:
    if isinstance(drain, model.LoadBalancerDrain):
        return (
            f"load balancer {drain.load_balancer}: server {drain.backend}/{drain.server} "
            f"drain -> 0 sessions (<= {drain.timeout:g}s) -> maint; ready after"
        )
    if isinstance(drain, model.RunDrain):
        wait = f"; wait until: {drain.wait_until}" if drain.wait_until else ""
        return f"run: {drain.run}{wait}; undo: {drain.undo}"
    return f"{drain.method} {drain.url}; undo: {drain.method} {drain.undo_url}"


def describe_check(check: model.Check) -> str:
    if isinstance(check, model.HttpCheck):
        extra = ""
        if check.json_path:
            extra = (
                f", {check.json_path} == {check.expect!r}"
                if check.expect
                else f", {check.json_path} present"
            )
        return f"http {check.url} -> {check.expect_status}{extra}"
    if isinstance(check, model.TcpCheck):
        return f"tcp {check.address}:{check.port}"
    return f"command {check.run}"


def describe_probe(probe: model.VersionProbe) -> str:
    if probe.http:
        path = f" {probe.json_path}" if probe.json_path else ""
        text = f"http {probe.http}{path}"
    else:
        text = f"run {probe.run}"
    if probe.releases:
        text += " [" + ", ".join(f"{r}: {spec}" for r, spec in probe.releases) + "]"
    return text


def describe_action(action: model.RunAction | model.ConfigAction | model.WaitAction) -> str:
    if isinstance(action, model.RunAction):
        extra = []
        if action.ok_exit != (0,):
            extra.append(f"ok exit {','.join(map(str, action.ok_exit))}")
        if action.repeat_while_exit:
            codes = ",".join(map(str, action.repeat_while_exit))
            extra.append(
                f"repeat while exit {codes} every {action.repeat_interval:g}s, "
                f"at most {action.repeat_max}x"
            )
        tail = f"  ({'; '.join(extra)})" if extra else ""
        return f"run     {action.command}{tail}"
    if isinstance(action, model.ConfigAction):
        value = "<absent>" if action.value is None else action.value
        return f"config  {action.file} [{action.section}] {action.key} = {value}"
    return f"wait    {action.seconds:g}s"


def render_tree(plan: model.Plan, digest: str | None = None) -> str:
    return "".join(tree_chunks(plan, digest))


def tree_chunks(plan: model.Plan, digest: str | None = None) -> Iterator[str]:
    """`render_tree` in pieces (a batch at most), for writing as it goes.

    Host plans share their actions, drains, checks and probes (the compiler
    builds each once per distinct set of values), so their lines are made
    once per object and reused."""
    out: list[str] = []
    hosts = len(plan.hosts)
    out.append(
        f"Plan {plan.name}: {plan.from_version} -> {plan.to_version} on {plan.inventory} "
        f"({hosts} host{'s' * (hosts != 1)}, {len(plan.phases)} phases)"
    )
    out.append(f"digest   {digest or plan.digest}")
    out.append(f"on failure: {plan.on_failure}")
    point = plan.irreversible_phase()
    if point is not None:
        out.append(f"point of no return: phase '{point.name}'")
    for warning in plan.warnings:
        out.append(f"warning: {warning}")
    yield "\n".join(out) + "\n"
    lines = _Lines()
    for n, phase in enumerate(plan.phases, start=1):
        yield "\n" + "\n".join(_phase(n, phase)) + "\n"
        for batch in phase.batches:
            yield "\n".join(lines.batch(batch)) + "\n"


def _phase(n: int, phase: model.Phase) -> list[str]:
    """The phase's head: what it does, its batch sizes, gates and notes."""
    roles = ", ".join(phase.roles)
    hosts, batches = phase.host_count, len(phase.batches)
    head = (
        f"[{n}] {phase.name}  ({phase.kind} {roles}; {_count(hosts, 'host')} "
        f"in {_count(batches, 'batch')})"
    )
    lines = [head]
    if phase.description:
        lines.append(f"    {phase.description}")
    facts = []
    if phase.kind != "once":
        facts.append(f"batch {' / '.join(phase.batch_sizes)}")
    if phase.max_unavailable:
        facts.append("max unavailable " + ", ".join(f"{r} {c}" for r, c in phase.max_unavailable))
    if phase.kind != "once":
        facts.append(f"max failures {phase.max_failures}")
    if phase.canary_pause:
        facts.append("pause after canary")
    if phase.batch_pause:
        facts.append(f"pause {phase.batch_pause:g}s between batches")
    if facts:
        lines.append("    " + "; ".join(facts))
    for gate in phase.gates:
        if gate.kind == "all_at_target":
            lines.append(f"    gate: all {len(gate.probes)} probed hosts report the target version")
        else:
            lines.append(f"    gate: on {gate.host}: {gate.run} exits {gate.expect_exit}")
    if phase.approve:
        lines.append("    approval: waits for the operator")
    if phase.irreversible:
        lines.append("    IRREVERSIBLE: rollback is refused once this phase runs")
    for note in phase.notes:
        lines.append(f"    note: {note}")
    return lines


def _count(n: int, word: str) -> str:
    plural = "es" if word.endswith("ch") else "s"
    return f"{n} {word}{plural * (n != 1)}"


_PAD = "      "


class _Lines:
    """A batch's lines, each shared value's made once (by identity: the plan
    holds every object it describes while it is written)."""

    def __init__(self) -> None:
        self._made: dict[int, str] = {}

    def batch(self, batch: model.Batch) -> list[str]:
        label = f"  batch {batch.index}"
        if batch.canary:
            label += " (canary)"
        if batch.zone:
            label += f" zone {batch.zone}"
        lines = [label + f": {', '.join(h.host for h in batch.hosts)}"]
        for host in batch.hosts:
            lines.extend(self._host(host))
        return lines

    def _host(self, host: model.HostPlan) -> list[str]:
        lines = [f"    {host.host} ({', '.join(host.roles)})"]
        made = self._made
        for drain in host.drains:
            lines.append(made.get(id(drain)) or self._make(drain, _drain_line))
        for i, step in enumerate(host.steps, start=1):
            action = made.get(id(step.action)) or self._make(step.action, describe_action)
            lines.append(f"{_PAD}{i}. {action}")
            if step.undo is not None:
                lines.append(f"{_PAD}   undo    {step.undo.command}")
            if step.check is not None:
                lines.append(f"{_PAD}   check   {step.check}")
        if host.health is not None:
            lines.append(made.get(id(host.health)) or self._make(host.health, _health_lines))
        if host.version is not None:
            lines.append(made.get(id(host.version)) or self._make(host.version, _version_line))
        for step in host.cleanup:
            action = made.get(id(step.action)) or self._make(step.action, describe_action)
            lines.append(f"{_PAD}cleanup {action}")
        if host.drains:
            lines.append(f"{_PAD}undrain")
        return lines

    def _make(self, value: _T, describe: Callable[[_T], str]) -> str:
        text = self._made[id(value)] = describe(value)
        return text


def _drain_line(drain: model.Drain) -> str:
    return f"{_PAD}drain   {describe_drain(drain)}"


def _health_lines(health: model.Health) -> str:
    head = (
        f"{_PAD}health  {health.passes} passes, every {health.interval:g}s, "
        f"deadline {health.deadline:g}s:"
    )
    return "\n".join([head, *(f"{_PAD}        {describe_check(c)}" for c in health.checks)])


def _version_line(probe: model.VersionProbe) -> str:
    return f"{_PAD}version {describe_probe(probe)} == target"
