"""The plan compiler: host selection, batches, host procedures, gates, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from orchestrator import model
from orchestrator.errors import InputError
from orchestrator.inventory import load_inventory, parse_inventory_text
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import load_playbook, parse_playbook_text
from orchestrator.templating import Templates

INVENTORY = """\
name: lab
ssh: {user: stack, key: ~/.ssh/lab, become: sudo, command_timeout: 10m}
vars: {from_version: "1.0", conf: /etc/svc.conf}
secrets:
  db_password: {env: LAB_DB_PASSWORD}
load_balancers:
  lb: {address: "127.0.0.1:9999", backend: web}
roles:
  api:
    version: {http: "http://{{ host.address }}:8774/", json_path: version}
    health: [{http: "http://{{ host.address }}:8774/healthcheck"}]
    health_policy: {passes: 2, interval: 1s, deadline: 1m}
    drain: {load_balancer: lb}
  conductor:
    version: {run: "conductor --version"}
    health: [{run: "systemctl is-active conductor"}]
  compute:
    version: {run: "compute --version"}
    health: [{tcp: "{{ host.address }}:16509"}]
    drain: {run: "disable {{ host.name }}", undo: "enable {{ host.name }}"}
hosts:
  ctl-1: {address: 10.0.0.11, roles: [conductor, api]}
  ctl-2: {address: 10.0.0.12, roles: [conductor, api]}
  cmp-1: {address: 10.0.1.1, roles: [compute], zone: az1}
  cmp-2: {address: 10.0.1.2, roles: [compute], zone: az1}
  cmp-3: {address: 10.0.1.3, roles: [compute], zone: az2}
  cmp-4: {address: 10.0.1.4, roles: [compute], zone: az2,
          ssh: {port: 2222, user: admin, become: none}}
"""

OnFailure = Literal["rollback", "pause"]


def _compile(
    phases: str,
    *,
    inventory: str = INVENTORY,
    head: str = "name: lab\n",
    to: str = "2.0",
    from_version: str | None = None,
    on_failure: OnFailure | None = None,
) -> model.Plan:
    inv, inv_doc = parse_inventory_text(inventory, "inv.yaml")
    pb, pb_doc = parse_playbook_text(f"{head}phases:\n{phases}", "pb.yaml")
    options = Options(to_version=to, from_version=from_version, on_failure=on_failure)
    return compile_plan(inv, inv_doc, pb, pb_doc, options)


def _errors(phases: str, **kwargs: Any) -> list[str]:
    with pytest.raises(InputError) as info:
        _compile(phases, **kwargs)
    return [str(p) for p in info.value.problems]


def _hosts(phase: model.Phase) -> list[list[str]]:
    return [[h.host for h in b.hosts] for b in phase.batches]


def _host(phase: model.Phase, name: str) -> model.HostPlan:
    return next(h for b in phase.batches for h in b.hosts if h.host == name)


def _commands(host: model.HostPlan) -> list[str]:
    out = []
    for step in host.steps:
        action = step.action
        if isinstance(action, model.RunAction):
            out.append(action.command)
        elif isinstance(action, model.ConfigAction):
            out.append(f"config {action.key}={action.value}")
        else:
            out.append(f"wait {action.seconds}")
    return out


# --- host selection and batches --------------------------------------------------


def test_once_runs_on_the_first_host_of_the_role() -> None:
    plan = _compile("  - {name: db, once: conductor, steps: [{run: sync}]}\n")

    (phase,) = plan.phases
    assert phase.kind == "once"
    assert _hosts(phase) == [["ctl-1"]]
    assert phase.batches[0].canary is False


def test_once_host_override() -> None:
    plan = _compile("  - {name: db, once: conductor, host: ctl-2, steps: [{run: sync}]}\n")

    assert _hosts(plan.phases[0]) == [["ctl-2"]]


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("ctl-9", "unknown host 'ctl-9'"),
        ("cmp-1", "host 'cmp-1' does not have role 'conductor'"),
    ],
)
def test_once_host_must_hold_the_role(host: str, message: str) -> None:
    errors = _errors(f"  - {{name: db, once: conductor, host: {host}, steps: [{{run: s}}]}}\n")

    assert len(errors) == 1
    assert errors[0].startswith(f"pb.yaml:3:33: phases[0].host: {message}")


def test_all_takes_every_host_of_any_role_and_keeps_zones_apart() -> None:
    plan = _compile("  - {name: pin, all: [conductor, compute], steps: [{run: x}]}\n")

    (phase,) = plan.phases
    assert phase.batch_sizes == ("100%",)
    assert _hosts(phase) == [["ctl-1", "ctl-2"], ["cmp-1", "cmp-2"], ["cmp-3", "cmp-4"]]
    assert [b.zone for b in phase.batches] == [None, "az1", "az2"]
    assert not any(b.canary for b in phase.batches)


def test_all_with_mixed_zones_is_one_batch() -> None:
    plan = _compile("  - {name: pin, all: [compute], zones: mixed, steps: [{run: x}]}\n")

    assert _hosts(plan.phases[0]) == [["cmp-1", "cmp-2", "cmp-3", "cmp-4"]]
    assert plan.phases[0].batches[0].zone is None


def test_rolling_defaults_to_one_host_per_batch_with_a_canary() -> None:
    plan = _compile("  - {name: up, rolling: compute, steps: [{run: x}]}\n")

    (phase,) = plan.phases
    assert phase.batch_sizes == ("1",)
    assert _hosts(phase) == [["cmp-1"], ["cmp-2"], ["cmp-3"], ["cmp-4"]]
    assert [b.canary for b in phase.batches] == [True, False, False, False]
    assert [b.index for b in phase.batches] == [1, 2, 3, 4]


def test_ramp_is_cut_at_zone_boundaries_and_noted() -> None:
    plan = _compile("  - {name: up, rolling: compute, batch: [1, '50%'], steps: [{run: x}]}\n")

    (phase,) = plan.phases
    assert _hosts(phase) == [["cmp-1"], ["cmp-2"], ["cmp-3", "cmp-4"]]
    assert phase.notes == ("1 batch smaller than the batch size, limited by a zone boundary",)


def test_per_role_max_unavailable() -> None:
    plan = _compile(
        "  - name: pin\n"
        "    all: [conductor, api, compute]\n"
        "    max_unavailable: {api: 1, compute: '50%'}\n"
        "    zones: mixed\n"
        "    steps: [{run: x}]\n"
    )

    (phase,) = plan.phases
    assert phase.max_unavailable == (("api", 1), ("compute", 2))
    assert _hosts(phase) == [["ctl-1"], ["ctl-2", "cmp-1", "cmp-2"], ["cmp-3", "cmp-4"]]
    for batch in phase.batches:
        assert sum("api" in h.roles for h in batch.hosts) <= 1
        assert sum("compute" in h.roles for h in batch.hosts) <= 2


def test_max_unavailable_rounding_to_zero_is_an_error() -> None:
    errors = _errors(
        "  - {name: up, rolling: compute, max_unavailable: {compute: '20%'}, steps: [{run: x}]}\n"
    )

    assert errors == [
        "pb.yaml:3:52: phases[0].max_unavailable.compute: max_unavailable '20%' of 4 "
        "'compute' hosts rounds down to 0, which forbids any progress; allow at least 1 host"
    ]


def test_max_failures_percentage_rounds_down() -> None:
    plan = _compile("  - {name: up, rolling: compute, max_failures: '60%', steps: [{run: x}]}\n")

    assert plan.phases[0].max_failures == 2


def test_unknown_role_in_a_phase_suggests() -> None:
    errors = _errors("  - {name: up, all: [conductor, comput], steps: [{run: x}]}\n")

    assert errors == [
        "pb.yaml:3:33: phases[0].all[1]: no host has role 'comput' (did you mean 'compute'?)"
    ]


# --- what each host does ---------------------------------------------------------


def test_multi_role_host_gets_each_roles_steps_once() -> None:
    plan = _compile(
        "  - name: pin\n"
        "    all: [conductor, api, compute]\n"
        "    steps:\n"
        "      - config: {file: '{{ conf }}', section: s, key: pin, value: '{{ from_version }}'}\n"
        "      - run: restart {{ role }}\n"
        "      - run: echo {{ phase }}\n"
    )

    phase = plan.phases[0]
    ctl = _host(phase, "ctl-1")
    assert ctl.roles == ("conductor", "api")
    # the identical config and echo steps appear once; the restart once per role
    assert _commands(ctl) == ["config pin=1.0", "restart conductor", "echo pin", "restart api"]
    assert _commands(_host(phase, "cmp-1")) == ["config pin=1.0", "restart compute", "echo pin"]


def test_step_ids_are_unique_across_the_plan() -> None:
    plan = _compile(
        "  - name: a\n    all: [conductor, api]\n"
        "    steps: [{run: 'x {{ role }}'}, {run: y}]\n"
        "    cleanup: [{run: z}]\n"
        "  - {name: b, rolling: compute, steps: [{run: x}], cleanup: [{run: z}]}\n"
    )

    ids = [
        s.id
        for p in plan.phases
        for b in p.batches
        for h in b.hosts
        for s in (*h.steps, *h.cleanup)
    ]
    assert len(ids) == len(set(ids))
    assert [s.id for s in _host(plan.phases[0], "ctl-1").steps] == [
        "a/ctl-1/1",
        "a/ctl-1/2",
        "a/ctl-1/3",
    ]
    assert [s.id for s in _host(plan.phases[1], "cmp-2").cleanup] == ["b/cmp-2/cleanup-1"]


def test_step_ids_unique_in_the_shipped_nova_plan(repo_root: Path) -> None:
    inv, inv_doc = load_inventory("inventory.example.yaml")
    pb, pb_doc = load_playbook("nova")
    plan = compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2026.1"))

    ids = [s.id for p in plan.phases for b in p.batches for h in b.hosts for s in h.steps]
    assert len(ids) == len(set(ids)) > 50


def test_rolling_host_is_drained_health_checked_and_version_verified() -> None:
    plan = _compile("  - {name: up, rolling: compute, steps: [{run: x}]}\n")

    host = _host(plan.phases[0], "cmp-1")
    assert host.drains == (
        model.RunDrain(run="disable cmp-1", undo="enable cmp-1", wait_until=None, timeout=300.0),
    )
    assert host.health is not None
    assert host.health.checks == (model.TcpCheck(address="10.0.1.1", port=16509),)
    assert host.version == model.VersionProbe(run="compute --version")


@pytest.mark.parametrize("kind", ["once: conductor", "all: [conductor]"])
def test_once_and_all_skip_drain_health_and_version_by_default(kind: str) -> None:
    plan = _compile(f"  - {{name: p, {kind}, steps: [{{run: x}}]}}\n")

    host = _host(plan.phases[0], "ctl-1")
    assert (host.drains, host.health, host.version) == ((), None, None)


def test_flags_turn_drain_health_and_version_off_for_rolling() -> None:
    plan = _compile(
        "  - {name: up, rolling: compute, drain: false, health: false, verify_version: false,"
        " steps: [{run: x}]}\n"
    )

    host = _host(plan.phases[0], "cmp-1")
    assert (host.drains, host.health, host.version) == ((), None, None)


def test_flags_turn_drain_health_and_version_on_for_all() -> None:
    plan = _compile(
        "  - {name: p, all: [conductor, api], drain: true, health: true, verify_version: true,"
        " steps: [{run: x}]}\n"
    )

    host = _host(plan.phases[0], "ctl-1")
    assert host.drains == (
        model.LoadBalancerDrain(load_balancer="lb", server="ctl-1", backend="web", timeout=300.0),
    )
    assert host.health is not None
    assert [c.kind for c in host.health.checks] == ["command", "http"]
    # the strictest of the roles' policies: most passes, shortest interval, longest deadline
    assert (host.health.passes, host.health.interval, host.health.deadline) == (3, 1.0, 300.0)
    # one version probe per host: the first role that has one
    assert host.version == model.VersionProbe(run="conductor --version")


def test_step_details_timeouts_become_and_undo() -> None:
    plan = _compile(
        "  - name: up\n    rolling: compute\n    steps:\n"
        "      - run: install {{ to_version }}\n"
        "        undo: {run: 'install {{ from_version }}', timeout: 30s, ok_exit: [0, 100]}\n"
        "        check: test -e /v/{{ to_version }}\n"
        "      - {run: probe, timeout: 5s, become: false, ok_exit: [0, 3], name: probe it}\n"
        "      - {wait: 1m}\n"
        "      - config: {file: /f, section: s, key: debug, value: true}\n"
    )

    first, probe, wait, config = _host(plan.phases[0], "cmp-1").steps
    assert first.action == model.RunAction(command="install 2.0", timeout=600.0)
    assert first.undo == model.RunAction(command="install 1.0", ok_exit=(0, 100), timeout=30.0)
    assert first.check == "test -e /v/2.0"
    assert (first.name, first.become, first.idempotent) == ("install 2.0", True, False)
    assert probe.name == "probe it"
    assert probe.become is False
    assert probe.action == model.RunAction(command="probe", ok_exit=(0, 3), timeout=5.0)
    assert wait.action == model.WaitAction(seconds=60.0)
    assert wait.idempotent
    assert config.action == model.ConfigAction(file="/f", section="s", key="debug", value="true")
    # `become: none` on cmp-4 overrides the inventory's sudo
    assert _host(plan.phases[0], "cmp-4").steps[0].become is False


def test_inventory_values_are_shell_quoted_in_commands() -> None:
    inventory = INVENTORY.replace("conf: /etc/svc.conf", 'conf: "/etc/my svc.conf"')

    plan = _compile(
        "  - {name: p, once: conductor, steps: [{run: 'cat {{ conf }}'}]}\n", inventory=inventory
    )

    assert _commands(_host(plan.phases[0], "ctl-1")) == ["cat '/etc/my svc.conf'"]


# --- gates and the point of no return -------------------------------------------


def test_all_at_target_gate_collects_one_probe_per_probed_host() -> None:
    inventory = INVENTORY.replace(
        "hosts:\n", "hosts:\n  db-1: {address: 10.0.0.5, roles: [database]}\n"
    )
    plan = _compile(
        "  - {name: up, rolling: compute, steps: [{run: x}]}\n"
        "  - {name: up-ctl, rolling: conductor, steps: [{run: x}]}\n"
        "  - {name: done, once: conductor, gate: all_at_target, steps: [{run: x}]}\n",
        inventory=inventory,
    )

    (gate,) = plan.phases[2].gates
    assert gate.kind == "all_at_target"
    probes = dict(gate.probes)
    # db-1 has no probe; ctl hosts (conductor and api) get one probe each
    assert list(probes) == ["ctl-1", "ctl-2", "cmp-1", "cmp-2", "cmp-3", "cmp-4"]
    assert probes["ctl-1"] == model.VersionProbe(run="conductor --version")
    assert probes["cmp-3"] == model.VersionProbe(run="compute --version")


def test_all_at_target_probes_the_roles_this_playbook_upgrades() -> None:
    """A host holding roles of several services is checked with the probe of the
    service being upgraded, and hosts the playbook never touches are not probed:
    a neutron upgrade must not wait for nova-compute to report neutron's version."""
    plan = _compile(
        "  - {name: up, rolling: api, steps: [{run: x}]}\n"
        "  - {name: done, once: api, gate: all_at_target, steps: [{run: x}]}\n"
    )

    (gate,) = plan.phases[1].gates
    assert dict(gate.probes) == {
        "ctl-1": model.VersionProbe(http="http://10.0.0.11:8774/", json_path="version"),
        "ctl-2": model.VersionProbe(http="http://10.0.0.12:8774/", json_path="version"),
    }


def test_all_at_target_without_any_probe_is_an_error() -> None:
    inventory = "vars: {from_version: '1.0'}\nhosts:\n  a: {address: x, roles: [c]}\n"

    errors = _errors(
        "  - {name: done, once: c, gate: all_at_target, steps: [{run: x}]}\n", inventory=inventory
    )

    assert len(errors) == 1
    assert errors[0].startswith("pb.yaml:3:27: phases[0].gate[0]: gate 'all_at_target' needs")


@pytest.mark.parametrize(
    ("phase", "host"),
    [
        ("{name: g, once: conductor, gate: {run: check}, steps: [{run: x}]}", "ctl-1"),
        ("{name: g, once: conductor, host: ctl-2, gate: {run: check}, steps: [{run: x}]}", "ctl-2"),
        (
            "{name: g, once: conductor, host: ctl-2, gate: {run: check, on: compute},"
            " steps: [{run: x}]}",
            "cmp-1",
        ),
        ("{name: g, rolling: compute, gate: {run: check, on: api}, steps: [{run: x}]}", "ctl-1"),
        ("{name: g, all: [compute, conductor], gate: {run: check}, steps: [{run: x}]}", "cmp-1"),
    ],
)
def test_command_gate_host_selection(phase: str, host: str) -> None:
    plan = _compile(f"  - {phase}\n")

    (gate,) = plan.phases[0].gates
    assert gate == model.Gate(kind="command", run="check", host=host, expect_exit=0)


def test_command_gate_is_rendered_for_its_host_and_unknown_on_role_is_located() -> None:
    plan = _compile(
        "  - {name: g, once: api, gate: {run: 'ping {{ host.address }}', expect_exit: 1},"
        " steps: [{run: x}]}\n"
    )
    assert plan.phases[0].gates[0].run == "ping 10.0.0.11"
    assert plan.phases[0].gates[0].expect_exit == 1

    errors = _errors("  - {name: g, once: api, gate: {run: c, on: computer}, steps: [{run: x}]}\n")
    assert errors == [
        "pb.yaml:3:26: phases[0].gate[0].on: no host has role 'computer' (did you mean 'compute'?)"
    ]


def test_irreversible_phase() -> None:
    plan = _compile(
        "  - {name: expand, once: conductor, steps: [{run: x}]}\n"
        "  - {name: contract, once: conductor, gate: all_at_target, approve: true,"
        " irreversible: true, steps: [{run: y}]}\n"
    )
    assert plan.irreversible_phase() is plan.phases[1]
    assert plan.phases[1].approve

    reversible = _compile("  - {name: expand, once: conductor, steps: [{run: x}]}\n")
    assert reversible.irreversible_phase() is None


# --- warnings, options, versions ------------------------------------------------


def test_warnings_for_missing_drain_health_and_draining_everything() -> None:
    inventory = INVENTORY.replace(
        "hosts:\n", "  bare: {}\nhosts:\n  bare-1: {address: 10.0.9.1, roles: [bare]}\n"
    )
    plan = _compile(
        "  - {name: a, rolling: bare, steps: [{run: x}]}\n"
        "  - {name: b, rolling: api, batch: '100%', steps: [{run: x}]}\n",
        inventory=inventory,
    )

    assert plan.warnings == (
        "phase a: role 'bare' has no drain; its hosts stay in service",
        "phase a: role 'bare' has no health checks",
        "phase b: one batch drains every 'api' host at once",
    )


def test_no_warnings_for_a_careful_rolling_phase() -> None:
    plan = _compile("  - {name: up, rolling: compute, steps: [{run: x}]}\n")

    assert plan.warnings == ()


@pytest.mark.parametrize(
    ("option", "expected"), [(None, "pause"), ("rollback", "rollback"), ("pause", "pause")]
)
def test_on_failure_option_overrides_the_playbook(option: OnFailure | None, expected: str) -> None:
    plan = _compile(
        "  - {name: a, once: conductor, steps: [{run: x}]}\n",
        head="name: lab\non_failure: pause\n",
        on_failure=option,
    )

    assert plan.on_failure == expected


def test_secrets_stay_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_DB_PASSWORD", "hunter2-very-secret")

    plan = _compile(
        "  - name: a\n    once: conductor\n"
        "    steps: [{run: 'db --password {{ secrets.db_password }}'}]\n"
    )

    assert plan.secrets == (("db_password", "env", "LAB_DB_PASSWORD"),)
    assert _commands(_host(plan.phases[0], "ctl-1")) == ["db --password @@secret:db_password@@"]
    text = model.to_json(plan)
    assert "hunter2-very-secret" not in text
    assert "@@secret:db_password@@" in text


def test_host_targets_merge_ssh_overrides() -> None:
    plan = _compile("  - {name: a, once: conductor, steps: [{run: x}]}\n")

    ctl, cmp4 = plan.host("ctl-1"), plan.host("cmp-4")
    assert (ctl.user, ctl.port, ctl.become, ctl.key) == ("stack", 22, "sudo", "~/.ssh/lab")
    assert (cmp4.user, cmp4.port, cmp4.become, cmp4.key) == ("admin", 2222, "none", "~/.ssh/lab")
    assert cmp4.zone == "az2"
    assert cmp4.verify_host_keys is True
    assert cmp4.command_timeout == 600.0
    assert [h.name for h in plan.hosts] == ["ctl-1", "ctl-2", "cmp-1", "cmp-2", "cmp-3", "cmp-4"]
    assert plan.load_balancers == (
        model.LoadBalancerTarget(
            name="lb", driver="haproxy", backend="web", host=None, socket=None,
            address="127.0.0.1:9999",
        ),
    )  # fmt: skip
    with pytest.raises(KeyError):
        plan.host("nope")


def test_digest_is_stable_and_follows_the_target_version() -> None:
    phases = "  - {name: up, rolling: compute, steps: [{run: 'install {{ to_version }}'}]}\n"

    first, again, other = _compile(phases), _compile(phases), _compile(phases, to="3.0")

    assert first == again
    assert first.digest == again.digest
    assert len(first.digest) == 64
    assert other.digest != first.digest


def test_from_version_option_overrides_inventory() -> None:
    plan = _compile("  - {name: a, once: conductor, steps: [{run: x}]}\n", from_version="1.5")

    assert (plan.from_version, plan.to_version, plan.inventory) == ("1.5", "2.0", "lab")


def test_target_must_be_newer() -> None:
    phases = "  - {name: a, once: conductor, steps: [{run: x}]}\n"

    # a from-version taken from the inventory is located there
    assert _errors(phases, to="1.0") == [
        "inv.yaml:3:8: vars.from_version: 1.0 -> 1.0 is not an upgrade: the target must be newer"
    ]
    assert _errors(phases, to="1.5", from_version="2.0") == [
        "to_version: 2.0 -> 1.5 is not an upgrade: the target must be newer"
    ]


def test_unquoted_from_version_in_inventory() -> None:
    inventory = INVENTORY.replace('from_version: "1.0"', "from_version: 2025.10")

    errors = _errors("  - {name: a, once: conductor, steps: [{run: x}]}\n", inventory=inventory)

    assert errors == [
        "inv.yaml:3:8: vars.from_version: YAML read 2025.10 as the number 2025.1, not a version;"
        ' quote it: "2025.10"'
    ]


def test_missing_from_version_and_bad_to_version_are_reported_together() -> None:
    inventory = INVENTORY.replace('from_version: "1.0", ', "")

    errors = _errors(
        "  - {name: a, once: conductor, steps: [{run: x}]}\n", inventory=inventory, to="two"
    )

    assert errors == [
        "from_version: no from-version: pass --from or set vars.from_version in inv.yaml",
        "to_version: 'two' is not a version (expected something like 2025.2 or 28.0.1)",
    ]


def test_template_errors_are_located_once_per_spot_and_name_a_host() -> None:
    errors = _errors(
        "  - {name: up, rolling: compute, steps: [{run: 'install {{ to_verison }}'}]}\n"
        "  - {name: x, once: conductor, steps: [{run: 'echo {{ host.adress }}'}]}\n"
    )

    assert errors == [
        "pb.yaml:3:43: phases[0].steps[0].run: undefined template variable: 'to_verison' "
        "(did you mean 'to_version'?) (for host cmp-1)",
        "pb.yaml:4:41: phases[1].steps[0].run: undefined template variable: 'host' has no "
        "field 'adress' (did you mean 'address'?) (for host ctl-1)",
    ]


def test_inventory_template_errors_point_into_the_inventory() -> None:
    inventory = INVENTORY.replace(
        '{tcp: "{{ host.address }}:16509"}', '{tcp: "{{ host.address }}"}'
    )

    errors = _errors("  - {name: up, rolling: compute, steps: [{run: x}]}\n", inventory=inventory)

    assert errors == [
        "inv.yaml:19:15: roles.compute.health[0].tcp: expected ADDRESS:PORT, got '10.0.1.1' "
        "(for host cmp-1)"
    ]


# --- the shipped nova and neutron playbooks on the example inventory ---------------


def _example(name: str, to: str = "2026.1", inventory: str | None = None) -> model.Plan:
    if inventory is None:
        inv, inv_doc = load_inventory("inventory.example.yaml")
    else:
        inv, inv_doc = parse_inventory_text(inventory, "inventory.example.yaml")
    pb, pb_doc = load_playbook(name)
    return compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version=to))


def _phase(plan: model.Plan, name: str) -> model.Phase:
    return next(p for p in plan.phases if p.name == name)


@pytest.mark.parametrize(
    ("name", "package"), [("nova", "'nova>=33,<34'"), ("neutron", "'neutron>=28,<29'")]
)
def test_shipped_playbooks_install_a_release_by_name(
    repo_root: Path, name: str, package: str
) -> None:
    plan = _example(name)

    build = _commands(_host(_phase(plan, "install-code"), "ctl-1"))
    assert any(
        package in c and "constraints/upper/2026.1" in c and f"{name}-2026.1/.installed" in c
        for c in build
    ), build
    assert f"test -d /openstack/venvs/{name}-2025.2" in build  # the rollback target


@pytest.mark.parametrize("name", ["nova", "neutron"])
def test_a_release_without_a_package_mapping_fails_at_plan_time(repo_root: Path, name: str) -> None:
    with pytest.raises(InputError) as info:
        _example(name, to="2027.1")

    messages = [str(p) for p in info.value.problems]
    assert messages and all("2027.1" in m for m in messages), messages
    assert f"playbooks/{name}.yaml" in messages[0]
    assert "phases[0].steps[1].run" in messages[0]


def test_every_api_restart_in_the_shipped_plans_is_drained(repo_root: Path) -> None:
    """nova-api, placement-api and neutron-server restart or reload only while
    their host is out of the load balancer."""
    apis = {"nova": "nova-api", "neutron": "neutron-server"}
    for name, unit in apis.items():
        plan = _example(name)
        restarting = 0
        for phase in plan.phases:
            for batch in phase.batches:
                for host in batch.hosts:
                    commands = [
                        c.command
                        for s in host.steps
                        for c in (s.action, s.undo)
                        if isinstance(c, model.RunAction)
                    ]
                    restarts = [
                        c
                        for c in commands
                        if ("systemctl restart" in c or "systemctl reload" in c)
                        and (f" {unit}" in c or "placement-api" in c)
                    ]
                    if restarts:
                        restarting += 1
                        assert host.drains, (name, phase.name, host.host, restarts)
        assert restarting > 0, name


def test_nova_syncs_every_cell_with_the_new_code(repo_root: Path) -> None:
    text = Path("inventory.example.yaml").read_text()
    text = text.replace(
        "  nova_conf: /etc/nova/nova.conf\n",
        "  nova_conf: /etc/nova/nova.conf\n  nova_cell_confs: [/etc/nova/cell1.conf]\n",
    )
    plan = _example("nova", inventory=text)

    sync = _commands(_host(_phase(plan, "sync-nova-db"), "ctl-1"))
    new = "/openstack/venvs/nova-2026.1/bin/nova-manage"
    assert sync[1] == f"{new} api_db sync"
    assert sync[2] == (
        f"{new} db sync && {new} --config-file /etc/nova/nova.conf "
        "--config-file /etc/nova/cell1.conf db sync --local_cell"
    )
    migrate = _commands(_host(_phase(plan, "migrate-data"), "ctl-1"))
    assert migrate == [
        f"{new} db online_data_migrations --max-count 1000 && {new} --config-file "
        "/etc/nova/nova.conf --config-file /etc/nova/cell1.conf db online_data_migrations "
        "--max-count 1000"
    ]


def test_nova_plan_has_no_point_of_no_return_and_pins_before_new_code(repo_root: Path) -> None:
    plan = _example("nova")

    assert plan.irreversible_phase() is None
    pin = _host(_phase(plan, "pin-rpc"), "ctl-1")
    assert _commands(pin) == [
        "true",
        "config compute=auto",
        "systemctl restart nova-conductor",
        "systemctl restart nova-api",
    ]
    # restored config first, then every nova service of the host restarts
    assert pin.steps[0].undo is not None
    assert pin.steps[0].undo.command == "systemctl restart nova-conductor nova-api"
    (gate,) = _phase(plan, "reset-rpc-pins").gates
    # controllers are judged by nova-conductor, not by placement
    assert dict(gate.probes)["ctl-1"].run == (
        "/openstack/current/nova-conductor/bin/nova-conductor --version"
    )


def test_neutron_contract_phases_stop_and_start_every_server(repo_root: Path) -> None:
    plan = _example("neutron")
    units = "neutron-server neutron-rpc-server neutron-periodic-workers"
    servers = ["ctl-1", "ctl-2", "ctl-3"]

    stop = _phase(plan, "stop-servers-for-contract")
    assert _hosts(stop) == [servers]  # all at once: none runs during the contract
    for name in servers:
        host = _host(stop, name)
        assert host.drains == ()
        (step,) = host.steps
        assert "has_offline_migrations; then echo" in _commands(host)[0]
        assert f"else systemctl stop {units}; fi" in _commands(host)[0]
        assert step.undo is not None and step.undo.command == f"systemctl start {units}"
    contract = _phase(plan, "contract-db")
    assert (contract.irreversible, contract.max_failures) == (True, 1)
    assert plan.irreversible_phase() is contract
    start = _phase(plan, "start-servers")
    assert _hosts(start) == [servers]
    for name in servers:
        host = _host(start, name)
        assert _commands(host) == [f"systemctl start {units}"]
        assert host.health is not None
        assert host.version is None  # never skipped as "already at the target"
    assert [p.name for p in plan.phases[-4:]] == [
        "stop-servers-for-contract",
        "contract-db",
        "start-servers",
        "verify-contract",
    ]


@pytest.mark.parametrize(
    ("role", "package_versions"),
    [
        ("placement", ("14.0.0", "15.0.0", "16.0.1")),
        ("conductor", ("32.2.0", "33.0.2", "34.0.0")),
        ("api", ("32.0.0", "33.1.0", "34.0.1")),
        ("compute", ("32.1.0", "33.0.0", "34.2.0")),
        ("network", ("27.0.3", "28.0.0", "29.0.0")),
        ("agent", ("27.0.0", "28.1.0", "29.0.2")),
    ],
)
def test_example_version_probes_report_releases(
    repo_root: Path, role: str, package_versions: tuple[str, str, str]
) -> None:
    inv, _ = load_inventory("inventory.example.yaml")
    spec = inv.roles[role].version
    assert spec is not None and spec.run is not None
    assert spec.run.startswith("/openstack/current/")
    probe = model.VersionProbe(run=spec.run, releases=tuple((spec.releases or {}).items()))

    releases = [probe.release_of(v) for v in package_versions]

    assert releases == ["2025.2", "2026.1", "2026.2"]
    candidate = package_versions[1].split(".")[0] + ".0.0rc1"
    assert probe.release_of(candidate) == candidate  # a release candidate is no release


# --- what hosts share, and what they do not ---------------------------------------


def _many(n: int, *, host_vars: dict[int, str] | None = None) -> str:
    lines = [
        "vars: {from_version: '1.0', conf: /etc/svc.conf}",
        "roles:",
        "  compute:",
        "    drain: {run: 'disable {{ host.name }}', undo: 'enable {{ host.name }}'}",
        "    health: [{tcp: '{{ host.address }}:16509'}, {run: 'systemctl is-active svc'}]",
        "    version: {run: 'svc --version'}",
        "hosts:",
    ]
    for i in range(n):
        extra = f", vars: {{conf: {host_vars[i]}}}" if host_vars and i in host_vars else ""
        lines.append(f"  cmp-{i}: {{address: 10.0.1.{i + 1}, roles: [compute]{extra}}}")
    return "\n".join(lines) + "\n"


MANY_PHASES = """\
  - name: up
    rolling: compute
    batch: "50%"
    steps:
      - run: "apt-get install -y svc={{ to_version }}"
        undo: "apt-get install -y svc={{ from_version }}"
      - config: {file: "{{ conf }}", section: s, key: k, value: "{{ to_version }}"}
"""


def _templates_and_plan(inventory: str) -> tuple[Templates, model.Plan]:
    templates = Templates()
    inv, inv_doc = parse_inventory_text(inventory, "inv.yaml")
    pb, pb_doc = parse_playbook_text(f"name: lab\nphases:\n{MANY_PHASES}", "pb.yaml")
    plan = compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2.0"), templates=templates)
    return templates, plan


def test_a_step_reading_only_versions_renders_once_for_every_host() -> None:
    templates, plan = _templates_and_plan(_many(40))

    hosts = [h for b in plan.phases[0].batches for h in b.hosts]
    assert len(hosts) == 40
    # run, undo, config file, config value once; drain run and undo, tcp once per host
    assert templates.renders == 4 + 3 * 40
    # and the hosts share the very objects: written once in the plan's JSON
    assert len({id(h.steps[0].action) for h in hosts}) == 1
    assert len({id(h.version) for h in hosts}) == 1


def test_what_reads_the_host_is_each_hosts_own() -> None:
    _, plan = _templates_and_plan(_many(30))

    for host in (h for b in plan.phases[0].batches for h in b.hosts):
        assert host.steps[0].id == f"up/{host.host}/1"
        drain = host.drains[0]
        assert isinstance(drain, model.RunDrain)
        assert (drain.run, drain.undo) == (f"disable {host.host}", f"enable {host.host}")
        assert host.health is not None
        tcp = host.health.checks[0]
        assert isinstance(tcp, model.TcpCheck)
        assert tcp.address == f"10.0.1.{int(host.host.split('-')[1]) + 1}"


def test_a_host_var_overrides_for_its_host_only() -> None:
    _, plan = _templates_and_plan(_many(6, host_vars={2: "/srv/own.conf", 4: "/etc/svc.conf"}))

    files = {h.host: h.steps[1].action for b in plan.phases[0].batches for h in b.hosts}
    assert {name: a.file for name, a in files.items() if isinstance(a, model.ConfigAction)} == {
        "cmp-0": "/etc/svc.conf",
        "cmp-1": "/etc/svc.conf",
        "cmp-2": "/srv/own.conf",
        "cmp-3": "/etc/svc.conf",
        "cmp-4": "/etc/svc.conf",
        "cmp-5": "/etc/svc.conf",
    }


def test_a_template_error_names_the_first_host_it_fails_for() -> None:
    inventory = (
        _many(5)
        .replace("'disable {{ host.name }}'", "'disable {{ host.vars.rack }}'")
        .replace("roles: [compute]}", "roles: [compute], vars: {rack: r1}}", 1)
    )

    with pytest.raises(InputError) as info:
        _templates_and_plan(inventory)

    # cmp-0 has a rack; the others fail, reported once, for the first of them
    assert [str(p) for p in info.value.problems] == [
        "inv.yaml:4:13: roles.compute.drain.run: undefined template variable: "
        "'dict object' has no attribute 'rack' (for host cmp-1)"
    ]


def test_hosts_built_together_get_the_plan_they_get_one_by_one() -> None:
    # a host var, even one no template reads, makes a host's context its own:
    # such hosts are built one by one, the others many at a time
    together = _templates_and_plan(_many(30))[1]
    with_vars = _many(30).replace("roles: [compute]}", "roles: [compute], vars: {unused: x}}")
    one_by_one = _templates_and_plan(with_vars)[1]

    assert model.to_json(together) == model.to_json(one_by_one)


def test_a_bad_check_among_many_hosts_is_reported_for_its_host() -> None:
    inventory = _many(8).replace(
        "{tcp: '{{ host.address }}:16509'}",
        "{tcp: \"{{ host.address }}:{{ '99999' if host.name == 'cmp-5' else '16509' }}\"}",
    )

    with pytest.raises(InputError) as info:
        _templates_and_plan(inventory)

    [problem] = info.value.problems
    assert problem.field == "roles.compute.health[0].tcp"
    assert problem.message == "expected ADDRESS:PORT, got '10.0.1.6:99999' (for host cmp-5)"
