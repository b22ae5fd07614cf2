"""The journal's event kinds as typed values: one frozen dataclass per kind.

The engine builds them, the journal stores `to_data()` (the fields that are
set, plus the format version `v`), and the view, the metrics, the event
stream's readers and the CLI read them back with `parse`. Journals written
before the format version existed (no `v`) are format 1 and load as they are.

Standard library only: the CLI imports this without the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from orchestrator.errors import EventFormatError

FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    KIND: ClassVar[str]

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"v": FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                data[f.name] = value
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Any:
        return _build(cls, _values(cls, data))


def _values(cls: type[_Event], data: dict[str, Any]) -> dict[str, Any]:
    version = data.get("v", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise EventFormatError(
            f"{cls.KIND} event of format {version!r}: this release reads up to {FORMAT}"
        )
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in known}


def _build(cls: type[_Event], values: dict[str, Any]) -> Any:
    try:
        return cls(**values)
    except TypeError as exc:
        raise EventFormatError(f"{cls.KIND} event {values!r}: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeStateChanged(_Event):
    KIND: ClassVar[str] = "upgrade.state"
    state: str
    reason: str | None = None
    # paused on a step to verify by hand: the resume that follows verifies it
    verify_step: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PreflightHost(_Event):
    KIND: ClassVar[str] = "preflight.host"
    host: str
    status: str  # ready | at_target | error
    version: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseStateChanged(_Event):
    KIND: ClassVar[str] = "phase.state"
    phase: str
    state: str
    reason: str | None = None
    irreversible: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStateChanged(_Event):
    KIND: ClassVar[str] = "host.state"
    phase: str
    host: str
    state: str
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Drain(_Event):
    KIND: ClassVar[str] = "drain"
    phase: str
    host: str
    action: str  # drain | undrain
    stage: str  # start | done | failed
    index: int | None = None
    detail: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Step(_Event):
    KIND: ClassVar[str] = "step"
    phase: str
    host: str
    step: str
    state: str
    exit: int | None = None
    output: str | None = None
    error: str | None = None
    via: str | None = None
    # the supervised run of this attempt (with `running`): a resumed engine
    # follows it to its real end instead of guessing
    run: str | None = None
    # config steps: the value before the edit, recorded with `running`;
    # `had_previous` tells "the key was absent" (previous None) from "not recorded"
    previous: str | None = None
    had_previous: bool = False

    def to_data(self) -> dict[str, Any]:
        data = _Event.to_data(self)
        del data["had_previous"]
        if self.had_previous:
            data["previous"] = self.previous  # None included: the key was absent
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Step:
        values = _values(cls, data)
        values["had_previous"] = "previous" in data
        step: Step = _build(cls, values)
        return step


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate(_Event):
    KIND: ClassVar[str] = "gate"
    phase: str
    index: int
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Health(_Event):
    KIND: ClassVar[str] = "health"
    phase: str
    host: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Control(_Event):
    """An operator's order, journaled with who gave it (the token's name)."""

    KIND: ClassVar[str] = "control"
    action: str  # pause resume abort approve rollback retry skip
    by: str | None = None
    stage: int | None = None  # abort: 1 finishes running steps, 2 cancels them
    phase: str | None = None  # approve: the phase approved; retry, skip: where it failed
    host: str | None = None  # retry, skip


JournalEvent = (
    UpgradeStateChanged
    | PreflightHost
    | PhaseStateChanged
    | HostStateChanged
    | Drain
    | Step
    | Gate
    | Health
    | Control
)
KINDS: dict[str, type[_Event]] = {
    cls.KIND: cls
    for cls in (
        UpgradeStateChanged,
        PreflightHost,
        PhaseStateChanged,
        HostStateChanged,
        Drain,
        Step,
        Gate,
        Health,
        Control,
    )
}


def parse(kind: str, data: dict[str, Any]) -> JournalEvent | None:
    """The typed event, or None for a kind this release does not know."""
    cls = KINDS.get(kind)
    if cls is None:
        return None
    event: JournalEvent = cls.from_data(data)
    return event
