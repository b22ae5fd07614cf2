"""The playbook: the procedure, as ordered phases of steps with their undo."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from orchestrator.errors import FieldProblem, InputError, NotFoundError, Problem
from orchestrator.fields import STRICT, Duration, parse_size
from orchestrator.inventory import NAME, RESERVED_VARS
from orchestrator.source import Document, load_file, load_text, suggest, validate

PACKAGE_DIR = Path(__file__).resolve().parent
# installed wheels carry the playbooks inside the package; a source checkout
# (and an editable install) reads them from the top-level playbooks/
SHIPPED_DIRS = (PACKAGE_DIR / "_playbooks", PACKAGE_DIR.parent / "playbooks")


class ConfigEdit(BaseModel):
    """Set (or remove, with `state: absent`) one key of an INI file."""

    model_config = STRICT
    file: str
    section: str
    key: str
    value: str | int | bool | None = None
    state: Literal["present", "absent"] = "present"

    @model_validator(mode="after")
    def _value(self) -> ConfigEdit:
        if self.state == "present" and self.value is None:
            raise ValueError("'config' needs 'value' (or 'state: absent')")
        if self.state == "absent" and self.value is not None:
            raise ValueError("'config' with 'state: absent' takes no 'value'")
        return self


class UndoStep(BaseModel):
    model_config = STRICT
    run: str
    timeout: Duration | None = None
    ok_exit: list[int] = [0]


class Step(BaseModel):
    model_config = STRICT
    name: str | None = None
    run: str | None = None
    config: ConfigEdit | None = None
    wait: Duration | None = None
    undo: str | UndoStep | None = None
    check: str | None = Field(
        None, description="idempotency probe: exit 0 means the step's effect is already there"
    )
    idempotent: bool = False
    timeout: Duration | None = None
    ok_exit: list[int] = [0]
    repeat_while_exit: list[int] = []
    repeat_interval: Duration = 5.0
    repeat_max: int = Field(1000, ge=1)
    become: bool | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [n for n in ("run", "config", "wait") if getattr(self, n) is not None]
        if not given:
            raise ValueError("a step needs one of 'run', 'config', 'wait'")
        if len(given) > 1:
            raise ValueError(
                f"a step takes only one of 'run', 'config', 'wait', got {', '.join(given)}"
            )
        if self.run is None and (self.repeat_while_exit or self.ok_exit != [0] or self.check):
            raise ValueError("'ok_exit', 'repeat_while_exit' and 'check' apply to 'run' steps")
        if self.config is not None and self.undo is not None:
            raise ValueError("a 'config' step is undone automatically; remove 'undo'")
        if overlap := sorted(set(self.ok_exit) & set(self.repeat_while_exit)):
            raise ValueError(
                f"exit status {', '.join(map(str, overlap))} is in both 'ok_exit' "
                "and 'repeat_while_exit'"
            )
        return self


class GateSpec(BaseModel):
    model_config = STRICT
    all_at_target: bool | None = None
    run: str | None = None
    on: str | None = Field(None, description="role whose first host runs the gate command")
    expect_exit: int = 0

    @model_validator(mode="after")
    def _one(self) -> GateSpec:
        if (self.all_at_target is None) == (self.run is None):
            raise ValueError("a gate is 'all_at_target' or a mapping with 'run'")
        if self.all_at_target is False:
            raise ValueError("'all_at_target: false' is not a gate; remove it")
        return self


def _gate(value: Any) -> Any:
    if value == "all_at_target":
        return {"all_at_target": True}
    if isinstance(value, str):
        raise ValueError(f"unknown gate '{value}'{suggest(value, ['all_at_target'])}")
    return value


def _size(value: Any, what: str, *, minimum: int) -> Any:
    size = parse_size(value, what)
    if size == 0 and minimum > 0:
        raise ValueError(f"{what} of {value!r} would never move a host; use at least 1")
    return value


class Phase(BaseModel):
    model_config = STRICT
    name: str
    description: str | None = None
    once: str | None = None
    all: list[str] | None = None
    rolling: str | None = None
    host: str | None = Field(None, description="for a 'once' phase: run on this host")
    steps: list[Step] = Field(min_length=1)
    cleanup: list[Step] = []
    batch: int | str | list[int | str] | None = None
    max_unavailable: int | str | dict[str, int | str] | None = Field(
        None, description="a count or percentage for every role, or one per role"
    )
    max_failures: int | str = 0
    zones: Literal["separate", "mixed"] = "separate"
    canary_pause: bool = False
    batch_pause: Duration = 0.0
    drain: bool | None = Field(None, description="drain each host first (default: rolling only)")
    health: bool | None = Field(None, description="health-check each host (default: rolling only)")
    verify_version: bool | None = Field(
        None, description="require the target version after the host's steps (default: rolling)"
    )
    gate: list[GateSpec] = []
    approve: bool = False
    irreversible: bool = False

    @field_validator("cleanup")
    @classmethod
    def _cleanup_runs(cls, value: list[Step]) -> list[Step]:
        for step in value:
            if step.run is None:
                raise ValueError("cleanup steps are 'run' commands")
        return value

    @field_validator("all", mode="before")
    @classmethod
    def _all_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("gate", mode="before")
    @classmethod
    def _gates(cls, value: Any) -> Any:
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [_gate(v) for v in items]

    @field_validator("batch")
    @classmethod
    def _batch(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("a batch ramp needs at least one size")
            return [_size(v, "batch", minimum=1) for v in value]
        return None if value is None else _size(value, "batch", minimum=1)

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _size(v, f"max_unavailable of '{k}'", minimum=1) for k, v in value.items()}
        return None if value is None else _size(value, "max_unavailable", minimum=1)

    @field_validator("max_failures")
    @classmethod
    def _max_failures(cls, value: Any) -> Any:
        return _size(value, "max_failures", minimum=0)

    @model_validator(mode="after")
    def _kind(self) -> Phase:
        given = [n for n in ("once", "all", "rolling") if getattr(self, n) is not None]
        if len(given) != 1:
            got = f", got {', '.join(given)}" if given else ""
            raise ValueError(f"a phase is exactly one of 'once', 'all', 'rolling'{got}")
        if self.host is not None and self.once is None:
            raise FieldProblem("host", "'host' only applies to a 'once' phase")
        if self.once is not None and self.batch is not None:
            raise FieldProblem("batch", "a 'once' phase runs on one host; 'batch' does not apply")
        if self.all is not None and not self.all:
            raise FieldProblem("all", "'all' needs at least one role")
        if isinstance(self.max_unavailable, dict):
            extra = sorted(set(self.max_unavailable) - set(self.roles))
            if extra:
                raise FieldProblem(
                    ("max_unavailable", extra[0]),
                    f"max_unavailable names role '{extra[0]}', which this phase does not touch",
                )
        return self

    @property
    def kind(self) -> Literal["once", "all", "rolling"]:
        if self.once is not None:
            return "once"
        return "all" if self.all is not None else "rolling"

    @property
    def roles(self) -> list[str]:
        if self.once is not None:
            return [self.once]
        if self.rolling is not None:
            return [self.rolling]
        return list(self.all or [])


class Playbook(BaseModel):
    model_config = STRICT
    name: str
    description: str | None = None
    follows: str | None = Field(None, description="the upstream procedure this follows")
    on_failure: Literal["rollback", "pause"] = "rollback"
    vars: dict[str, Any] = {}
    phases: list[Phase] = Field(min_length=1)


def shipped_playbooks() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in SHIPPED_DIRS:
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def resolve_playbook(ref: str) -> Path:
    """A playbook named by path, or by the name of a shipped one ("nova")."""
    path = Path(ref)
    if path.is_file():
        return path
    shipped = shipped_playbooks()
    if ref in shipped:
        return shipped[ref]
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        raise InputError(Problem(file=ref, message="file not found"))
    raise NotFoundError(
        f"no playbook file '{ref}' and no shipped playbook of that name"
        f"{suggest(ref, shipped)}; shipped: {', '.join(shipped) or 'none'}"
    )


def load_playbook(ref: str) -> tuple[Playbook, Document]:
    path = resolve_playbook(ref)
    display = ref if Path(ref).is_file() else f"playbooks/{path.name}"
    return parse_playbook(load_file(path, display))


def parse_playbook_text(text: str, name: str = "playbook") -> tuple[Playbook, Document]:
    return parse_playbook(load_text(text, name))


def parse_playbook(doc: Document) -> tuple[Playbook, Document]:
    if not isinstance(doc.data, dict):
        raise InputError(doc.problem((), "a playbook must be a mapping with 'name' and 'phases'"))
    playbook: Playbook = validate(Playbook, doc)
    problems = check_playbook(playbook, doc)
    if problems:
        raise InputError(problems)
    return playbook, doc


def check_playbook(playbook: Playbook, doc: Document) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, phase in enumerate(playbook.phases):
        where = ("phases", i)
        if not NAME.match(phase.name):
            problems.append(
                doc.problem((*where, "name"), f"'{phase.name}' is not a valid phase name")
            )
        if phase.name in seen:
            line, _ = doc.locate(("phases", seen[phase.name], "name"))
            problems.append(
                doc.problem(
                    (*where, "name"),
                    f"duplicate phase name '{phase.name}' (first used on line {line})",
                )
            )
        seen.setdefault(phase.name, i)
        if phase.irreversible and not phase.gate:
            problems.append(
                doc.problem(
                    (*where, "irreversible"),
                    f"phase '{phase.name}' is irreversible but has no gate before it; "
                    "add 'gate: all_at_target' (and 'approve: true')",
                )
            )
    for key in playbook.vars:
        # the inventory's vars.from_version is the default for --from; here
        # it would be silently replaced by the version being upgraded from
        if key in RESERVED_VARS or key == "from_version":
            problems.append(
                doc.problem(("vars", key), f"'{key}' is reserved for the template context")
            )
    return problems
