"""The compiled plan: immutable values the engine executes and the journal records.

Everything here is a frozen, slotted dataclass. Actions are data (a `kind`
tag plus parameters) so a plan can be written to JSON, hashed, journaled and
read back to resume. `from_json` goes through one pydantic TypeAdapter,
which validates a plan read back from storage; `to_json` and the digest are
written by `orchestrator.planjson`, byte for byte what that adapter's JSON
data gives.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import Field, TypeAdapter

from orchestrator import planjson

# --- actions: what one step does on one host --------------------------------


@dataclass(frozen=True, slots=True)
class RunAction:
    """A shell command; `repeat_while_exit` statuses make it run again."""

    command: str
    kind: Literal["run"] = "run"
    ok_exit: tuple[int, ...] = (0,)
    repeat_while_exit: tuple[int, ...] = ()
    repeat_interval: float = 5.0
    repeat_max: int = 1000
    timeout: float = 600.0


@dataclass(frozen=True, slots=True)
class ConfigAction:
    """Set `key` in `[section]` of an INI `file`, or remove it (`value` None).

    Its undo is computed at run time: the previous value (or absence) is
    recorded in the journal before the file is touched.
    """

    file: str
    section: str
    key: str
    value: str | None
    kind: Literal["config"] = "config"


@dataclass(frozen=True, slots=True)
class WaitAction:
    seconds: float
    kind: Literal["wait"] = "wait"


Action = Annotated[RunAction | ConfigAction | WaitAction, Field(discriminator="kind")]


@dataclass(frozen=True, slots=True)
class Step:
    """One step on one host. `id` is unique in the plan and keys the journal."""

    id: str
    name: str
    action: Action
    undo: RunAction | None = None
    check: str | None = None
    idempotent: bool = False
    become: bool = False


# --- drain, health and version: the host procedure around the steps -------


@dataclass(frozen=True, slots=True)
class LoadBalancerDrain:
    load_balancer: str
    server: str
    backend: str
    timeout: float
    kind: Literal["load_balancer"] = "load_balancer"


@dataclass(frozen=True, slots=True)
class RunDrain:
    run: str
    undo: str
    wait_until: str | None
    timeout: float
    kind: Literal["run"] = "run"


@dataclass(frozen=True, slots=True)
class HttpDrain:
    url: str
    undo_url: str
    method: str
    timeout: float
    kind: Literal["http"] = "http"


Drain = Annotated[LoadBalancerDrain | RunDrain | HttpDrain, Field(discriminator="kind")]


@dataclass(frozen=True, slots=True)
class HttpCheck:
    url: str
    expect_status: int = 200
    json_path: str | None = None
    expect: str | None = None
    timeout: float = 5.0
    kind: Literal["http"] = "http"


@dataclass(frozen=True, slots=True)
class TcpCheck:
    address: str
    port: int
    timeout: float = 5.0
    kind: Literal["tcp"] = "tcp"


@dataclass(frozen=True, slots=True)
class CommandCheck:
    run: str
    timeout: float = 5.0
    kind: Literal["command"] = "command"


Check = Annotated[HttpCheck | TcpCheck | CommandCheck, Field(discriminator="kind")]


@dataclass(frozen=True, slots=True)
class Health:
    checks: tuple[Check, ...]
    passes: int
    interval: float
    deadline: float


@dataclass(frozen=True, slots=True)
class VersionProbe:
    """`http` URL with optional `json_path`, or `run` whose stdout is the version.

    With `releases` ((release, PEP 440 specifier), ...) the probe's answer is a
    package version, and the host is at a version when the answer is it or
    belongs to that release.
    Left out of the JSON when empty, so plans (and journals) made before it
    keep their digests."""

    http: str | None = None
    json_path: str | None = None
    run: str | None = None
    timeout: float = 10.0
    releases: Annotated[tuple[tuple[str, str], ...], Field(exclude_if=lambda v: not v)] = ()

    def reports(self, answer: str | None, version: str) -> bool:
        """Whether a probe's answer is `version`: the answer itself (a package
        version, as a hotfix targets) or the release it belongs to."""
        return answer is not None and version in (answer, self.release_of(answer))

    def describe(self, answer: str | None) -> str:
        """`39.0.0 (2026.2)` for an answer that maps to a release."""
        if answer is None:
            return "nothing"
        release = self.release_of(answer)
        return answer if release == answer else f"{answer} ({release})"

    def release_of(self, reported: str) -> str:
        """The release `reported` belongs to, or `reported` itself when no
        `releases` are given or none holds it (it then matches no target)."""
        if not self.releases:
            return reported
        try:
            version = Version(reported)
        except InvalidVersion:
            return reported
        for release, spec in self.releases:
            if version in _specifier(spec):
                return release
        return reported


@lru_cache(maxsize=256)
def _specifier(spec: str) -> SpecifierSet:
    """Parsed once: probes are asked every health-check interval on every host."""
    return SpecifierSet(spec)


# --- the plan tree -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostTarget:
    """How to reach one host; resolved from inventory defaults and overrides."""

    name: str
    address: str
    port: int
    user: str
    key: str | None
    known_hosts: str | None
    verify_host_keys: bool
    become: Literal["sudo", "none"]
    roles: tuple[str, ...]
    zone: str | None
    connect_timeout: float
    command_timeout: float
    keepalive_interval: float


@dataclass(frozen=True, slots=True)
class LoadBalancerTarget:
    name: str
    driver: Literal["haproxy"]
    backend: str
    host: str | None
    socket: str | None
    address: str | None


@dataclass(frozen=True, slots=True)
class HostPlan:
    """Everything one host does in one phase, in order."""

    host: str
    roles: tuple[str, ...]
    steps: tuple[Step, ...]
    cleanup: tuple[Step, ...] = ()
    drains: tuple[Drain, ...] = ()
    health: Health | None = None
    version: VersionProbe | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    index: int
    zone: str | None
    hosts: tuple[HostPlan, ...]
    canary: bool = False


@dataclass(frozen=True, slots=True)
class Gate:
    """`all_at_target`, or a command run on `host` that must exit `expect_exit`."""

    kind: Literal["all_at_target", "command"]
    run: str | None = None
    host: str | None = None
    expect_exit: int = 0
    probes: tuple[tuple[str, VersionProbe], ...] = ()


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    kind: Literal["once", "all", "rolling"]
    roles: tuple[str, ...]
    batches: tuple[Batch, ...]
    description: str | None = None
    batch_sizes: tuple[str, ...] = ()
    max_unavailable: tuple[tuple[str, int], ...] = ()
    max_failures: int = 0
    canary_pause: bool = False
    batch_pause: float = 0.0
    gates: tuple[Gate, ...] = ()
    approve: bool = False
    irreversible: bool = False
    notes: tuple[str, ...] = ()

    @property
    def host_count(self) -> int:
        return sum(len(b.hosts) for b in self.batches)


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weakref: its digest is kept
class Plan:
    name: str
    from_version: str
    to_version: str
    inventory: str
    on_failure: Literal["rollback", "pause"]
    hosts: tuple[HostTarget, ...]
    load_balancers: tuple[LoadBalancerTarget, ...]
    phases: tuple[Phase, ...]
    secrets: tuple[tuple[str, str, str], ...] = ()
    warnings: tuple[str, ...] = ()
    format: int = 1

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON form: same inputs, same digest.

        Computed once per plan (a 10,000-host plan takes a moment).
        """
        return _digest(self)

    def host(self, name: str) -> HostTarget:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def irreversible_phase(self) -> Phase | None:
        return next((p for p in self.phases if p.irreversible), None)

    def endpoints(self) -> dict[str, str]:
        """SSH endpoint ("address:port") -> host name of every host a phase
        works on: what an upgrade of this plan leases. Hosts the plan only
        reaches through (a load balancer's) are shared, not leased."""
        worked = {hp.host for phase in self.phases for b in phase.batches for hp in b.hosts}
        found = {}
        for host in self.hosts:
            if host.name in worked:
                address = f"[{host.address}]" if ":" in host.address else host.address
                found[f"{address}:{host.port}"] = host.name
        return found


@lru_cache(maxsize=1)
def _adapter() -> TypeAdapter[Plan]:
    return TypeAdapter(Plan)


# the values the compiler shares between host plans: planjson writes each
# instance once per pass
_SHARED: tuple[type, ...] = (
    RunAction,
    ConfigAction,
    WaitAction,
    LoadBalancerDrain,
    RunDrain,
    HttpDrain,
    HttpCheck,
    TcpCheck,
    CommandCheck,
    Health,
    VersionProbe,
)
# Plan.digest of plans alive: their id -> digest (a plan is immutable); an
# entry leaves with its plan
_DIGESTS: dict[int, str] = {}


def _digest(plan: Plan) -> str:
    found = _DIGESTS.get(id(plan))
    if found is None:
        sha = hashlib.sha256()
        for chunk in planjson.gathered(planjson.canonical_chunks(plan, _SHARED)):
            sha.update(chunk.encode())
        found = _DIGESTS[id(plan)] = sha.hexdigest()
        weakref.finalize(plan, _DIGESTS.pop, id(plan), None)
    return found


def to_data(plan: Plan) -> dict[str, Any]:
    data: dict[str, Any] = _adapter().dump_python(plan, mode="json")
    return data


def canonical_bytes(plan: Plan) -> bytes:
    """What the digest hashes: ``json.dumps(to_data(plan), sort_keys=True,
    separators=(",", ":"))``, written without building `to_data`."""
    return "".join(planjson.canonical_chunks(plan, _SHARED)).encode()


def json_chunks(plan: Plan, *, indent: int | None = 2) -> Iterator[str]:
    """`to_json` in pieces (a host plan at most): for writing a plan as it goes."""
    return planjson.shown_chunks(plan, plan.digest, _SHARED, indent)


def to_json(plan: Plan, *, indent: int | None = 2) -> str:
    """``pydantic_core.to_json({"digest": plan.digest, **to_data(plan)})``,
    written without building `to_data`."""
    return "".join(json_chunks(plan, indent=indent))


def from_data(data: dict[str, Any]) -> Plan:
    """Rebuild a plan (e.g. from the journal); rejects a digest that does not match."""
    body = {k: v for k, v in data.items() if k != "digest"}
    plan = _adapter().validate_python(body)
    claimed = data.get("digest")
    if claimed is not None and claimed != (computed := plan.digest):
        raise ValueError(f"plan digest mismatch: stored {claimed}, computed {computed}")
    return plan


def from_json(text: str) -> Plan:
    return from_data(json.loads(text))
