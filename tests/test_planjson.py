"""The plan's JSON forms, written by planjson, against what pydantic and
json.dumps give for the same plan: byte for byte, because journals keep
plans and their digests forever."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pydantic_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import model, planjson
from orchestrator.inventory import load_inventory, parse_inventory_text
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import load_playbook, parse_playbook_text

SHIPPED = {
    "nova": Options(to_version="2026.1"),
    "ironic": Options(to_version="2026.1"),
    "neutron": Options(to_version="2026.1"),
    "hotfix": Options(from_version="2025.2", to_version="2025.2.1"),
}


def _oracle_canonical(plan: model.Plan) -> bytes:
    """The canonical form as it was first defined: pydantic's JSON data, json.dumps."""
    data = model.to_data(plan)
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _oracle_json(plan: model.Plan, indent: int | None = 2) -> str:
    digest = hashlib.sha256(_oracle_canonical(plan)).hexdigest()
    return pydantic_core.to_json({"digest": digest, **model.to_data(plan)}, indent=indent).decode()


def _assert_like_the_oracle(plan: model.Plan) -> None:
    assert model.canonical_bytes(plan) == _oracle_canonical(plan)
    assert plan.digest == hashlib.sha256(_oracle_canonical(plan)).hexdigest()
    assert model.to_json(plan) == _oracle_json(plan)
    assert model.to_json(plan, indent=None) == _oracle_json(plan, indent=None)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_plans_are_written_as_pydantic_and_json_dumps_write_them(
    name: str, repo_root: Path
) -> None:
    inv, inv_doc = load_inventory("inventory.example.yaml")
    pb, pb_doc = load_playbook(name)
    plan = compile_plan(inv, inv_doc, pb, pb_doc, SHIPPED[name])

    _assert_like_the_oracle(plan)
    assert "".join(model.json_chunks(plan)) == model.to_json(plan)


def test_chunks_stop_at_host_plans() -> None:
    plan = _plan(hosts=3)

    chunks = list(model.json_chunks(plan))

    host_chunks = [c for c in chunks if '"host": "h-' in c]
    assert len(host_chunks) == 3  # one piece per host plan
    assert all(c.count('"host": "h-') == 1 for c in host_chunks)


# --- random plans ---------------------------------------------------------------

TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]),  # no lone surrogates: not UTF-8
    max_size=12,
)
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-7, 1e-5, 1e16, 1.5e300, 5e-324, 0.1, 2.5, 600.0]),
    st.floats(allow_nan=False, allow_infinity=True),
)
INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _run() -> st.SearchStrategy[model.RunAction]:
    return st.builds(
        model.RunAction,
        command=TEXT,
        ok_exit=st.lists(INTS, max_size=2).map(tuple),
        repeat_while_exit=st.lists(INTS, max_size=2).map(tuple),
        repeat_interval=FLOATS,
        repeat_max=INTS,
        timeout=FLOATS,
    )


ACTIONS = st.one_of(
    _run(),
    st.builds(model.ConfigAction, file=TEXT, section=TEXT, key=TEXT, value=st.none() | TEXT),
    st.builds(model.WaitAction, seconds=FLOATS),
)
DRAINS = st.one_of(
    st.builds(
        model.LoadBalancerDrain, load_balancer=TEXT, server=TEXT, backend=TEXT, timeout=FLOATS
    ),
    st.builds(model.RunDrain, run=TEXT, undo=TEXT, wait_until=st.none() | TEXT, timeout=FLOATS),
    st.builds(model.HttpDrain, url=TEXT, undo_url=TEXT, method=TEXT, timeout=FLOATS),
)
CHECKS = st.one_of(
    st.builds(
        model.HttpCheck,
        url=TEXT,
        expect_status=INTS,
        json_path=st.none() | TEXT,
        expect=st.none() | TEXT,
        timeout=FLOATS,
    ),
    st.builds(model.TcpCheck, address=TEXT, port=INTS, timeout=FLOATS),
    st.builds(model.CommandCheck, run=TEXT, timeout=FLOATS),
)
PROBES = st.builds(
    model.VersionProbe,
    http=st.none() | TEXT,
    json_path=st.none() | TEXT,
    run=st.none() | TEXT,
    timeout=FLOATS,
    releases=st.lists(st.tuples(TEXT, TEXT), max_size=2).map(tuple),  # empty: left out
)
STEPS = st.builds(
    model.Step,
    id=TEXT,
    name=TEXT,
    action=ACTIONS,
    undo=st.none() | _run(),
    check=st.none() | TEXT,
    idempotent=st.booleans(),
    become=st.booleans(),
)


@st.composite
def _host_plans(draw: st.DrawFn) -> model.HostPlan:
    checks = draw(st.lists(CHECKS, max_size=3).map(tuple))
    return model.HostPlan(
        host=draw(TEXT),
        roles=tuple(draw(st.lists(TEXT, max_size=2))),
        steps=tuple(draw(st.lists(STEPS, max_size=3))),
        cleanup=tuple(draw(st.lists(STEPS, max_size=1))),
        drains=tuple(draw(st.lists(DRAINS, max_size=2))),
        health=model.Health(
            checks=checks, passes=draw(INTS), interval=draw(FLOATS), deadline=draw(FLOATS)
        )
        if checks
        else None,
        version=draw(st.none() | PROBES),
    )


@st.composite
def _plans(draw: st.DrawFn) -> model.Plan:
    shared = draw(_host_plans())  # the same object in several places, as compiled
    batches = tuple(
        model.Batch(
            index=i,
            zone=draw(st.none() | TEXT),
            hosts=(shared, *draw(st.lists(_host_plans(), max_size=2))),
            canary=draw(st.booleans()),
        )
        for i in range(draw(st.integers(1, 2)))
    )
    phase = model.Phase(
        name=draw(TEXT),
        kind=draw(st.sampled_from(["once", "all", "rolling"])),
        roles=tuple(draw(st.lists(TEXT, max_size=2))),
        batches=batches,
        description=draw(st.none() | TEXT),
        batch_sizes=tuple(draw(st.lists(TEXT, max_size=2))),
        max_unavailable=tuple(draw(st.lists(st.tuples(TEXT, INTS), max_size=2))),
        batch_pause=draw(FLOATS),
        gates=tuple(
            draw(
                st.lists(
                    st.builds(
                        model.Gate,
                        kind=st.sampled_from(["all_at_target", "command"]),
                        run=st.none() | TEXT,
                        host=st.none() | TEXT,
                        expect_exit=INTS,
                        probes=st.lists(st.tuples(TEXT, PROBES), max_size=2).map(tuple),
                    ),
                    max_size=2,
                )
            )
        ),
        notes=tuple(draw(st.lists(TEXT, max_size=2))),
    )
    return model.Plan(
        name=draw(TEXT),
        from_version=draw(TEXT),
        to_version=draw(TEXT),
        inventory=draw(TEXT),
        on_failure=draw(st.sampled_from(["rollback", "pause"])),
        hosts=(),
        load_balancers=(),
        phases=(phase,),
        secrets=tuple(draw(st.lists(st.tuples(TEXT, TEXT, TEXT), max_size=2))),
        warnings=tuple(draw(st.lists(TEXT, max_size=2))),
    )


@settings(max_examples=200, deadline=None)
@given(_plans())
def test_random_plans_are_written_as_pydantic_and_json_dumps_write_them(
    plan: model.Plan,
) -> None:
    _assert_like_the_oracle(plan)


@settings(max_examples=25, deadline=None)
@given(
    hosts=st.lists(
        st.tuples(st.sampled_from(["compute", "api"]), st.none() | st.sampled_from(["a", "b"])),
        max_size=10,
    ),
    note=st.text(st.characters(exclude_categories=["Cs", "Cc"], max_codepoint=0xFFFF)),
)
def test_plans_compiled_from_random_inventories_are_written_as_before(
    hosts: list[tuple[str, str | None]], note: str
) -> None:
    lines = [
        "vars: {from_version: '1.0', note: " + json.dumps(note) + "}",
        "roles:",
        "  compute: {health: [{tcp: '{{ host.address }}:22'}], version: {run: v}}",
        "  api: {drain: {run: 'off {{ host.name }}', undo: 'on {{ note }}'}}",
        "hosts:",
    ]
    # both roles held: a role defined for no host is an error
    for n, (role, zone) in enumerate([("compute", None), ("api", "a"), *hosts]):
        zone_text = f", zone: {zone}" if zone else ""
        lines.append(f"  h-{n}: {{address: 10.0.0.{n + 1}, roles: [{role}]{zone_text}}}")
    playbook = (
        "name: p\nphases:\n"
        "  - {name: go, rolling: compute, batch: 2,"
        " steps: [{run: 'up {{ note }} {{ host.name }}'}]}\n"
        "  - {name: all, all: [api, compute], steps: [{run: 'echo {{ to_version }}'}]}\n"
    )
    inv, inv_doc = parse_inventory_text("\n".join(lines) + "\n", "inv.yaml")
    pb, pb_doc = parse_playbook_text(playbook, "pb.yaml")

    _assert_like_the_oracle(compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2.0")))


# --- edges --------------------------------------------------------------------


def test_a_value_shared_at_two_depths_is_indented_for_each() -> None:
    probe = model.VersionProbe(run="v", releases=(("1", ">=1"),))
    plan = _plan(hosts=1, probe=probe, gate_probe=probe)

    _assert_like_the_oracle(plan)


def test_anything_a_plan_cannot_hold_is_refused_not_guessed() -> None:
    bad = model.RunAction(command=b"bytes")  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="a plan holds no bytes"):
        "".join(planjson.canonical_chunks(bad, ()))


def test_the_digest_is_kept_for_the_plan_and_leaves_with_it() -> None:
    plan = _plan(hosts=2)
    first = plan.digest

    assert plan.digest is first  # computed once
    key = id(plan)
    del plan
    assert key not in model._DIGESTS


def _plan(
    *, hosts: int, probe: model.VersionProbe | None = None, gate_probe: Any = None
) -> model.Plan:
    action = model.RunAction(command="apt-get install -y nova-compute=2.0")
    host_plans = tuple(
        model.HostPlan(
            host=f"h-{n}",
            roles=("compute",),
            steps=(model.Step(id=f"p/h-{n}/1", name="install", action=action),),
            version=probe,
        )
        for n in range(hosts)
    )
    gates = (model.Gate(kind="all_at_target", probes=(("h-0", gate_probe),)),) if gate_probe else ()
    phase = model.Phase(
        name="p",
        kind="rolling",
        roles=("compute",),
        batches=(model.Batch(index=1, zone=None, hosts=host_plans),),
        gates=gates,
    )
    return model.Plan(
        name="t",
        from_version="1.0",
        to_version="2.0",
        inventory="lab",
        on_failure="rollback",
        hosts=(),
        load_balancers=(),
        phases=(phase,),
    )


def test_pieces_are_gathered_into_megabytes_in_order() -> None:
    pieces = [f"{n:04d}" * 10 for n in range(100)]  # 40 characters each

    joined = list(planjson.gathered(pieces, size=100))

    assert "".join(joined) == "".join(pieces)
    assert [len(j) for j in joined] == [120] * 33 + [40]
    assert list(planjson.gathered([], size=100)) == []
