"""The inventory: shape, defaults, cross-references, all errors located."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.inventory import load_inventory, parse_inventory_text


def _errors(text: str) -> list[str]:
    with pytest.raises(InputError) as info:
        parse_inventory_text(text, "inv.yaml")
    return [str(p) for p in info.value.problems]


def test_example_inventory_loads(repo_root: Path) -> None:
    inventory, doc = load_inventory("inventory.example.yaml")

    assert doc.name == "inventory.example.yaml"
    assert inventory.name == "example-cloud"
    assert inventory.ssh.user == "stack"
    assert inventory.ssh.become == "sudo"
    assert inventory.ssh.connect_timeout == 10.0
    assert inventory.ssh.command_timeout == 600.0  # "10m"
    assert inventory.roles["api"].health_policy.deadline == 300.0  # "5m"
    assert inventory.roles["api"].drain is not None
    assert inventory.roles["api"].drain.timeout == 120.0  # "2m"
    assert inventory.role_hosts("compute") == [
        "cmp-a1", "cmp-a2", "cmp-a3", "cmp-a4", "cmp-b1", "cmp-b2", "cmp-b3", "cmp-b4",
    ]  # fmt: skip
    assert inventory.all_roles()[:3] == ["database", "loadbalancer", "conductor"]
    groups = inventory.role_groups()
    assert list(groups) == inventory.all_roles()
    assert groups == {role: inventory.role_hosts(role) for role in inventory.all_roles()}
    assert inventory.secrets["db_password"].env == "NOVA_DB_PASSWORD"
    host_ssh = inventory.hosts["cmp-b4"].ssh
    assert host_ssh is not None
    assert host_ssh.port == 2222


def test_defaults_for_a_minimal_inventory() -> None:
    inventory, _ = parse_inventory_text("hosts:\n  a: {address: 10.0.0.1}\n")

    assert inventory.ssh.user == "root"
    assert inventory.ssh.port == 22
    assert inventory.ssh.verify_host_keys is True
    assert inventory.ssh.known_hosts == "~/.ssh/known_hosts"
    assert inventory.hosts["a"].roles == []
    assert inventory.name is None


def test_unknown_field_with_suggestion_at_file_line_column() -> None:
    text = "hosts:\n  cmp-1: {address: 10.0.1.1, rolls: [compute]}\n"

    assert _errors(text) == [
        "inv.yaml:2:30: hosts.cmp-1.rolls: unknown field 'rolls' (did you mean 'roles'?)"
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = """\
ssh:
  connect_timeout: soon
  become: doas
hosts:
  a: {address: 10.0.0.1, zoen: az1}
"""
    errors = _errors(text)

    assert len(errors) == 3
    assert errors[0].startswith("inv.yaml:2:3: ssh.connect_timeout: expected a duration")
    assert errors[1].startswith("inv.yaml:3:3: ssh.become: must be one of 'sudo' or 'none'")
    assert errors[2] == "inv.yaml:5:26: hosts.a.zoen: unknown field 'zoen' (did you mean 'zone'?)"


def test_negative_duration_is_located() -> None:
    errors = _errors("ssh: {command_timeout: -5}\nhosts:\n  a: {address: x}\n")

    assert errors == [
        "inv.yaml:1:7: ssh.command_timeout: a duration must be zero or more seconds, got -5"
    ]


def test_duplicate_host_is_an_error() -> None:
    errors = _errors("hosts:\n  a: {address: x}\n  a: {address: y}\n")

    assert errors == ["inv.yaml:3:3: hosts.a: duplicate key 'a' (first defined on line 2)"]


def test_inventory_must_be_a_mapping() -> None:
    assert _errors("- a\n- b\n") == ["inv.yaml:1:1: an inventory must be a mapping with 'hosts'"]


def test_hosts_are_required() -> None:
    errors = _errors("vars: {a: 1}\n")

    assert errors == ["inv.yaml:1:1: hosts: missing required field 'hosts'"]


def test_role_defined_but_unused_suggests_the_held_one() -> None:
    errors = _errors("roles:\n  comptue: {}\nhosts:\n  a: {address: x, roles: [compute]}\n")

    assert errors == [
        "inv.yaml:2:3: roles.comptue: role 'comptue' is defined but no host has it "
        "(did you mean 'compute'?)"
    ]


def test_role_listed_twice_and_bad_role_name() -> None:
    errors = _errors("hosts:\n  a: {address: x, roles: [c, 'b c', c]}\n")

    assert errors == [
        "inv.yaml:2:30: hosts.a.roles[1]: 'b c' is not a valid role name",
        "inv.yaml:2:37: hosts.a.roles[2]: role 'c' listed twice",
    ]


def test_bad_host_name() -> None:
    errors = _errors("hosts:\n  'web 1': {address: x}\n")

    assert errors == [
        "inv.yaml:2:3: hosts.web 1: 'web 1' is not a valid name (letters, digits, '.', '_', '-')"
    ]


def test_unknown_load_balancer_and_unknown_lb_host() -> None:
    text = """\
load_balancers:
  public: {host: lb-9, socket: /run/haproxy.sock, backend: api}
roles:
  api:
    drain: {load_balancer: publik}
hosts:
  lb-1: {address: 10.0.0.5}
  a: {address: 10.0.0.6, roles: [api]}
"""
    assert _errors(text) == [
        "inv.yaml:2:12: load_balancers.public.host: unknown host 'lb-9' (did you mean 'lb-1'?)",
        "inv.yaml:5:13: roles.api.drain.load_balancer: unknown load balancer 'publik' "
        "(did you mean 'public'?)",
    ]


def test_load_balancer_reachability_rules() -> None:
    both = "load_balancers:\n  p: {host: a, socket: /s, address: '127.0.0.1:1', backend: b}\n"
    neither = "load_balancers:\n  p: {host: a, backend: b}\n"
    hosts = "hosts:\n  a: {address: x}\n"

    assert _errors(both + hosts) == [
        "inv.yaml:2:3: load_balancers.p: a load balancer takes 'host'+'socket' or 'address', "
        "not both"
    ]
    assert _errors(neither + hosts) == [
        "inv.yaml:2:3: load_balancers.p: a load balancer needs 'host' and 'socket', or 'address'"
    ]


def test_run_drain_needs_undo() -> None:
    errors = _errors(
        "roles:\n  c:\n    drain: {run: disable}\nhosts:\n  a: {address: x, roles: [c]}\n"
    )

    assert errors == [
        "inv.yaml:3:5: roles.c.drain: a 'run' drain needs 'undo' so the host is never left drained"
    ]


def test_http_drain_needs_undo_http() -> None:
    errors = _errors(
        "roles:\n  c:\n    drain: {http: 'http://x/off'}\nhosts:\n  a: {address: x, roles: [c]}\n"
    )

    assert len(errors) == 1
    assert "needs 'undo_http'" in errors[0]


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        ("{}", "a version probe needs one of 'http', 'run'"),
        ("{http: u, run: r}", "a version probe takes only one of 'http', 'run', got http, run"),
    ],
)
def test_version_probe_exactly_one(probe: str, message: str) -> None:
    text = f"roles:\n  c:\n    version: {probe}\nhosts:\n  a: {{address: x, roles: [c]}}\n"

    assert _errors(text) == [f"inv.yaml:3:5: roles.c.version: {message}"]


def test_health_json_path_only_for_http() -> None:
    text = (
        "roles:\n  c:\n    health:\n      - {run: x, json_path: a}\n"
        "hosts:\n  a: {address: x, roles: [c]}\n"
    )

    assert _errors(text) == [
        "inv.yaml:4:9: roles.c.health[0]: 'json_path' only applies to an 'http' check"
    ]


def test_same_ssh_endpoint_twice_is_an_error_but_other_port_is_fine() -> None:
    same = "hosts:\n  a: {address: 10.0.0.1}\n  b: {address: 10.0.0.1}\n"
    other_port = "hosts:\n  a: {address: 10.0.0.1}\n  b: {address: 10.0.0.1, ssh: {port: 2222}}\n"

    assert _errors(same) == [
        "inv.yaml:3:7: hosts.b.address: same SSH endpoint 10.0.0.1:22 as host 'a'"
    ]
    inventory, _ = parse_inventory_text(other_port)
    assert list(inventory.hosts) == ["a", "b"]


def test_reserved_template_names_cannot_be_vars() -> None:
    errors = _errors("vars: {to_version: '1.0', role: x}\nhosts:\n  a: {address: x}\n")

    assert errors == [
        "inv.yaml:1:8: vars.to_version: 'to_version' is reserved for the template context",
        "inv.yaml:1:27: vars.role: 'role' is reserved for the template context",
    ]


def test_host_vars_cannot_shadow_template_names_or_from_version() -> None:
    errors = _errors("hosts:\n  a: {address: x, vars: {from_version: '1', role: r, ok: 1}}\n")

    assert errors == [
        "inv.yaml:2:26: hosts.a.vars.from_version: 'from_version' is reserved for the template "
        "context",
        "inv.yaml:2:45: hosts.a.vars.role: 'role' is reserved for the template context",
    ]


def test_secret_takes_exactly_one_source() -> None:
    errors = _errors("secrets:\n  pw: {env: A, file: /b}\nhosts:\n  a: {address: x}\n")

    assert errors == [
        "inv.yaml:2:3: secrets.pw: a secret takes only one of 'env', 'file', got env, file"
    ]


def test_ssh_port_range() -> None:
    errors = _errors("hosts:\n  a: {address: x, ssh: {port: 70000}}\n")

    assert len(errors) == 1
    assert errors[0].startswith("inv.yaml:2:25: hosts.a.ssh.port:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_inventory(tmp_path / "nope.yaml", "nope.yaml")

    assert str(info.value) == "nope.yaml: file not found"


def test_version_releases_must_be_specifiers() -> None:
    text = """\
roles:
  api:
    version:
      run: "ironic-api --version"
      releases: {"2026.2": "39.x"}
hosts:
  a: {address: 10.0.0.1, roles: [api]}
"""
    (problem,) = _errors(text)
    assert problem.startswith("inv.yaml:5:")
    assert "roles.api.version.releases" in problem
    assert "'39.x' is not a version specifier" in problem


def test_version_releases_reach_the_plan_probe() -> None:
    text = """\
roles:
  api:
    version:
      run: "ironic-api --version"
      releases: {"2026.1": ">=35,<36", "2026.2": ">=39,<40"}
hosts:
  a: {address: 10.0.0.1, roles: [api]}
"""
    inventory, _ = parse_inventory_text(text, "inv.yaml")
    probe = inventory.roles["api"].version
    assert probe is not None
    assert probe.releases == {"2026.1": ">=35,<36", "2026.2": ">=39,<40"}
