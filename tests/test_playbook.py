"""The playbook: phase kinds, steps, sizes, gates, and the shipped playbooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InputError, NotFoundError
from orchestrator.playbook import (
    load_playbook,
    parse_playbook_text,
    resolve_playbook,
    shipped_playbooks,
)

HEAD = "name: t\nphases:\n"


def _phase_errors(phase: str) -> list[str]:
    with pytest.raises(InputError) as info:
        parse_playbook_text(HEAD + f"  - {phase}\n", "pb.yaml")
    return [str(p) for p in info.value.problems]


def test_shipped_playbooks_are_found_by_name() -> None:
    shipped = shipped_playbooks()

    assert {"nova", "ironic", "neutron", "hotfix"} <= set(shipped)
    assert resolve_playbook("nova") == shipped["nova"]


@pytest.mark.parametrize("name", ["nova", "ironic", "neutron", "hotfix"])
def test_every_shipped_playbook_parses(name: str) -> None:
    playbook, doc = load_playbook(name)

    assert playbook.name == name
    assert doc.name == f"playbooks/{name}.yaml"
    assert playbook.phases


def test_playbook_by_path_keeps_the_given_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(HEAD + "  - {name: a, once: c, steps: [{run: x}]}\n", encoding="utf-8")

    playbook, doc = load_playbook(str(path))

    assert doc.name == str(path)
    assert playbook.phases[0].kind == "once"


def test_unknown_playbook_name_suggests_a_shipped_one() -> None:
    with pytest.raises(NotFoundError) as info:
        resolve_playbook("nvoa")

    message = str(info.value)
    assert "(did you mean 'nova'?)" in message
    assert "shipped: " in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("ref", ["missing/nova.yaml", "nova.yml"])
def test_playbook_path_that_does_not_exist_is_an_input_error(ref: str) -> None:
    with pytest.raises(InputError) as info:
        resolve_playbook(ref)

    assert str(info.value) == f"{ref}: file not found"


def test_nova_playbook_shape() -> None:
    """Upstream order: new code first, placement before nova, db sync with the
    new code, services on the new code conductors first and APIs drained, data
    migrations last; nova has no contract step, so no point of no return."""
    playbook, _ = load_playbook("nova")
    names = [p.name for p in playbook.phases]
    phases = {p.name: p for p in playbook.phases}

    assert names == [
        "install-code",
        "sync-placement-db",
        "upgrade-placement",
        "migrate-placement-data",
        "sync-nova-db",
        "pin-rpc",
        "upgrade-conductors",
        "upgrade-apis",
        "upgrade-computes",
        "reset-rpc-pins",
        "migrate-data",
    ]
    assert not any(p.irreversible for p in playbook.phases)
    assert [p.name for p in playbook.phases if p.approve] == ["upgrade-conductors"]
    assert phases["install-code"].roles == ["placement", "conductor", "api", "compute"]
    sync = [s.run or "" for s in phases["sync-nova-db"].steps]
    assert "online_data_migrations" in sync[0] and "nova-{{ from_version }}" in sync[0]
    assert sync[1].endswith("nova-{{ to_version }}/bin/nova-manage api_db sync")
    assert "nova-{{ to_version }}/bin/nova-manage db sync" in sync[2]
    assert sync[3].endswith("nova-{{ to_version }}/bin/nova-status upgrade check")
    assert phases["sync-nova-db"].steps[3].ok_exit == [0, 1]  # 1 is a warning
    # every phase that restarts or reloads nova-api drains it
    for name in ("pin-rpc", "upgrade-apis", "reset-rpc-pins"):
        assert phases[name].drain is not False, name
        assert "api" in phases[name].roles
    assert phases["pin-rpc"].drain is phases["reset-rpc-pins"].drain is True
    assert phases["pin-rpc"].max_unavailable == {"conductor": 1, "api": 1, "compute": "25%"}
    assert phases["upgrade-computes"].batch == [1, "25%", "50%"]
    assert [g.all_at_target for g in phases["reset-rpc-pins"].gate] == [True]
    # nova-manage db online_data_migrations: 0 done, 1 ran some and more may
    # remain (run again), 2 errors and nothing else could progress, 127 bad input
    for name in ("migrate-placement-data", "migrate-data"):
        step = phases[name].steps[0]
        assert "online_data_migrations --max-count 1000" in (step.run or "")
        assert (step.ok_exit, step.repeat_while_exit) == ([0], [1])
        assert step.repeat_interval == 2.0


def test_neutron_playbook_shape() -> None:
    """Expand with the new code, servers then agents, and a contract that stops
    the servers only when has_offline_migrations says it must."""
    playbook, _ = load_playbook("neutron")
    names = [p.name for p in playbook.phases]
    phases = {p.name: p for p in playbook.phases}

    assert names == [
        "install-code",
        "expand-db",
        "upgrade-servers",
        "upgrade-agents",
        "stop-servers-for-contract",
        "contract-db",
        "start-servers",
        "verify-contract",
    ]
    expand = phases["expand-db"].steps[0].run or ""
    assert expand.endswith("neutron-{{ to_version }}/bin/neutron-db-manage upgrade --expand")
    assert phases["upgrade-servers"].drain is None  # rolling: drained by default
    assert phases["upgrade-servers"].max_unavailable == 1
    stop = phases["stop-servers-for-contract"]
    assert (stop.kind, stop.approve, stop.irreversible) == ("all", True, False)
    assert "has_offline_migrations;" in (stop.steps[0].run or "")
    assert stop.steps[0].undo == "systemctl start{% for u in server_units %} {{ u }}{% endfor %}"
    contract = phases["contract-db"]
    assert [p.name for p in playbook.phases if p.irreversible] == ["contract-db"]
    assert (contract.kind, contract.max_failures) == ("once", 1)
    assert "has_offline_migrations" in (contract.steps[0].check or "")
    start = phases["start-servers"]
    assert (start.kind, start.health, start.verify_version) == ("all", True, None)
    verify = phases["verify-contract"].steps[0]
    assert (verify.run or "").endswith("has_offline_migrations")
    assert verify.ok_exit == [0]


def test_phase_defaults() -> None:
    playbook, _ = parse_playbook_text(HEAD + "  - {name: a, rolling: c, steps: [{run: x}]}\n")
    phase = playbook.phases[0]

    assert playbook.on_failure == "rollback"
    assert phase.kind == "rolling"
    assert phase.roles == ["c"]
    assert phase.zones == "separate"
    assert phase.max_failures == 0
    assert (phase.drain, phase.health, phase.verify_version) == (None, None, None)
    assert phase.steps[0].ok_exit == [0]
    assert phase.steps[0].repeat_max == 1000


def test_all_accepts_a_single_role_as_a_string() -> None:
    playbook, _ = parse_playbook_text(HEAD + "  - {name: a, all: c, steps: [{run: x}]}\n")

    assert playbook.phases[0].all == ["c"]


def test_gate_shorthand_and_list() -> None:
    playbook, _ = parse_playbook_text(
        HEAD
        + "  - {name: a, once: c, gate: [all_at_target, {run: ok, on: d}], steps: [{run: x}]}\n"
    )
    gates = playbook.phases[0].gate

    assert gates[0].all_at_target is True
    assert (gates[1].run, gates[1].on, gates[1].expect_exit) == ("ok", "d", 0)


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (
            "{name: a, once: c, all: [d], steps: [{run: x}]}",
            "pb.yaml:3:5: phases[0]: a phase is exactly one of 'once', 'all', 'rolling', "
            "got once, all",
        ),
        (
            "{name: a, steps: [{run: x}]}",
            "pb.yaml:3:5: phases[0]: a phase is exactly one of 'once', 'all', 'rolling'",
        ),
        (
            "{name: a, rolling: c, host: h, steps: [{run: x}]}",
            "pb.yaml:3:27: phases[0].host: 'host' only applies to a 'once' phase",
        ),
        (
            "{name: a, once: c, batch: 2, steps: [{run: x}]}",
            "pb.yaml:3:24: phases[0].batch: a 'once' phase runs on one host; 'batch' does not "
            "apply",
        ),
        (
            "{name: a, all: [], steps: [{run: x}]}",
            "pb.yaml:3:15: phases[0].all: 'all' needs at least one role",
        ),
        (
            "{name: a, rolling: c, batch: 0, steps: [{run: x}]}",
            "pb.yaml:3:27: phases[0].batch: batch of 0 would never move a host; use at least 1",
        ),
        (
            "{name: a, rolling: c, batch: '150%', steps: [{run: x}]}",
            "pb.yaml:3:27: phases[0].batch: batch '150%' is over 100%",
        ),
        (
            "{name: a, rolling: c, batch: [], steps: [{run: x}]}",
            "pb.yaml:3:27: phases[0].batch: a batch ramp needs at least one size",
        ),
        (
            "{name: a, rolling: c, max_unavailable: 0, steps: [{run: x}]}",
            "pb.yaml:3:27: phases[0].max_unavailable: max_unavailable of 0 would never move a "
            "host; use at least 1",
        ),
        (
            "{name: a, rolling: c, max_unavailable: {d: 1}, steps: [{run: x}]}",
            "pb.yaml:3:45: phases[0].max_unavailable.d: max_unavailable names role 'd', which "
            "this phase does not touch",
        ),
        (
            "{name: a, once: c, gate: all_at_targt, steps: [{run: x}]}",
            "pb.yaml:3:24: phases[0].gate: unknown gate 'all_at_targt' "
            "(did you mean 'all_at_target'?)",
        ),
        (
            "{name: a, once: c, gate: {all_at_target: false}, steps: [{run: x}]}",
            "pb.yaml:3:24: phases[0].gate[0]: 'all_at_target: false' is not a gate; remove it",
        ),
        (
            "{name: a, once: c, irreversible: true, steps: [{run: x}]}",
            "pb.yaml:3:24: phases[0].irreversible: phase 'a' is irreversible but has no gate "
            "before it; add 'gate: all_at_target' (and 'approve: true')",
        ),
        (
            "{name: 'a b', once: c, steps: [{run: x}]}",
            "pb.yaml:3:6: phases[0].name: 'a b' is not a valid phase name",
        ),
        (
            "{name: a, once: c, steps: []}",
            "pb.yaml:3:24: phases[0].steps: must not be empty",
        ),
    ],
)
def test_phase_errors(phase: str, expected: str) -> None:
    assert _phase_errors(phase) == [expected]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("{}", "a step needs one of 'run', 'config', 'wait'"),
        (
            "{run: x, wait: 5}",
            "a step takes only one of 'run', 'config', 'wait', got run, wait",
        ),
        (
            "{run: x, ok_exit: [0, 1], repeat_while_exit: [1]}",
            "exit status 1 is in both 'ok_exit' and 'repeat_while_exit'",
        ),
        ("{wait: 5m, check: x}", "'ok_exit', 'repeat_while_exit' and 'check' apply to 'run' steps"),
        (
            "{config: {file: f, section: s, key: k, value: v}, undo: x}",
            "a 'config' step is undone automatically; remove 'undo'",
        ),
    ],
)
def test_step_errors_point_at_the_step(step: str, message: str) -> None:
    assert _phase_errors(f"{{name: a, once: c, steps: [{step}]}}") == [
        f"pb.yaml:3:32: phases[0].steps[0]: {message}"
    ]


def test_config_needs_a_value_unless_absent() -> None:
    missing = "{name: a, once: c, steps: [{config: {file: f, section: s, key: k}}]}"
    absent_with_value = (
        "{name: a, once: c, steps: [{config: {file: f, section: s, key: k, value: v, "
        "state: absent}}]}"
    )

    assert _phase_errors(missing) == [
        "pb.yaml:3:33: phases[0].steps[0].config: 'config' needs 'value' (or 'state: absent')"
    ]
    assert _phase_errors(absent_with_value) == [
        "pb.yaml:3:33: phases[0].steps[0].config: 'config' with 'state: absent' takes no 'value'"
    ]


def test_unknown_step_field_suggests() -> None:
    errors = _phase_errors("{name: a, once: c, steps: [{run: x, undoo: y}]}")

    assert errors == [
        "pb.yaml:3:41: phases[0].steps[0].undoo: unknown field 'undoo' (did you mean 'undo'?)"
    ]


def test_duplicate_phase_names_name_the_first_line() -> None:
    text = (
        HEAD
        + "  - {name: a, once: c, steps: [{run: x}]}\n  - {name: a, once: c, steps: [{run: y}]}\n"
    )

    with pytest.raises(InputError) as info:
        parse_playbook_text(text, "pb.yaml")

    assert [str(p) for p in info.value.problems] == [
        "pb.yaml:4:6: phases[1].name: duplicate phase name 'a' (first used on line 3)"
    ]


def test_on_failure_must_be_known() -> None:
    text = "name: t\non_failure: stop\nphases:\n  - {name: a, once: c, steps: [{run: x}]}\n"

    with pytest.raises(InputError) as info:
        parse_playbook_text(text, "pb.yaml")

    assert [str(p) for p in info.value.problems] == [
        "pb.yaml:2:1: on_failure: must be one of 'rollback' or 'pause', got str 'stop'"
    ]


def test_playbook_vars_cannot_set_from_version() -> None:
    text = (
        "name: t\nvars: {from_version: '1', x: 1}\n"
        "phases:\n  - {name: a, once: c, steps: [{run: x}]}\n"
    )

    with pytest.raises(InputError) as info:
        parse_playbook_text(text, "pb.yaml")

    assert [str(p) for p in info.value.problems] == [
        "pb.yaml:2:8: vars.from_version: 'from_version' is reserved for the template context"
    ]


def test_playbook_must_be_a_mapping() -> None:
    with pytest.raises(InputError, match="a playbook must be a mapping"):
        parse_playbook_text("- a\n", "pb.yaml")
