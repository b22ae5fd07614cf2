"""Upgrade state derived from journal events: the one fold both the engine (to
resume) and the HTTP status (to show) use. Nothing here does I/O.

The event kinds and their fields are the typed values in `orchestrator.events`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator import events
from orchestrator.engine.states import HostState, PhaseState, StepState, UpgradeState

OUTPUT_LINES = 20
# phases whose failed hosts are still failed (not yet rolled back with the phase)
LIVE_PHASES = frozenset({PhaseState.RUNNING, PhaseState.DONE, PhaseState.FAILED})


class EventLike(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class StepView:
    id: str
    state: StepState = StepState.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    exit: int | None = None
    output: str = ""
    error: str | None = None
    # config steps: the value before the edit; `had_previous` tells "absent" from "unknown"
    had_previous: bool = False
    previous: str | None = None
    attempts: int = 0
    undos: int = 0
    # the supervised run of the latest attempt (see docs/transport.md)
    run_id: str | None = None


@dataclass(slots=True)
class HostView:
    name: str
    phase: str
    state: HostState = HostState.PENDING
    drained: bool = False
    draining: bool = False
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    steps: dict[str, StepView] = field(default_factory=dict)

    def step(self, step_id: str) -> StepView:
        view = self.steps.get(step_id)
        if view is None:
            view = self.steps[step_id] = StepView(step_id)
        return view


@dataclass(slots=True)
class PhaseView:
    name: str
    state: PhaseState = PhaseState.PENDING
    reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    hosts: dict[str, HostView] = field(default_factory=dict)

    def host(self, name: str) -> HostView:
        view = self.hosts.get(name)
        if view is None:
            view = self.hosts[name] = HostView(name, self.name)
        return view


@dataclass(frozen=True, slots=True)
class FirstFailure:
    """What went wrong first: kept to the end, through rollback and restarts.
    `what`: step, health, host, gate (a phase's), or upgrade (preflight...)."""

    what: str
    message: str
    at: float
    phase: str | None = None
    host: str | None = None
    step: str | None = None  # its id; the status document names it
    exit: int | None = None
    output: str = ""  # the last lines of the step's output


@dataclass(slots=True)
class UpgradeView:
    id: str
    state: UpgradeState = UpgradeState.PENDING
    reason: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    last_seq: int = 0
    phases: dict[str, PhaseView] = field(default_factory=dict)
    preflight: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (phase, host, step) in the order steps completed: rollback walks it backwards
    completed: list[tuple[str, str, str]] = field(default_factory=list)
    # the irreversible phase once it has *started*: rollback is refused from then on
    irreversible_done: str | None = None
    approvals: set[str] = field(default_factory=set)
    # phase -> (who approved it: the token's name, when)
    approved: dict[str, tuple[str, float]] = field(default_factory=dict)
    rollback_requested: bool = False
    # a step the upgrade is paused on until the operator has verified it by
    # hand; the resume that follows counts as that verification (journaled,
    # so a restart in between does not ask twice) until the step runs again
    awaiting_verification: str | None = None
    verified: set[str] = field(default_factory=set)
    # host -> the phase it failed in, for hosts the operator skipped: later
    # phases and gates leave them out, and they stay out of service
    skipped: dict[str, str] = field(default_factory=dict)
    # (phase, host) the operator ordered retried, until the retry starts
    retries: set[tuple[str, str]] = field(default_factory=set)
    first_failure: FirstFailure | None = None
    # told (phase, host) after an event changed that host in that phase, and
    # (phase, None) after one changed the phase itself: how the live status
    # document (`engine.livestatus`) re-encodes only what changed
    listener: Callable[[str, str | None], None] | None = field(
        default=None, repr=False, compare=False
    )

    def failed_first(self, failure: FirstFailure) -> None:
        if self.first_failure is None:
            self.first_failure = failure

    def phase(self, name: str) -> PhaseView:
        view = self.phases.get(name)
        if view is None:
            view = self.phases[name] = PhaseView(name)
        return view

    def failed_in(self, host: str) -> PhaseView | None:
        """The phase `host` failed in and that has not been rolled back."""
        for pview in self.phases.values():
            hv = pview.hosts.get(host)
            if hv is not None and hv.state is HostState.FAILED and pview.state in LIVE_PHASES:
                return pview
        return None

    def tolerated(self) -> list[HostView]:
        """Hosts that failed within their phase's failure budget: rolled back
        to the old release and kept out of service, until retried or skipped."""
        return [
            hv
            for pview in self.phases.values()
            if pview.state in (PhaseState.RUNNING, PhaseState.DONE)
            for hv in pview.hosts.values()
            if hv.state is HostState.FAILED
        ]

    def apply(self, event: EventLike, typed: events.JournalEvent | None = None) -> None:
        """Fold one journal event in (`typed`: its parsed form, when the caller
        has it). Events must come in seq order."""
        if event.seq <= self.last_seq:
            return
        self.last_seq = event.seq
        if self.created_at is None:
            self.created_at = event.at
        self.updated_at = event.at
        if typed is None:
            typed = events.parse(event.kind, event.data)
        at = event.at
        match typed:
            case events.UpgradeStateChanged():
                self.state = UpgradeState.parse(typed.state)
                self.reason = typed.reason
                if self.state is UpgradeState.FAILED and typed.reason:
                    self.failed_first(FirstFailure("upgrade", typed.reason, at))
                if typed.verify_step:
                    self.awaiting_verification = typed.verify_step
            case events.PreflightHost():
                self.preflight[typed.host] = typed.to_data()
            case events.PhaseStateChanged():
                _phase_state(self, typed, at)
                self._touched(typed.phase, None)
            case events.HostStateChanged():
                _host_state(self, typed, at)
                self._touched(typed.phase, typed.host)
            case events.Drain():
                _drain(self, typed)
                self._touched(typed.phase, typed.host)
            case events.Step():
                _step(self, typed, at)
                self._touched(typed.phase, typed.host)
            case events.Control():
                _control(self, typed, at)
            case _:
                pass  # gates, health results: in the journal, not in the state

    def _touched(self, phase: str, host: str | None) -> None:
        if self.listener is not None:
            self.listener(phase, host)


def _phase_state(view: UpgradeView, ev: events.PhaseStateChanged, at: float) -> None:
    phase = view.phase(ev.phase)
    phase.state = PhaseState(ev.state)
    if ev.reason is not None:  # kept through rollback: why the phase failed stays visible
        phase.reason = ev.reason
    if phase.state is PhaseState.FAILED and ev.reason:
        view.failed_first(FirstFailure("gate", ev.reason, at, phase=ev.phase))
    if phase.state is PhaseState.RUNNING and phase.started_at is None:
        phase.started_at = at
    if phase.state in (PhaseState.DONE, PhaseState.FAILED, PhaseState.ROLLED_BACK):
        phase.finished_at = at
    if ev.irreversible and phase.state in (PhaseState.RUNNING, PhaseState.DONE):
        view.irreversible_done = phase.name


def _host_state(view: UpgradeView, ev: events.HostStateChanged, at: float) -> None:
    host = view.phase(ev.phase).host(ev.host)
    host.state = HostState(ev.state)
    if ev.error is not None:
        host.error = ev.error
        if host.state in (HostState.ROLLING_BACK, HostState.FAILED):
            what = "health" if "health" in ev.error else "host"
            view.failed_first(FirstFailure(what, ev.error, at, phase=ev.phase, host=ev.host))
    if host.started_at is None and host.state is not HostState.PENDING:
        host.started_at = at
    if host.state in (HostState.DONE, HostState.FAILED, HostState.ROLLED_BACK, HostState.SKIPPED):
        host.finished_at = at
    elif host.state is HostState.PENDING:  # a retry starts
        view.retries.discard((host.phase, host.name))
        host.finished_at = None


def _drain(view: UpgradeView, ev: events.Drain) -> None:
    """A host counts as drained from the moment draining *starts* (a crash or a
    failure half-way must still undrain it) until an undrain is done."""
    host = view.phase(ev.phase).host(ev.host)
    if ev.action == "drain":
        host.drained = True
        host.draining = ev.stage == "start"
    elif ev.stage == "done":
        host.drained = False


def _step(view: UpgradeView, ev: events.Step, at: float) -> None:
    host = view.phase(ev.phase).host(ev.host)
    step = host.step(ev.step)
    state = StepState(ev.state)
    step.state = state
    if state is StepState.RUNNING:
        view.verified.discard(ev.step)  # a new run is a new uncertainty
        step.attempts += 1
        step.started_at = at
        step.finished_at = None
        step.error = None
    elif state is StepState.UNDOING:
        step.undos += 1
    if ev.run is not None:
        step.run_id = ev.run
    if ev.had_previous:
        step.had_previous = True
        step.previous = ev.previous
    if ev.exit is not None:
        step.exit = ev.exit
    if ev.output is not None:
        step.output = _tail(ev.output)
    if ev.error is not None:
        step.error = ev.error
    if state in (StepState.DONE, StepState.FAILED, StepState.UNDONE):
        step.finished_at = at
    if state is StepState.FAILED:
        exit_ = f" (exit {step.exit})" if step.exit is not None else ""
        message = f"step failed{exit_}" + (f": {step.error}" if step.error else "")
        failure = FirstFailure(
            "step", message, at, ev.phase, ev.host, ev.step, step.exit, _tail(step.output, 10)
        )
        view.failed_first(failure)
    key = (ev.phase, ev.host, ev.step)
    if state is StepState.DONE:
        view.completed.append(key)
    elif state is StepState.UNDONE and key in view.completed:
        view.completed.remove(key)


def _control(view: UpgradeView, ev: events.Control, at: float) -> None:
    if ev.action == "resume" and view.awaiting_verification is not None:
        view.verified.add(view.awaiting_verification)
        view.awaiting_verification = None
    elif ev.action == "approve" and ev.phase:
        view.approvals.add(ev.phase)
        view.approved[ev.phase] = (ev.by or "unknown", at)
    elif ev.action == "rollback":
        view.rollback_requested = True
    elif ev.action == "retry" and ev.phase and ev.host:
        view.retries.add((ev.phase, ev.host))
    elif ev.action == "skip" and ev.phase and ev.host:
        view.skipped[ev.host] = ev.phase
        view.retries.discard((ev.phase, ev.host))


def _tail(text: str, lines: int = OUTPUT_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])
