"""The plan compiler: (inventory, playbook, versions, options) -> Plan.

Pure and deterministic: no I/O, no clock, no randomness. Every template is
rendered here for every host it applies to, so a typo fails at plan time.
All problems are collected and raised together as one InputError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from packaging.version import Version

from orchestrator import model
from orchestrator.batching import Member, cut_batches
from orchestrator.errors import InputError, Problem, TemplateError
from orchestrator.fields import check_version, parse_size, resolve_size
from orchestrator.inventory import Inventory
from orchestrator.playbook import Phase, Playbook
from orchestrator.playbook import Step as StepSpec
from orchestrator.source import Document, PathKey, suggest
from orchestrator.templating import Flavour, Namespace, Secrets, Templates


@dataclass(frozen=True, slots=True)
class Options:
    to_version: str
    from_version: str | None = None
    on_failure: Literal["rollback", "pause"] | None = None


@dataclass(slots=True)
class _Renderer:
    """Renders templates, turning failures into located Problems (one per spot)."""

    doc: Document
    problems: list[Problem]
    seen: set[tuple[str, PathKey]]
    templates: Templates

    def __call__(
        self, source: str, ctx: dict[str, Any], path: PathKey, host: str, flavour: Flavour = "text"
    ) -> str:
        try:
            return self.templates.render(source, ctx, flavour)
        except TemplateError as exc:
            key = (self.doc.name, path)
            if key not in self.seen:
                self.seen.add(key)
                self.problems.append(self.doc.problem(path, f"{exc.message} (for host {host})"))
            return ""


def compile_plan(
    inventory: Inventory,
    inv_doc: Document,
    playbook: Playbook,
    pb_doc: Document,
    options: Options,
) -> model.Plan:
    return _Compiler(inventory, inv_doc, playbook, pb_doc).compile(options)


class _Compiler:
    """One compilation: the inputs, the per-host template contexts, and the
    problems and warnings found so far."""

    def __init__(
        self, inventory: Inventory, inv_doc: Document, playbook: Playbook, pb_doc: Document
    ) -> None:
        self.inventory, self.inv_doc = inventory, inv_doc
        self.playbook, self.doc = playbook, pb_doc
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        seen: set[tuple[str, PathKey]] = set()
        self.templates = Templates()
        self.inv_render = _Renderer(inv_doc, self.problems, seen, self.templates)
        self.pb_render = _Renderer(pb_doc, self.problems, seen, self.templates)
        self.groups = {role: inventory.role_hosts(role) for role in inventory.all_roles()}
        self.contexts: dict[str, dict[str, Any]] = {}

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
        for name, host in inventory.hosts.items():
            self.contexts[name] = {
                **base_ctx,
                **host.vars,
                "host": Namespace(
                    "host",
                    {
                        "name": name,
                        "address": host.address,
                        "roles": list(host.roles),
                        "zone": host.zone,
                        "vars": host.vars,
                    },
                ),
            }
        phases = [self.phase(i, phase) for i, phase in enumerate(playbook.phases)]
        if self.problems:
            raise InputError(self.problems)
        return model.Plan(
            name=playbook.name,
            from_version=from_version,
            to_version=to_version,
            inventory=inventory.name or _stem(self.inv_doc.name),
            on_failure=options.on_failure or playbook.on_failure,
            hosts=tuple(_target(inventory, name) for name in inventory.hosts),
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
        for b, cut in enumerate(cuts, start=1):
            host_plans = tuple(
                self.host_plan(index, phase, name, drain=drain, health=health, verify=verify)
                for name in cut.hosts
            )
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
        wanted = set(phase.roles)
        return [
            Member(name, host.zone, tuple(r for r in phase.roles if r in host.roles))
            for name, host in inventory.hosts.items()
            if wanted.intersection(host.roles)
        ]

    def host_plan(
        self, index: int, phase: Phase, name: str, *, drain: bool, health: bool, verify: bool
    ) -> model.HostPlan:
        inventory, ctx = self.inventory, self.contexts[name]
        inv_render, pb_render = self.inv_render, self.pb_render
        host = inventory.hosts[name]
        roles = tuple(r for r in phase.roles if r in host.roles)
        steps: list[model.Step] = []
        cleanup: list[model.Step] = []
        drains: list[model.Drain] = []
        checks: list[model.Check] = []
        policy: list[tuple[int, float, float]] = []
        version: model.VersionProbe | None = None
        become = (
            host.ssh.become if host.ssh and host.ssh.become else inventory.ssh.become
        ) == "sudo"
        for role in roles:
            rctx = {**ctx, "role": role, "phase": phase.name}
            # a host with several of the phase's roles runs each role's steps,
            # but a step that renders the same for a later role is not repeated
            earlier_steps, earlier_cleanup = list(steps), list(cleanup)
            for j, spec in enumerate(phase.steps):
                step = _step(
                    spec,
                    rctx,
                    ("phases", index, "steps", j),
                    name,
                    pb_render,
                    inventory=inventory,
                    become=become,
                )
                if not any(_same(step, s) for s in earlier_steps):
                    steps.append(step)
            for j, spec in enumerate(phase.cleanup):
                step = _step(
                    spec,
                    rctx,
                    ("phases", index, "cleanup", j),
                    name,
                    pb_render,
                    inventory=inventory,
                    become=become,
                )
                if not any(_same(step, s) for s in earlier_cleanup):
                    cleanup.append(step)
            role_spec = inventory.roles.get(role)
            if role_spec is None:
                continue
            rpath: PathKey = ("roles", role)
            if drain and role_spec.drain is not None:
                drains.append(
                    _drain(
                        role_spec.drain,
                        rctx,
                        (*rpath, "drain"),
                        name,
                        inv_render,
                        inventory=inventory,
                    )
                )
            if health and role_spec.health:
                for k, check in enumerate(role_spec.health):
                    checks.append(_check(check, rctx, (*rpath, "health", k), name, inv_render))
                hp = role_spec.health_policy
                policy.append((hp.passes, hp.interval, hp.deadline))
            if verify and version is None and role_spec.version is not None:
                version = _probe(role_spec.version, rctx, (*rpath, "version"), name, inv_render)
        prefix = f"{phase.name}/{name}"
        steps = [_numbered(s, f"{prefix}/{n}") for n, s in enumerate(steps, start=1)]
        cleanup = [_numbered(s, f"{prefix}/cleanup-{n}") for n, s in enumerate(cleanup, start=1)]
        return model.HostPlan(
            host=name,
            roles=roles,
            steps=tuple(steps),
            cleanup=tuple(cleanup),
            drains=tuple(drains),
            health=model.Health(
                checks=tuple(checks),
                passes=max(p[0] for p in policy),
                interval=min(p[1] for p in policy),
                deadline=max(p[2] for p in policy),
            )
            if checks
            else None,
            version=version,
        )

    def gate(self, gate: Any, gi: int, phase: Phase, where: PathKey) -> model.Gate:
        inventory, contexts, groups = self.inventory, self.contexts, self.groups
        inv_render, pb_render = self.inv_render, self.pb_render
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
                        ctx = {**contexts[name], "role": role, "phase": phase.name}
                        path: PathKey = ("roles", role, "version")
                        probes.append((name, _probe(spec.version, ctx, path, name, inv_render)))
                        break
            return model.Gate(kind="all_at_target", probes=tuple(probes))
        role = gate.on or phase.roles[0]
        on_host: str = (
            phase.host
            if phase.kind == "once" and phase.host and gate.on is None
            else groups[role][0]
        )
        ctx = {**contexts[on_host], "role": role, "phase": phase.name}
        return model.Gate(
            kind="command",
            run=pb_render(gate.run, ctx, (*where, "gate", gi, "run"), on_host, "shell"),
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


def _target(inventory: Inventory, name: str) -> model.HostTarget:
    host = inventory.hosts[name]
    ssh = inventory.ssh
    over = host.ssh

    def pick(field: str) -> Any:
        value = getattr(over, field) if over is not None else None
        return getattr(ssh, field) if value is None else value

    return model.HostTarget(
        name=name,
        address=host.address,
        port=pick("port"),
        user=pick("user"),
        key=pick("key"),
        known_hosts=pick("known_hosts"),
        verify_host_keys=pick("verify_host_keys"),
        become=pick("become"),
        roles=tuple(host.roles),
        zone=host.zone,
        connect_timeout=ssh.connect_timeout,
        command_timeout=ssh.command_timeout,
        keepalive_interval=ssh.keepalive_interval,
    )


def _same(a: model.Step, b: model.Step) -> bool:
    return (a.action, a.undo, a.check) == (b.action, b.undo, b.check)


def _numbered(step: model.Step, step_id: str) -> model.Step:
    return model.Step(
        id=step_id,
        name=step.name,
        action=step.action,
        undo=step.undo,
        check=step.check,
        idempotent=step.idempotent,
        become=step.become,
    )


def _step(
    spec: StepSpec,
    ctx: dict[str, Any],
    path: PathKey,
    host: str,
    render: _Renderer,
    *,
    inventory: Inventory,
    become: bool,
) -> model.Step:
    timeout = spec.timeout if spec.timeout is not None else inventory.ssh.command_timeout
    action: model.RunAction | model.ConfigAction | model.WaitAction
    if spec.run is not None:
        action = model.RunAction(
            command=render(spec.run, ctx, (*path, "run"), host, "shell"),
            ok_exit=tuple(spec.ok_exit),
            repeat_while_exit=tuple(spec.repeat_while_exit),
            repeat_interval=spec.repeat_interval,
            repeat_max=spec.repeat_max,
            timeout=timeout,
        )
        default_name = action.command
    elif spec.config is not None:
        c = spec.config
        value = None if c.value is None else _scalar(c.value)
        action = model.ConfigAction(
            file=render(c.file, ctx, (*path, "config", "file"), host),
            section=render(c.section, ctx, (*path, "config", "section"), host),
            key=render(c.key, ctx, (*path, "config", "key"), host),
            value=None if value is None else render(value, ctx, (*path, "config", "value"), host),
        )
        shown = "absent" if action.value is None else action.value
        default_name = f"config {action.file} [{action.section}] {action.key} = {shown}"
    else:
        action = model.WaitAction(seconds=spec.wait or 0.0)
        default_name = f"wait {action.seconds:g}s"
    undo: model.RunAction | None = None
    if isinstance(spec.undo, str):
        undo = model.RunAction(
            command=render(spec.undo, ctx, (*path, "undo"), host, "shell"), timeout=timeout
        )
    elif spec.undo is not None:
        undo = model.RunAction(
            command=render(spec.undo.run, ctx, (*path, "undo", "run"), host, "shell"),
            ok_exit=tuple(spec.undo.ok_exit),
            timeout=spec.undo.timeout if spec.undo.timeout is not None else timeout,
        )
    return model.Step(
        id="",
        name=render(spec.name, ctx, (*path, "name"), host) if spec.name else default_name,
        action=action,
        undo=undo,
        check=render(spec.check, ctx, (*path, "check"), host, "shell") if spec.check else None,
        idempotent=spec.idempotent or isinstance(action, model.ConfigAction | model.WaitAction),
        become=become if spec.become is None else spec.become,
    )


def _scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _drain(
    spec: Any,
    ctx: dict[str, Any],
    path: PathKey,
    host: str,
    render: _Renderer,
    *,
    inventory: Inventory,
) -> model.Drain:
    if spec.load_balancer is not None:
        lb = inventory.load_balancers[spec.load_balancer]
        return model.LoadBalancerDrain(
            load_balancer=spec.load_balancer,
            server=render(spec.server, ctx, (*path, "server"), host),
            backend=lb.backend,
            timeout=spec.timeout,
        )
    if spec.run is not None:
        return model.RunDrain(
            run=render(spec.run, ctx, (*path, "run"), host, "shell"),
            undo=render(spec.undo, ctx, (*path, "undo"), host, "shell"),
            wait_until=render(spec.wait_until, ctx, (*path, "wait_until"), host, "shell")
            if spec.wait_until
            else None,
            timeout=spec.timeout,
        )
    return model.HttpDrain(
        url=render(spec.http, ctx, (*path, "http"), host),
        undo_url=render(spec.undo_http, ctx, (*path, "undo_http"), host),
        method=spec.method,
        timeout=spec.timeout,
    )


def _check(
    spec: Any, ctx: dict[str, Any], path: PathKey, host: str, render: _Renderer
) -> model.Check:
    if spec.http is not None:
        return model.HttpCheck(
            url=render(spec.http, ctx, (*path, "http"), host),
            expect_status=spec.expect_status,
            json_path=spec.json_path,
            expect=render(spec.expect, ctx, (*path, "expect"), host) if spec.expect else None,
            timeout=spec.timeout,
        )
    if spec.tcp is not None:
        text = render(spec.tcp, ctx, (*path, "tcp"), host)
        address, _, port = text.rpartition(":")
        if not address or not port.isdigit() or not 0 < int(port) < 65536:
            if text:  # an empty text means rendering already failed and was reported
                key = (render.doc.name, (*path, "tcp"))
                if key not in render.seen:
                    render.seen.add(key)
                    render.problems.append(
                        render.doc.problem(
                            (*path, "tcp"), f"expected ADDRESS:PORT, got '{text}' (for host {host})"
                        )
                    )
            return model.TcpCheck(address=text, port=0, timeout=spec.timeout)
        return model.TcpCheck(address=address.strip("[]"), port=int(port), timeout=spec.timeout)
    return model.CommandCheck(
        run=render(spec.run, ctx, (*path, "run"), host, "shell"), timeout=spec.timeout
    )


def _probe(
    spec: Any, ctx: dict[str, Any], path: PathKey, host: str, render: _Renderer
) -> model.VersionProbe:
    return model.VersionProbe(
        http=render(spec.http, ctx, (*path, "http"), host) if spec.http else None,
        json_path=spec.json_path,
        run=render(spec.run, ctx, (*path, "run"), host, "shell") if spec.run else None,
        timeout=spec.timeout,
        releases=tuple((spec.releases or {}).items()),
    )
