"""The state tables, and that the host procedure really goes through them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from typing import Any, cast

import pytest

from orchestrator import events, model
from orchestrator.actions.drain import Drainer
from orchestrator.actions.health import Checker, HealthProgress
from orchestrator.actions.remote import Remote
from orchestrator.engine.host import HostEngine, HostRunner
from orchestrator.engine.states import (
    CLEANUP_TRANSITIONS,
    HOST_EDGES,
    HOST_TRANSITIONS,
    PHASE_TRANSITIONS,
    STEP_EDGES,
    STEP_TRANSITIONS,
    UPGRADE_TRANSITIONS,
    HostState,
    PhaseState,
    StepState,
    UpgradeState,
    check_transition,
)
from orchestrator.engine.view import UpgradeView
from orchestrator.errors import InvalidTransition
from orchestrator.secrets import SecretStore
from orchestrator.store.journal import Event


@pytest.mark.parametrize(
    ("enum", "table"),
    [
        (UpgradeState, UPGRADE_TRANSITIONS),
        (HostState, HOST_TRANSITIONS),
        (PhaseState, PHASE_TRANSITIONS),
        (StepState, STEP_TRANSITIONS),
        (StepState, CLEANUP_TRANSITIONS),
    ],
)
def test_every_state_has_a_row_and_every_edge_a_known_target(
    enum: type[Enum], table: dict[Any, frozenset[Any]]
) -> None:
    assert set(table) == set(enum)
    assert all(target in set(enum) for targets in table.values() for target in targets)


def test_every_host_and_step_edge_names_what_the_engine_does() -> None:
    for edges in (HOST_EDGES, STEP_EDGES):
        for current, targets in edges.items():
            for target, action in targets.items():
                assert action, (current, target)
    assert {s: frozenset(e) for s, e in HOST_EDGES.items()} == HOST_TRANSITIONS
    assert {s: frozenset(e) for s, e in STEP_EDGES.items()} == STEP_TRANSITIONS


def test_terminal_upgrade_states_go_nowhere_but_rollback() -> None:
    for state in UpgradeState:
        if state.terminal:
            assert UPGRADE_TRANSITIONS[state] <= {UpgradeState.ROLLING_BACK}
    with pytest.raises(InvalidTransition):
        check_transition(HOST_TRANSITIONS, "h", HostState.DONE, HostState.UPGRADING)


class FakeEngine:
    """A `HostEngine` with nothing behind it: enough to drive step events."""

    def __init__(self) -> None:
        self.id = "u1"
        self.view = UpgradeView("u1")
        self.plan = cast(model.Plan, None)
        self.remote = cast(Remote, None)
        self.drainer = cast(Drainer, None)
        self.checker = cast(Checker, None)
        self.secrets = SecretStore((), {})
        self.sleep: Callable[[float], Awaitable[None]] = _no_sleep
        self.recorded: list[events.JournalEvent] = []
        self.live_health: dict[tuple[str, str], HealthProgress] = {}
        self.live_changes = 0

    async def record(
        self, event: events.JournalEvent, *, before: Sequence[events.JournalEvent] = ()
    ) -> None:
        for one in [*before, event]:
            self.recorded.append(one)
            self.view.apply(Event("u1", len(self.recorded), 0.0, one.KIND, one.to_data()))

    async def set_host(
        self,
        phase: str,
        host: str,
        state: HostState,
        error: str | None = None,
        *,
        before: Sequence[events.JournalEvent] = (),
    ) -> None:
        changed = events.HostStateChanged(phase=phase, host=host, state=state.value)
        await self.record(changed, before=before)

    def going_on(self) -> bool:
        return True

    async def checkpoint(self) -> None:
        return None

    async def pause_for(self, reason: str, *, verify_step: str | None = None) -> None:
        return None

    def at_target(self, host: str, plan: model.HostPlan) -> bool:
        return False

    def metrics_step(self, step: model.Step, seconds: float, ok: bool) -> None:
        return None

    def metrics_health_failure(self, phase: str, host: str) -> None:
        return None

    async def fatal(self, reason: str) -> None:
        return None


async def _no_sleep(seconds: float) -> None:
    return None


def _runner(engine: HostEngine) -> HostRunner:
    step = model.Step("s1", "s1", model.RunAction("true"))
    cleanup = model.Step("c1", "c1", model.RunAction("true"))
    phase = model.Phase("p", "rolling", ("app",), ())
    return HostRunner(engine, phase, model.HostPlan("h1", ("app",), (step,), (cleanup,)))


async def test_step_events_are_checked_against_the_step_table() -> None:
    engine = FakeEngine()
    runner = _runner(engine)
    with pytest.raises(InvalidTransition, match="step s1 on h1: transition pending -> done"):
        await runner.step_event("s1", StepState.DONE)
    await runner.step_event("s1", StepState.RUNNING)
    await runner.step_event("s1", StepState.DONE)
    # a done step never runs again: only its undo may follow
    with pytest.raises(InvalidTransition, match="done -> running"):
        await runner.step_event("s1", StepState.RUNNING)
    await runner.step_event("s1", StepState.UNDOING)
    await runner.step_event("s1", StepState.UNDONE)
    assert [cast(events.Step, e).state for e in engine.recorded] == [
        "running",
        "done",
        "undoing",
        "undone",
    ]
    # cleanup steps run on every attempt of their host
    for _ in range(2):
        await runner.step_event("c1", StepState.RUNNING)
        await runner.step_event("c1", StepState.DONE)
