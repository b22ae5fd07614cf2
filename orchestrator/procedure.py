"""One host's procedure in one phase: its steps, drains, health checks and
version probe, rendered from the playbook's and the inventory's templates.

The compiler asks for one of these for every host of every phase (40,010 for
the nova playbook on 10,000 hosts), so each piece (`orchestrator.pieces`)
is built once per distinct set of values its templates read
(`templating.reads`): the upgrade step that reads only `to_version` is one
object shared by every host, the drain that reads `host.name` one per host,
shared by every phase that drains it. For the hosts without vars of one
role in one phase (a recipe), what reads nothing of `host` is kept on the
recipe, and what reads `host` is rendered for all of them in one Jinja
render (`_prefetch`). A piece whose rendering reported a problem is not
kept, and anything that cannot be built many at a time is built host by
host, so every host that fails is rendered (and reported) as if nothing
were kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from orchestrator import model, pieces
from orchestrator.errors import TemplateError
from orchestrator.inventory import Inventory
from orchestrator.pieces import Renderer
from orchestrator.playbook import Phase
from orchestrator.playbook import Step as StepSpec
from orchestrator.source import PathKey
from orchestrator.templating import Namespace, frozen, reads

Policy = tuple[int, float, float]  # a role's health policy: passes, interval, deadline


class Procedures:
    """Builds the host plans of one compilation, sharing what hosts have in common.

    Every template context is ``base | layer(host) | {role, phase}``: one base
    for the compilation (playbook and inventory vars, versions, groups,
    secrets), a layer per host (`host`, the host's vars). So a piece's key
    needs only what its templates read from the layer, the role and the
    phase; a name read from the base is the same for every host.
    """

    def __init__(
        self,
        inventory: Inventory,
        base: dict[str, Any],
        inv_render: Renderer,
        pb_render: Renderer,
    ) -> None:
        self.inventory, self.base = inventory, base
        self.inv_render, self.pb_render = inv_render, pb_render
        self.problems = pb_render.problems
        self._hosts: dict[str, _Host] = {}
        self._contexts: dict[str, dict[str, Any]] = {}
        self._built: dict[tuple[Any, ...], Any] = {}
        self._pieces: dict[tuple[Any, ...], _Piece] = {}
        self._recipes: dict[tuple[int, str, bool], _Recipe] = {}
        self._role_lists: dict[tuple[str, ...], list[str]] = {}
        # per phase, per host shape: its roles there, and its recipe if one role
        self._shapes: dict[int, dict[tuple[int, bool], tuple[tuple[str, ...], _Recipe | None]]]
        self._shapes = {}
        # what _prefetch found, by host name and piece
        self._fetched: dict[str, dict[_Piece, Any]] = {}

    def context(self, name: str, role: str, phase: str) -> dict[str, Any]:
        """The template context of host `name` as `role` in `phase`."""
        ctx = self._contexts.get(name)
        if ctx is None:
            ctx = self._contexts[name] = {**self.base, **self._host(name).layer}
        return {**ctx, "role": role, "phase": phase}

    def host_plans(
        self, index: int, phase: Phase, names: Sequence[str], duties: tuple[bool, bool, bool]
    ) -> tuple[model.HostPlan, ...]:
        """The host plans of hosts `names` in phase `index`; `duties` says
        whether the phase drains, health-checks and verifies the version."""
        hosts, block_of = self._hosts, self._block
        shapes = self._shapes.setdefault(index, {})
        shaped: list[tuple[_Host, tuple[tuple[str, ...], _Recipe | None]]] = []
        for name in names:
            host = hosts.get(name) or self._host(name)
            shape = shapes.get(host.shape)
            if shape is None:
                shape = shapes[host.shape] = self._shape(index, phase, host, duties)
            shaped.append((host, shape))
        self._prefetch(shaped)
        step_of, plan_of = model.Step, model.HostPlan
        plans = []
        for host, (roles, recipe) in shaped:
            if recipe is not None:
                block = (host.plain and recipe.block) or block_of(recipe, host)
                steps, cleanup, drains, health, version = (
                    block.steps,
                    block.cleanup,
                    block.drains,
                    block.health,
                    block.version,
                )
            else:
                steps, cleanup, drains, health, version = self._roles(
                    index, phase, roles, host, duties
                )
            prefix = f"{phase.name}/{host.name}/"
            # each step numbered for this host: by position, 70,000 steps for nova on 10,000 hosts
            plans.append(
                plan_of(
                    host.name,
                    roles,
                    tuple(
                        [
                            step_of(
                                f"{prefix}{n}",
                                s.name,
                                s.action,
                                s.undo,
                                s.check,
                                s.idempotent,
                                s.become,
                            )
                            for n, s in enumerate(steps, 1)
                        ]
                    ),
                    tuple([_numbered(s, f"{prefix}cleanup-{n}") for n, s in enumerate(cleanup, 1)])
                    if cleanup
                    else (),
                    drains,
                    health,
                    version,
                )
            )
        return tuple(plans)

    def _prefetch(self, shaped: Sequence[tuple[_Host, tuple[Any, _Recipe | None]]]) -> None:
        """Build at once, for the hosts without vars of each recipe, the pieces
        that read `host` and are not built yet (a drain for each host): one
        Jinja render for all of them instead of one per host. What each host
        gets is kept by host and piece for every phase (`_fetched`: pieces of
        the inventory's roles that do not read `phase` are the same in each).
        A piece that cannot be built so is left to `_value`, host by host.
        `shaped`: each host of the batch, and its shape in the phase."""
        fetched = self._fetched
        groups: dict[int, tuple[_Recipe, list[_Host]]] = {}
        for host, (_, recipe) in shaped:
            if host.plain and recipe is not None:
                groups.setdefault(id(recipe), (recipe, []))[1].append(host)
        for recipe, members in groups.values():
            context = {**self.base, "role": recipe.role, "phase": recipe.phase}
            for piece in recipe.pieces:
                plain = piece.plain
                if piece.many is None or plain is None or piece.reads_no_host or plain[2]:
                    continue
                wanted = [h for h in members if piece not in fetched.get(h.name, ())]
                keys = [_plain_key(piece, plain, h, recipe.role, recipe.phase) for h in wanted]
                missing: dict[tuple[Any, ...], _Host] = {}
                for key, host in zip(keys, wanted, strict=True):
                    if key not in self._built:
                        missing.setdefault(key, host)
                if len(missing) > 1:
                    built = piece.many(context, [host.namespace for host in missing.values()])
                    if built is not None:
                        self._built.update(zip(missing, built, strict=True))
                for key, host in zip(keys, wanted, strict=True):
                    value = self._built.get(key)
                    if value is not None:
                        fetched.setdefault(host.name, {})[piece] = value

    def _shape(
        self, index: int, phase: Phase, host: _Host, duties: tuple[bool, bool, bool]
    ) -> tuple[tuple[str, ...], _Recipe | None]:
        """The phase's roles the host holds, and the recipe when it is one role."""
        roles = tuple(r for r in phase.roles if r in host.roles)
        if len(roles) != 1:
            return roles, None
        return roles, self._recipe(index, phase, roles[0], host.become, duties)

    def _roles(
        self,
        index: int,
        phase: Phase,
        roles: tuple[str, ...],
        host: _Host,
        duties: tuple[bool, bool, bool],
    ) -> tuple[
        list[model.Step],
        list[model.Step],
        tuple[model.Drain, ...],
        model.Health | None,
        model.VersionProbe | None,
    ]:
        """What a host holding several of the phase's roles does: each role's
        steps, but not a step that renders the same as an earlier role's."""
        steps: list[model.Step] = []
        cleanup: list[model.Step] = []
        drains: list[model.Drain] = []
        checks: list[model.Check] = []
        policy: list[tuple[int, float, float]] = []
        version = None
        for role in roles:
            block = self._block(self._recipe(index, phase, role, host.become, duties), host)
            earlier, earlier_cleanup = steps[:], cleanup[:]
            steps += [s for s in block.steps if not any(_same(s, e) for e in earlier)]
            cleanup += [s for s in block.cleanup if not any(_same(s, e) for e in earlier_cleanup)]
            drains += block.drains
            if block.policy is not None:
                checks += block.checks
                policy.append(block.policy)
            version = version or block.version
        health = self._health(tuple(checks), policy) if checks else None
        return steps, cleanup, tuple(drains), health, version

    def _block(self, recipe: _Recipe, host: _Host) -> _Block:
        """What `host` does as the recipe's role in its phase. For a host
        without vars, what reads nothing of `host` is kept on the recipe."""
        plain = host.plain
        if plain and recipe.block is not None:
            return recipe.block
        kept = recipe.kept
        fetched = self._fetched.get(host.name) if plain else None
        values = []
        for n, piece in enumerate(recipe.pieces):
            value = kept[n] if plain else _UNSET
            if value is _UNSET and fetched is not None:
                value = fetched.get(piece, _UNSET)
            if value is _UNSET:
                before = len(self.problems)
                value = self._value(piece, host, recipe.role, recipe.phase)
                if plain and piece.reads_no_host and len(self.problems) == before:
                    kept[n] = value
            values.append(value)
        block = recipe.cut(values, self._health)
        if plain and _UNSET not in kept:
            recipe.block = block
        return block

    def probe(self, spec: Any, name: str, role: str, phase: str) -> model.VersionProbe:
        """The version probe of `role` (`spec`) on host `name` in `phase`."""
        probe: model.VersionProbe = self._value(
            self._probe(role, spec), self._host(name), role, phase
        )
        return probe

    def _recipe(
        self,
        index: int,
        phase: Phase,
        role: str,
        become: bool,
        duties: tuple[bool, bool, bool],
    ) -> _Recipe:
        """The pieces a host of `role` works through in phase `index`."""
        found = self._recipes.get((index, role, become))
        if found is not None:
            return found
        drain, health, verify = duties
        inventory, pb_render = self.inventory, self.pb_render

        def steps(kind: str, specs: list[StepSpec]) -> list[_Piece]:
            found = []
            for j, step in enumerate(specs):
                path: PathKey = ("phases", index, kind, j)
                build = partial(
                    pieces.step, step, path, pb_render, inventory=inventory, become=become
                )
                found.append(self._piece(path, build, pieces.step_sources(step), become))
            return found

        step_pieces, cleanup_pieces = steps("steps", phase.steps), steps("cleanup", phase.cleanup)
        drains: list[_Piece] = []
        checks: list[_Piece] = []
        probes: list[_Piece] = []
        policy = None
        spec = inventory.roles.get(role)
        if spec is not None:
            if drain and spec.drain is not None:
                drains.append(self._drain(role, spec.drain))
            if health and spec.health:
                checks = [self._check(role, k, c) for k, c in enumerate(spec.health)]
                hp = spec.health_policy
                policy = (hp.passes, hp.interval, hp.deadline)
            if verify and spec.version is not None:
                probes.append(self._probe(role, spec.version))
        found = _Recipe(
            role, phase.name, (step_pieces, cleanup_pieces, drains, checks, probes), policy
        )
        self._recipes[(index, role, become)] = found
        return found

    def _drain(self, role: str, spec: Any) -> _Piece:
        path: PathKey = ("roles", role, "drain")
        build = partial(pieces.drain, spec, path, self.inv_render, inventory=self.inventory)
        many = partial(pieces.drains_for, spec, self.inv_render, inventory=self.inventory)
        sources = (spec.server, spec.run, spec.undo, spec.wait_until, spec.http, spec.undo_http)
        return self._piece(path, build, sources, many=many)

    def _check(self, role: str, k: int, spec: Any) -> _Piece:
        path: PathKey = ("roles", role, "health", k)
        build = partial(pieces.check, spec, path, self.inv_render)
        many = partial(pieces.checks_for, spec, self.inv_render)
        return self._piece(path, build, (spec.http, spec.expect, spec.tcp, spec.run), many=many)

    def _probe(self, role: str, spec: Any) -> _Piece:
        path: PathKey = ("roles", role, "version")
        return self._piece(
            path, partial(pieces.probe, spec, path, self.inv_render), (spec.http, spec.run)
        )

    def _piece(
        self,
        path: PathKey,
        build: Callable[[dict[str, Any], str], Any],
        sources: Sequence[str | None],
        *variant: Any,
        many: Callable[[dict[str, Any], Sequence[Namespace]], list[Any] | None] | None = None,
    ) -> _Piece:
        """The piece at `path` (one per variant: a step's `become`)."""
        key = (path, *variant)
        found = self._pieces.get(key)
        if found is None:
            try:
                names, fields = reads(tuple(s for s in sources if s))
            except TemplateError:  # rendering it says why, for every host
                names, fields = None, {}
            plain = None if names is None else _plain(names, fields)
            no_host = plain is not None and plain[0] is None
            found = self._pieces[key] = _Piece(path, build, names, fields, plain, no_host, many)
        return found

    def _value(self, piece: _Piece, host: _Host, role: str, phase: str) -> Any:
        """What `piece` builds for `host` as `role` in `phase`, built once per
        distinct set of values it reads; a build that reported a problem is not kept."""
        plain = piece.plain
        if plain is not None and host.plain:
            key = _plain_key(piece, plain, host, role, phase)
        elif piece.names is None:
            return piece.build(self.context(host.name, role, phase), host.name)
        else:
            key = (piece, *_layer_key(piece, host.layer, role, phase))
        found = self._built.get(key)
        if found is not None:
            return found
        before = len(self.problems)
        built = piece.build(self.context(host.name, role, phase), host.name)
        if len(self.problems) == before:
            self._built[key] = built
        return built

    def _host(self, name: str) -> _Host:
        found = self._hosts.get(name)
        if found is None:
            host = self.inventory.hosts[name]
            # hosts with the same roles share the list: keys read it by value anyway
            roles = self._role_lists.setdefault(tuple(host.roles), list(host.roles))
            fields = {
                "name": name,
                "address": host.address,
                "roles": roles,
                "zone": host.zone,
                "vars": host.vars,
            }
            namespace = Namespace("host", fields)
            layer = {**host.vars, "host": namespace}
            become = host.ssh.become if host.ssh and host.ssh.become else self.inventory.ssh.become
            sudo = become == "sudo"
            found = self._hosts[name] = _Host(
                name, layer, namespace, roles, sudo, plain=not host.vars, shape=(id(roles), sudo)
            )
        return found

    def _health(
        self, checks: tuple[model.Check, ...], policy: list[tuple[int, float, float]]
    ) -> model.Health:
        if len(policy) == 1:
            passes, interval, deadline = policy[0]
        else:
            passes = max(p[0] for p in policy)
            interval = min(p[1] for p in policy)
            deadline = max(p[2] for p in policy)
        # the checks are kept pieces, alive as long as the Health that holds them
        key = ("health", *map(id, checks), passes, interval, deadline)
        found: model.Health | None = self._built.get(key)
        if found is None:
            found = model.Health(checks=checks, passes=passes, interval=interval, deadline=deadline)
            self._built[key] = found
        return found


@dataclass(frozen=True, slots=True)
class _Host:
    """A host as its pieces see it: its layer of the context (`plain` when it
    holds only `host`: no host vars), its roles, its `become`."""

    name: str
    layer: dict[str, Any]
    namespace: Namespace
    roles: list[str]
    become: bool
    plain: bool
    shape: tuple[int, bool]  # hosts with the same roles and become have the same recipes


_WHOLE = ("*",)  # a piece reads `host` as a whole
# for a host without vars: which fields of `host` a piece reads (None, some,
# _WHOLE), and whether it reads the role and the phase
_Plain = tuple[tuple[str, ...] | None, bool, bool]


@dataclass(frozen=True, slots=True, eq=False)  # a key part: hashed by identity
class _Piece:
    """One spot of the playbook or the inventory that renders into one plan
    value, and what its templates read (`names` None when one of them does
    not compile). `plain` says, for a host without vars, which fields of
    `host` (None, some, `_WHOLE`) and whether the role and the phase."""

    path: PathKey
    build: Callable[[dict[str, Any], str], Any]
    names: tuple[str, ...] | None
    fields: Mapping[str, tuple[str, ...]]
    plain: _Plain | None
    reads_no_host: bool
    # builds the value for many hosts at once (`_prefetch`), or None
    many: Callable[[dict[str, Any], Sequence[Namespace]], list[Any] | None] | None


def _plain(names: tuple[str, ...], fields: Mapping[str, tuple[str, ...]]) -> Any:
    host = None if "host" not in names else fields.get("host", _WHOLE)
    return (host, "role" in names, "phase" in names)


def _plain_key(piece: _Piece, plain: _Plain, host: _Host, role: str, phase: str) -> tuple[Any, ...]:
    """The key of a piece for a host without vars: its layer is `host` alone."""
    fields, by_role, by_phase = plain
    if fields is None:
        part: Any = None
    elif fields is _WHOLE:
        part = host.name  # the namespace is the host's own
    else:
        ns = host.namespace
        part = tuple([frozen(ns[f]) if f in ns else _BASE for f in fields])
    return (piece, part, role if by_role else None, phase if by_phase else None)


def _layer_key(piece: _Piece, layer: dict[str, Any], role: str, phase: str) -> list[Any]:
    """One part per name the piece reads: its value from the host's layer, the
    role or the phase; `_BASE` for a name read from the base, the same for all."""
    parts: list[Any] = []
    for name in piece.names or ():
        if name in layer:
            value = layer[name]
            read = piece.fields.get(name)
            if read is not None and isinstance(value, Namespace):
                parts.append(tuple(frozen(value[f]) if f in value else _BASE for f in read))
            else:  # a Namespace read as a whole by identity: it is the host's own
                parts.append(frozen(value))
        elif name == "role":
            parts.append(role)
        elif name == "phase":
            parts.append(phase)
        else:  # the base's, the same for every host
            parts.append(_BASE)
    return parts


class _Block(NamedTuple):
    """What one host does as one role in one phase."""

    steps: list[model.Step]
    cleanup: list[model.Step]
    drains: tuple[model.Drain, ...]
    checks: tuple[model.Check, ...]
    version: model.VersionProbe | None
    policy: tuple[int, float, float] | None
    health: model.Health | None  # of `checks` and `policy`


class _Recipe:
    """The pieces a host of one role works through in one phase, in five
    groups (steps, cleanup, drains, checks, probes), and what is kept of
    them for hosts without vars: a piece's value when it reads nothing of
    `host` (`kept`), the whole block once every piece is kept."""

    __slots__ = ("block", "ends", "kept", "phase", "pieces", "policy", "role")

    def __init__(
        self,
        role: str,
        phase: str,
        groups: tuple[list[_Piece], ...],
        policy: tuple[int, float, float] | None,
    ) -> None:
        self.role, self.phase, self.policy = role, phase, policy
        self.pieces = [p for group in groups for p in group]
        ends, at = [], 0
        for group in groups:
            at += len(group)
            ends.append(at)
        self.ends = tuple(ends)
        self.kept: list[Any] = [_UNSET] * len(self.pieces)
        self.block: _Block | None = None

    def cut(
        self,
        values: list[Any],
        health_of: Callable[
            [tuple[model.Check, ...], list[tuple[int, float, float]]], model.Health
        ],
    ) -> _Block:
        """`values` (one per piece) as a block; `health_of` makes its Health."""
        a, b, c, d, e = self.ends
        checks = tuple(values[c:d])
        policy = self.policy
        return _Block(
            values[:a],
            values[a:b],
            tuple(values[b:c]),
            checks,
            values[d] if e > d else None,
            policy,
            health_of(checks, [policy]) if checks and policy is not None else None,
        )


_UNSET = object()
_BASE = object()


def _same(a: model.Step, b: model.Step) -> bool:
    return (a.action, a.undo, a.check) == (b.action, b.undo, b.check)


def _numbered(step: model.Step, step_id: str) -> model.Step:
    # by position: 40,000 host plans' steps
    return model.Step(
        step_id, step.name, step.action, step.undo, step.check, step.idempotent, step.become
    )
