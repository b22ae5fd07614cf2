"""The plan compiler: (inventory, playbook, versions, options) -> Plan.

Pure and deterministic: no I/O, no clock, no randomness. Every template is
rendered here for every host it applies to (once per distinct set of values
it reads, `orchestrator.procedure`), so a typo fails at plan time. All
problems are collected and raised together as one InputError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from packaging.version import Version

from orchestrator import model
from orchestrator.batching import Member, cut_batches
from orchestrator.errors import InputError, Problem
from orchestrator.fields import check_version, parse_size, resolve_size
from orchestrator.inventory import Inventory
from orchestrator.pieces import Renderer
from orchestrator.playbook import Phase, Playbook
from orchestrator.procedure import Procedures
from orchestrator.source import Document, PathKey, suggest
from orchestrator.templating import Namespace, Secrets, Templates


@dataclass(frozen=True, slots=True)
class Options:
    to_version: str
    from_version: str | None = None
    on_failure: Literal["rollback", "pause"] | None = None


def compile_plan(
    inventory: Inventory,
    inv_doc: Document,
    playbook: Playbook,
    pb_doc: Document,
    options: Options,
    *,
    templates: Templates | None = None,
) -> model.Plan:
    """The plan; `templates` renders its templates (a fresh cache by default:
    pass one to see how many renders ran)."""
    compiler = _Compiler(inventory, inv_doc, playbook, pb_doc, templates or Templates())
    return compiler.compile(options)


class _Compiler:
    """One compilation: the inputs, the host procedures (and their template contexts), and the
    problems and warnings found so far."""

    def __init__(
        self,
        inventory: Inventory,
        inv_doc: Document,
        playbook: Playbook,
        pb_doc: Document,
        templates: Templates,
    ) -> None:
        self.inventory, self.inv_doc = inventory, inv_doc
        self.playbook, self.doc = playbook, pb_doc
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        seen: set[tuple[str, PathKey]] = set()
        self.inv_render = Renderer(inv_doc, self.problems, seen, templates)
        self.pb_render = Renderer(pb_doc, self.problems, seen, templates)
        self.groups = inventory.role_groups()
        self._members: dict[tuple[str, ...], list[Member]] = {}

    def compile(self, options: Options) -> model.Plan:
        inventory, playbook = self.inventory, self.playbook
        from_version, to_version = _versions(inventory, self.inv_doc, options, self.problems)
        base_ctx: dict[str, Any] = {
            **playbook.vars,
            **inventory.vars,
            "from_version": from_version,
            "to_version": to_version,
            "groups": Namespace("groups", self.groups),
            "secrets": Secrets(list(inventory.secrets)),
        }
        self.procedures = Procedures(inventory, base_ctx, self.inv_render, self.pb_render)
        phases = [self.phase(i, phase) for i, phase in enumerate(playbook.phases)]
        if self.problems:
            raise InputError(self.problems)
        return model.Plan(
            name=playbook.name,
            from_version=from_version,
            to_version=to_version,
            inventory=inventory.name or _stem(self.inv_doc.name),
            on_failure=options.on_failure or playbook.on_failure,
            hosts=_targets(inventory),
            load_balancers=tuple(
                model.LoadBalancerTarget(
                    name=name,
                    driver=lb.driver,
                    backend=lb.backend,
                    host=lb.host,
                    socket=lb.socket,
                    address=lb.address,
                )
                for name, lb in inventory.load_balancers.items()
            ),
            phases=tuple(p for p in phases if p is not None),
            secrets=tuple(
                (name, "env", ref.env) if ref.env is not None else (name, "file", ref.file or "")
                for name, ref in inventory.secrets.items()
            ),
            warnings=tuple(self.warnings),
        )

    def phase(self, index: int, phase: Phase) -> model.Phase | None:
        where: PathKey = ("phases", index)
        inventory, doc, groups = self.inventory, self.doc, self.groups
        problems, warnings = self.problems, self.warnings
        if not self.roles_known(phase, where):
            return None

        members = self.members(phase, where)
        if members is None:
            return None
        drain = phase.drain if phase.drain is not None else phase.kind == "rolling"
        health = phase.health if phase.health is not None else phase.kind == "rolling"
        verify = (
            phase.verify_version if phase.verify_version is not None else phase.kind == "rolling"
        )

        limits = self.limits(phase, where)
        if limits is None:
            return None

        raw_sizes: Sequence[int | str]
        if phase.batch is None:
            raw_sizes = [1] if phase.kind == "rolling" else ["100%"]
        elif isinstance(phase.batch, list):
            raw_sizes = phase.batch
        else:
            raw_sizes = [phase.batch]
        sizes = [parse_size(s, "batch") for s in raw_sizes]
        cuts = cut_batches(members, sizes, limits, separate_zones=phase.zones == "separate")

        notes: list[str] = []
        short = [b for b, cut in enumerate(cuts[:-1], start=1) if len(cut.hosts) < cut.wanted]
        if short:
            why = "max_unavailable or a zone boundary" if limits else "a zone boundary"
            notes.append(
                f"{len(short)} batch{'es' * (len(short) != 1)} smaller than the batch size, "
                f"limited by {why}"
            )
        batches: list[model.Batch] = []
        duties = (drain, health, verify)
        for b, cut in enumerate(cuts, start=1):
            host_plans = self.procedures.host_plans(index, phase, cut.hosts, duties)
            batches.append(
                model.Batch(
                    index=b,
                    zone=cut.zone,
                    hosts=host_plans,
                    canary=b == 1 and len(cuts) > 1 and phase.kind == "rolling",
                )
            )

        if drain:
            for role in phase.roles:
                spec = inventory.roles.get(role)
                if spec is None or spec.drain is None:
                    warnings.append(
                        f"phase {phase.name}: role '{role}' has no drain; its hosts stay in service"
                    )
                elif len(groups[role]) > 1 and any(
                    sum(1 for h in bt.hosts if role in h.roles) == len(groups[role])
                    for bt in batches
                ):
                    warnings.append(
                        f"phase {phase.name}: one batch drains every '{role}' host at once"
                    )
        if health:
            for role in phase.roles:
                spec = inventory.roles.get(role)
                if spec is None or not spec.health:
                    warnings.append(f"phase {phase.name}: role '{role}' has no health checks")

        max_failures = resolve_size(
            parse_size(phase.max_failures, "max_failures"), len(members), round_up=False
        )
        gates = tuple(self.gate(g, gi, phase, where) for gi, g in enumerate(phase.gate))
        for gi, compiled_gate in enumerate(gates):
            if compiled_gate.kind == "all_at_target" and not compiled_gate.probes:
                problems.append(
                    doc.problem(
                        (*where, "gate", gi),
                        "gate 'all_at_target' needs a 'version' probe on at least one role "
                        "in the inventory, or it could never be checked",
                    )
                )
        return model.Phase(
            name=phase.name,
            kind=phase.kind,
            roles=tuple(phase.roles),
            batches=tuple(batches),
            description=phase.description,
            batch_sizes=tuple(str(s) for s in raw_sizes),
            max_unavailable=tuple(limits.items()),
            max_failures=max_failures,
            canary_pause=phase.canary_pause,
            batch_pause=phase.batch_pause,
            gates=gates,
            approve=phase.approve,
            irreversible=phase.irreversible,
            notes=tuple(notes),
        )

    def roles_known(self, phase: Phase, where: PathKey) -> bool:
        known, ok = list(self.groups), True
        for j, role in enumerate(phase.roles):
            if role not in self.groups:
                field: PathKey = (*where, phase.kind) if phase.kind != "all" else (*where, "all", j)
                self.problems.append(
                    self.doc.problem(field, f"no host has role '{role}'{suggest(role, known)}")
                )
                ok = False
        for g, gate in enumerate(phase.gate):
            if gate.on is not None and gate.on not in self.groups:
                self.problems.append(
                    self.doc.problem(
                        (*where, "gate", g, "on"),
                        f"no host has role '{gate.on}'{suggest(gate.on, known)}",
                    )
                )
                ok = False
        return ok

    def limits(self, phase: Phase, where: PathKey) -> dict[str, int] | None:
        """Per role, the most hosts one batch may hold; None after a problem."""
        limits: dict[str, int] = {}
        for role in phase.roles:
            raw = phase.max_unavailable
            field_path: PathKey = (*where, "max_unavailable")
            if isinstance(raw, dict):
                raw = raw.get(role)
                field_path = (*field_path, role)
            if raw is None:
                continue
            total = len(self.groups[role])
            limit = resolve_size(parse_size(raw, "max_unavailable"), total, round_up=False)
            if limit < 1:
                self.problems.append(
                    self.doc.problem(
                        field_path,
                        f"max_unavailable {raw!r} of {total} '{role}' host{'s' * (total != 1)} "
                        "rounds down to 0, which forbids any progress; allow at least 1 host",
                    )
                )
                return None
            limits[role] = limit
        return limits

    def members(self, phase: Phase, where: PathKey) -> list[Member] | None:
        inventory, doc, problems = self.inventory, self.doc, self.problems
        if phase.kind == "once":
            role = phase.roles[0]
            if phase.host is not None:
                host = inventory.hosts.get(phase.host)
                if host is None or role not in host.roles:
                    what = (
                        f"unknown host '{phase.host}'"
                        if host is None
                        else f"host '{phase.host}' does not have role '{role}'"
                    )
                    candidates = inventory.role_hosts(role)
                    problems.append(
                        doc.problem((*where, "host"), f"{what}{suggest(phase.host, candidates)}")
                    )
                    return None
                name = phase.host
            else:
                name = inventory.role_hosts(role)[0]
            return [Member(name, inventory.hosts[name].zone, (role,))]
        # phases of the same roles have the same members (nova has three of them)
        key = tuple(phase.roles)
        found = self._members.get(key)
        if found is None:
            # hosts holding the same roles hold the same of the phase's
            held: dict[tuple[str, ...], tuple[str, ...]] = {}
            found = self._members[key] = []
            for name, host in inventory.hosts.items():
                roles = tuple(host.roles)
                ours = held.get(roles)
                if ours is None:
                    ours = held[roles] = tuple(r for r in phase.roles if r in roles)
                if ours:
                    found.append(Member(name, host.zone, ours))
        return found

    def gate(self, gate: Any, gi: int, phase: Phase, where: PathKey) -> model.Gate:
        inventory, groups, procedures = self.inventory, self.groups, self.procedures
        if gate.all_at_target:
            # the roles this playbook upgrades (its rolling phases), else every role it touches
            phases = self.playbook.phases
            upgraded = [r for p in phases if p.kind == "rolling" for r in p.roles]
            wanted = list(dict.fromkeys(upgraded or [r for p in phases for r in p.roles]))
            probes: list[tuple[str, model.VersionProbe]] = []
            for name, host in inventory.hosts.items():
                for role in wanted:
                    spec = inventory.roles.get(role)
                    if role in host.roles and spec is not None and spec.version is not None:
                        probe = procedures.probe(spec.version, name, role, phase.name)
                        probes.append((name, probe))
                        break
            return model.Gate(kind="all_at_target", probes=tuple(probes))
        role = gate.on or phase.roles[0]
        on_host: str = (
            phase.host
            if phase.kind == "once" and phase.host and gate.on is None
            else groups[role][0]
        )
        ctx = procedures.context(on_host, role, phase.name)
        return model.Gate(
            kind="command",
            run=self.pb_render(gate.run, ctx, (*where, "gate", gi, "run"), on_host, "shell"),
            host=on_host,
            expect_exit=gate.expect_exit,
        )


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    for suffix in (".yaml", ".yml"):
        base = base.removesuffix(suffix)
    return base


def _versions(
    inventory: Inventory, doc: Document, options: Options, problems: list[Problem]
) -> tuple[str, str]:
    """Both versions, checked together so one run reports every fault in them."""
    to_v = options.to_version
    from_v = options.from_version
    at_inventory = ("vars", "from_version")
    texts: list[tuple[str, str]] = [("to_version", to_v)]
    if from_v is None:
        default = inventory.vars.get("from_version")
        if default is None:
            problems.append(
                Problem(
                    field="from_version",
                    message=f"no from-version: pass --from or set vars.from_version in {doc.name}",
                )
            )
        elif not isinstance(default, str):
            written = doc.texts.get(at_inventory, str(default))
            problems.append(
                doc.problem(
                    at_inventory,
                    f"YAML read {written} as the number {default!r}, not a version; "
                    f'quote it: "{written}"',
                )
            )
        else:
            from_v = default
    if from_v is not None:
        texts.insert(0, ("from_version", from_v))

    def problem(label: str, message: str) -> Problem:
        # a from-version taken from the inventory is located there
        if label == "from_version" and options.from_version is None:
            return doc.problem(at_inventory, message)
        return Problem(field=label, message=message)

    parsed: list[Version] = []
    for label, text in texts:
        try:
            parsed.append(check_version(text))
        except ValueError as exc:
            problems.append(problem(label, str(exc)))
    if len(parsed) == 2 and parsed[1] <= parsed[0]:
        problems.append(
            problem(
                "from_version" if options.from_version is None else "to_version",
                f"{from_v} -> {to_v} is not an upgrade: the target must be newer",
            )
        )
    return from_v or "", to_v


def _targets(inventory: Inventory) -> tuple[model.HostTarget, ...]:
    """How to reach each host: the inventory's ssh settings, a host's own over them."""
    ssh = inventory.ssh
    fields = ("port", "user", "key", "known_hosts", "verify_host_keys", "become")
    defaults: dict[str, Any] = {f: getattr(ssh, f) for f in fields}
    common: dict[str, Any] = {
        "connect_timeout": ssh.connect_timeout,
        "command_timeout": ssh.command_timeout,
        "keepalive_interval": ssh.keepalive_interval,
    }
    targets = []
    for name, host in inventory.hosts.items():
        picked = defaults
        if host.ssh is not None:
            over = host.ssh
            picked = {f: v if (v := getattr(over, f)) is not None else defaults[f] for f in fields}
        targets.append(
            model.HostTarget(
                name=name,
                address=host.address,
                roles=tuple(host.roles),
                zone=host.zone,
                **picked,
                **common,
            )
        )
    return tuple(targets)
