"""Property tests of batching, through the real compiler.

Random inventories and batch settings are written out as YAML text, parsed
and compiled exactly as `orchestrator plan` does, and the batches of the
compiled plan are checked against an independent oracle: exact fractions
instead of floats, rules taken from docs/batching.md rather than from
orchestrator/batching.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from orchestrator import model
from orchestrator.errors import InputError
from orchestrator.inventory import parse_inventory_text
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import parse_playbook_text

ROLES = ("conductor", "api", "compute")
OPTIONS = Options(to_version="2.0", from_version="1.0")
PROPERTY = settings(max_examples=150, deadline=None)

Size = int | str
Kind = Literal["rolling", "all"]
Zones = Literal["separate", "mixed"]


@dataclass(frozen=True, slots=True)
class HostSpec:
    name: str
    zone: str | None
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One inventory and one phase, as an operator would write them."""

    hosts: tuple[HostSpec, ...]
    kind: Kind
    roles: tuple[str, ...]
    batch: Size | list[Size] | None
    max_unavailable: Size | dict[str, Size] | None
    zones: Zones

    def inventory_yaml(self) -> str:
        """Block style at the top, one flow mapping per host, as operators write it."""
        lines = ["name: prop", "hosts:"]
        for i, h in enumerate(self.hosts):
            zone = f", zone: {h.zone}" if h.zone is not None else ""
            address = f"10.0.{i // 200}.{i % 200 + 1}"
            lines.append(f"  {h.name}: {{address: {address}, roles: [{', '.join(h.roles)}]{zone}}}")
        return "\n".join(lines) + "\n"

    def playbook_yaml(self) -> str:
        kind = self.roles[0] if self.kind == "rolling" else f"[{', '.join(self.roles)}]"
        lines = [
            "name: prop",
            "phases:",
            "  - name: upgrade",
            f"    {self.kind}: {kind}",
            "    steps:",
            '      - run: "systemctl restart svc-{{ role }} --host {{ host.name }}"',
            f"    zones: {self.zones}",
        ]
        # JSON is YAML: quoted percentages, plain counts, flow lists and mappings
        if self.batch is not None:
            lines.append(f"    batch: {json.dumps(self.batch)}")
        if self.max_unavailable is not None:
            lines.append(f"    max_unavailable: {json.dumps(self.max_unavailable)}")
        return "\n".join(lines) + "\n"

    def compile(self) -> model.Plan:
        inv, inv_doc = parse_inventory_text(self.inventory_yaml(), "inv.yaml")
        pb, pb_doc = parse_playbook_text(self.playbook_yaml(), "pb.yaml")
        return compile_plan(inv, inv_doc, pb, pb_doc, OPTIONS)

    # --- the oracle --------------------------------------------------------

    def members(self) -> list[HostSpec]:
        return [h for h in self.hosts if set(self.roles) & set(h.roles)]

    def phase_roles(self, host: HostSpec) -> tuple[str, ...]:
        return tuple(r for r in self.roles if r in host.roles)

    def limits(self) -> dict[str, int]:
        """Per role of the phase that has one: max_unavailable as a count, rounded down."""
        out: dict[str, int] = {}
        for role in self.roles:
            raw = self.max_unavailable
            if isinstance(raw, dict):
                raw = raw.get(role)
            if raw is not None:
                total = sum(1 for h in self.hosts if role in h.roles)
                out[role] = count_of(raw, total, round_up=False)
        return out

    def ramp(self) -> list[Size]:
        if self.batch is None:
            return [1] if self.kind == "rolling" else ["100%"]
        return self.batch if isinstance(self.batch, list) else [self.batch]

    def wanted(self, index: int) -> int:
        """The size batch `index` (0-based, across zones) asks for, rounded up, min 1."""
        ramp = self.ramp()
        size = ramp[min(index, len(ramp) - 1)]
        return max(1, count_of(size, len(self.members()), round_up=True))

    def group(self, host: HostSpec) -> str | None:
        return host.zone if self.zones == "separate" else None

    def expected_order(self) -> list[str]:
        """Inventory order, zones one after another in order of first appearance."""
        members = self.members()
        first: dict[str | None, int] = {}
        for h in members:
            first.setdefault(self.group(h), len(first))
        return [h.name for h in sorted(members, key=lambda h: first[self.group(h)])]


def count_of(size: Size, total: int, *, round_up: bool) -> int:
    if isinstance(size, int):
        return min(size, total)
    exact = Fraction(size.rstrip("%")) * total / 100
    return min(math.ceil(exact) if round_up else math.floor(exact), total)


# --- strategies --------------------------------------------------------------

counts = st.integers(min_value=1, max_value=70)
percentages = st.one_of(
    st.integers(min_value=1, max_value=100).map(lambda p: f"{p}%"),
    st.tuples(st.integers(0, 99), st.integers(1, 9)).map(lambda t: f"{t[0]}.{t[1]}%"),
)
sizes = st.one_of(counts, percentages)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(min_value=1, max_value=60))
    zone_names = [f"az{z}" for z in range(1, draw(st.integers(0, 4)) + 1)]
    zone_of = st.sampled_from([None, *zone_names]) if zone_names else st.none()
    # names not in sorted order, so "inventory order" and "sorted" differ
    order = draw(st.permutations(range(n)))
    zones_drawn = draw(st.lists(zone_of, min_size=n, max_size=n))
    # a non-empty subset of ROLES per host, as a bit mask: cheap to draw and shrink
    masks = draw(st.lists(st.integers(1, 2 ** len(ROLES) - 1), min_size=n, max_size=n))
    hosts = tuple(
        HostSpec(
            name=f"h{order[i]:02d}",
            zone=zone,
            roles=tuple(r for bit, r in enumerate(ROLES) if mask & (1 << bit)),
        )
        for i, (mask, zone) in enumerate(zip(masks, zones_drawn, strict=True))
    )
    held = [r for r in ROLES if any(r in h.roles for h in hosts)]
    kind: Kind = draw(st.sampled_from(["rolling", "all"]))
    if kind == "rolling":
        roles: tuple[str, ...] = (draw(st.sampled_from(held)),)
    else:
        roles = tuple(
            draw(st.lists(st.sampled_from(held), min_size=1, max_size=len(held), unique=True))
        )
    batch = draw(st.one_of(st.none(), sizes, st.lists(sizes, min_size=1, max_size=4)))
    max_unavailable = draw(
        st.one_of(
            st.none(),
            sizes,
            st.dictionaries(st.sampled_from(roles), sizes, min_size=1),
        )
    )
    zones: Zones = draw(st.sampled_from(["separate", "mixed"]))
    return Scenario(hosts, kind, roles, batch, max_unavailable, zones)


# --- properties --------------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_batches_honour_sizes_limits_and_zones(s: Scenario) -> None:
    note(s.inventory_yaml())
    note(s.playbook_yaml())
    limits = s.limits()
    if any(limit == 0 for limit in limits.values()):
        with pytest.raises(InputError, match="rounds down to 0"):
            s.compile()
        return

    plan = s.compile()
    (phase,) = plan.phases
    assert phase.max_unavailable == tuple(limits.items())
    batches = [[hp.host for hp in b.hosts] for b in phase.batches]
    flat = [name for names in batches for name in names]
    members = s.members()
    by_name = {h.name: h for h in members}

    # every host of the phase exactly once, in inventory order within a zone
    assert sorted(flat) == sorted(h.name for h in members)
    assert len(flat) == len(set(flat))
    for zone in {h.zone for h in members}:
        assert [n for n in flat if by_name[n].zone == zone] == [
            h.name for h in members if h.zone == zone
        ]
    assert flat == s.expected_order()

    for i, (batch, names) in enumerate(zip(phase.batches, batches, strict=True)):
        assert batch.index == i + 1
        assert names, f"batch {i + 1} is empty"
        assert batch.canary == (i == 0 and len(batches) > 1 and s.kind == "rolling")
        # the host plan holds the phase's roles of that host, one rendered step each
        for hp in batch.hosts:
            host_roles = s.phase_roles(by_name[hp.host])
            assert hp.roles == host_roles
            assert [step.action for step in hp.steps] == [
                model.RunAction(
                    command=f"systemctl restart svc-{r} --host {hp.host}", timeout=600.0
                )
                for r in host_roles
            ]

        # no batch holds more hosts of a role than the role's limit
        counts = {r: sum(1 for n in names if r in by_name[n].roles) for r in s.roles}
        for role, limit in limits.items():
            assert counts[role] <= limit, f"batch {i + 1}: {counts[role]} {role} > {limit}"

        # zones separate: one zone per batch, and the batch says which
        if s.zones == "separate":
            (zone,) = {by_name[n].zone for n in names}
            assert batch.zone == zone

        # ramp: at most the wanted size, and exactly that unless something stopped it
        wanted = s.wanted(i)
        assert len(names) <= wanted
        if len(names) < wanted and i + 1 < len(batches):
            following = by_name[batches[i + 1][0]]
            zone_ended = s.group(following) != s.group(by_name[names[-1]])
            capped = any(counts[r] + 1 > limits[r] for r in s.phase_roles(following) if r in limits)
            assert zone_ended or capped, (
                f"batch {i + 1} has {len(names)} of {wanted} hosts, "
                f"but {following.name} fits and is in the same zone"
            )


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.data())
def test_max_unavailable_rounding_to_zero_is_an_input_error(
    s: Scenario, data: st.DataObject
) -> None:
    role = data.draw(st.sampled_from(s.roles), label="role")
    total = sum(1 for h in s.hosts if role in h.roles)
    # the largest whole percentage that still rounds down to 0 hosts (>= 1: total <= 60)
    below = math.ceil(100 / total) - 1
    pct = data.draw(st.integers(min_value=1, max_value=below), label="percent")
    s = Scenario(s.hosts, s.kind, s.roles, s.batch, {role: f"{pct}%"}, s.zones)
    note(s.playbook_yaml())
    with pytest.raises(InputError) as raised:
        s.compile()
    (problem,) = raised.value.problems
    assert problem.file == "pb.yaml"
    assert problem.field == f"phases[0].max_unavailable.{role}"
    assert "rounds down to 0" in problem.message
    assert f"of {total} '{role}' host" in problem.message


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_compile_is_deterministic_and_round_trips(s: Scenario) -> None:
    assume(0 not in s.limits().values())  # a limit rounding to 0 is covered above
    plan = s.compile()
    again = s.compile()
    assert again == plan
    assert again.digest == plan.digest
    text = model.to_json(plan)
    back = model.from_json(text)
    assert back == plan
    assert back.digest == plan.digest
    assert model.to_json(back) == text
