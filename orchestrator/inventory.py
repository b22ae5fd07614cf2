"""The inventory: hosts, roles, how to reach, drain, health-check and probe them.

Parsed with pydantic over `orchestrator.source` so every error names its
file, line and field. Cross-references (roles, load balancers, hosts) are
checked after the shape is valid, with the same locations.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import BaseModel, Field, field_validator, model_validator

from orchestrator.errors import FieldProblem, InputError, Problem
from orchestrator.fields import STRICT, Duration
from orchestrator.source import Document, load_file, load_text, suggest, validate

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED_VARS = {"host", "role", "hosts", "groups", "secrets", "phase", "to_version"}


def _exactly_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) != 1:
        listed = ", ".join(f"'{n}'" for n in names)
        if not given:
            raise ValueError(f"{what} needs one of {listed}")
        raise ValueError(f"{what} takes only one of {listed}, got {', '.join(given)}")


class SSHSettings(BaseModel):
    """How to reach hosts; `hosts.NAME.ssh` overrides any of it per host."""

    model_config = STRICT
    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    key: str | None = None
    known_hosts: str | None = "~/.ssh/known_hosts"
    verify_host_keys: bool = Field(
        True, description="false only for a throwaway lab: skips host key verification"
    )
    become: Literal["sudo", "none"] = "none"
    connect_timeout: Duration = 10.0
    command_timeout: Duration = 600.0
    # a host silent for 3 intervals counts as gone (transport/ssh.py, docs/transport.md)
    keepalive_interval: Duration = 5.0


class SSHOverride(BaseModel):
    model_config = STRICT
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key: str | None = None
    known_hosts: str | None = None
    verify_host_keys: bool | None = None
    become: Literal["sudo", "none"] | None = None


class SecretRef(BaseModel):
    """Where a secret's value comes from at run time. Never the value itself:
    plans, journals, logs and API answers only ever hold the reference."""

    model_config = STRICT
    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        _exactly_one(self, ("env", "file"), "a secret")
        return self


class LoadBalancer(BaseModel):
    """An HAProxy whose runtime API is a UNIX socket on `host` (reached over
    SSH) or a TCP `address` ("127.0.0.1:9999")."""

    model_config = STRICT
    driver: Literal["haproxy"] = "haproxy"
    host: str | None = None
    socket: str | None = None
    address: str | None = None
    backend: str

    @model_validator(mode="after")
    def _reachable(self) -> LoadBalancer:
        if self.address is None and (self.host is None or self.socket is None):
            raise ValueError("a load balancer needs 'host' and 'socket', or 'address'")
        if self.address is not None and self.host is not None:
            raise ValueError("a load balancer takes 'host'+'socket' or 'address', not both")
        return self


class VersionProbe(BaseModel):
    """How to ask a host of this role which version it runs."""

    model_config = STRICT
    http: str | None = None
    json_path: str | None = None
    run: str | None = None
    releases: dict[str, str] | None = Field(
        None,
        description=(
            "release name -> PEP 440 specifier of the package versions that are that "
            "release, e.g. {'2026.2': '>=39,<40'}: the probe then reports the release"
        ),
    )
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _one(self) -> VersionProbe:
        _exactly_one(self, ("http", "run"), "a version probe")
        return self

    @field_validator("releases")
    @classmethod
    def _specifiers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("'releases' needs at least one release; remove it otherwise")
        for release, spec in value.items():
            try:
                SpecifierSet(spec)
            except InvalidSpecifier:
                raise ValueError(
                    f"release {release!r}: {spec!r} is not a version specifier "
                    "(PEP 440, e.g. '>=39,<40')"
                ) from None
        return value


class HealthCheck(BaseModel):
    model_config = STRICT
    http: str | None = None
    tcp: str | None = None
    run: str | None = None
    expect_status: int = Field(200, ge=100, le=599)
    json_path: str | None = None
    expect: str | None = None
    timeout: Duration = 5.0

    @model_validator(mode="after")
    def _one(self) -> HealthCheck:
        _exactly_one(self, ("http", "tcp", "run"), "a health check")
        if self.json_path is not None and self.http is None:
            raise ValueError("'json_path' only applies to an 'http' check")
        return self


class HealthPolicy(BaseModel):
    model_config = STRICT
    passes: int = Field(3, ge=1, description="consecutive passes required")
    interval: Duration = 2.0
    deadline: Duration = 300.0


class Drain(BaseModel):
    """Take a host out of service: via a load balancer, an HTTP call or a command."""

    model_config = STRICT
    load_balancer: str | None = None
    server: str = "{{ host.name }}"
    run: str | None = None
    undo: str | None = None
    wait_until: str | None = None
    http: str | None = None
    undo_http: str | None = None
    method: Literal["POST", "PUT", "DELETE", "GET"] = "POST"
    timeout: Duration = 300.0

    @model_validator(mode="after")
    def _one(self) -> Drain:
        _exactly_one(self, ("load_balancer", "run", "http"), "a drain")
        if self.run is not None and self.undo is None:
            raise ValueError("a 'run' drain needs 'undo' so the host is never left drained")
        if self.http is not None and self.undo_http is None:
            raise ValueError("an 'http' drain needs 'undo_http' so the host is never left drained")
        return self


class Role(BaseModel):
    model_config = STRICT
    description: str | None = None
    version: VersionProbe | None = None
    health: list[HealthCheck] = []
    health_policy: HealthPolicy = HealthPolicy()
    drain: Drain | None = None


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_address(value: str) -> str:
    """An IP address (v4 or v6) or an RFC 1123 host name, else ValueError."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value.removesuffix(".")
    if 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split(".")):
        return value
    raise ValueError(f"{value!r} is neither an IP address nor a host name (RFC 1123)")


class Host(BaseModel):
    model_config = STRICT
    address: str = Field(min_length=1)
    roles: list[str] = []
    zone: str | None = None
    ssh: SSHOverride | None = None
    vars: dict[str, Any] = {}

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return check_address(value)


class Inventory(BaseModel):
    model_config = STRICT
    name: str | None = Field(None, description="identifies the cloud; defaults to the file name")
    ssh: SSHSettings = SSHSettings()
    vars: dict[str, Any] = {}
    secrets: dict[str, SecretRef] = {}
    load_balancers: dict[str, LoadBalancer] = {}
    roles: dict[str, Role] = {}
    hosts: dict[str, Host] = Field(min_length=1)

    @field_validator("hosts", "roles", "load_balancers", "secrets")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not NAME.match(name):
                raise FieldProblem(
                    name, f"'{name}' is not a valid name (letters, digits, '.', '_', '-')"
                )
        return value

    def role_hosts(self, role: str) -> list[str]:
        return [name for name, host in self.hosts.items() if role in host.roles]

    def role_groups(self) -> dict[str, list[str]]:
        """Role -> its hosts in inventory order, the roles in `all_roles` order:
        one pass over the hosts instead of one per role."""
        groups: dict[str, list[str]] = {}
        for name, host in self.hosts.items():
            for role in dict.fromkeys(host.roles):  # a role listed twice holds the host once
                groups.setdefault(role, []).append(name)
        return groups

    def all_roles(self) -> list[str]:
        seen: dict[str, None] = {}
        for host in self.hosts.values():
            seen.update(dict.fromkeys(host.roles))
        return list(seen)


def load_inventory(path: str | Path, display_name: str | None = None) -> tuple[Inventory, Document]:
    return parse_inventory(load_file(path, display_name))


def parse_inventory_text(text: str, name: str = "inventory") -> tuple[Inventory, Document]:
    return parse_inventory(load_text(text, name))


def parse_inventory(doc: Document) -> tuple[Inventory, Document]:
    if not isinstance(doc.data, dict):
        raise InputError(doc.problem((), "an inventory must be a mapping with 'hosts'"))
    inventory: Inventory = validate(Inventory, doc)
    problems = check_inventory(inventory, doc)
    if problems:
        raise InputError(problems)
    return inventory, doc


def check_inventory(inv: Inventory, doc: Document) -> list[Problem]:
    """Cross-reference checks the per-field models cannot do alone."""
    problems: list[Problem] = []
    held = inv.all_roles()
    for role in inv.roles:
        if role not in held:
            problems.append(
                doc.problem(
                    ("roles", role),
                    f"role '{role}' is defined but no host has it{suggest(role, held)}",
                )
            )
    for name, host in inv.hosts.items():
        for i, role in enumerate(host.roles):
            if not NAME.match(role):
                problems.append(
                    doc.problem(("hosts", name, "roles", i), f"'{role}' is not a valid role name")
                )
            if host.roles.index(role) != i:
                problems.append(
                    doc.problem(("hosts", name, "roles", i), f"role '{role}' listed twice")
                )
    for role_name, role_spec in inv.roles.items():
        if role_spec.drain and role_spec.drain.load_balancer is not None:
            lb = role_spec.drain.load_balancer
            if lb not in inv.load_balancers:
                problems.append(
                    doc.problem(
                        ("roles", role_name, "drain", "load_balancer"),
                        f"unknown load balancer '{lb}'{suggest(lb, inv.load_balancers)}",
                    )
                )
    for lb_name, balancer in inv.load_balancers.items():
        if balancer.host is not None and balancer.host not in inv.hosts:
            problems.append(
                doc.problem(
                    ("load_balancers", lb_name, "host"),
                    f"unknown host '{balancer.host}'{suggest(balancer.host, inv.hosts)}",
                )
            )
    endpoints: dict[tuple[str, int], str] = {}
    for name, host in inv.hosts.items():
        port = host.ssh.port if host.ssh and host.ssh.port else inv.ssh.port
        other = endpoints.setdefault((host.address, port), name)
        if other != name:
            problems.append(
                doc.problem(
                    ("hosts", name, "address"),
                    f"same SSH endpoint {host.address}:{port} as host '{other}'",
                )
            )
    for key in inv.vars:
        if key in RESERVED_VARS:
            problems.append(
                doc.problem(("vars", key), f"'{key}' is reserved for the template context")
            )
    for name, host in inv.hosts.items():
        # host vars override every other variable, so from_version is taken too
        for key in host.vars:
            if key in RESERVED_VARS or key == "from_version":
                problems.append(
                    doc.problem(
                        ("hosts", name, "vars", key),
                        f"'{key}' is reserved for the template context",
                    )
                )
    return problems
