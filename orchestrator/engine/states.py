"""State enums with their metadata and the explicit tables of allowed transitions.

The engine never assigns a state directly: it asks `check_transition`, which
refuses anything the table does not allow. The same tables drive the status
API ("what can happen next") and the fold of journal events into state.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from orchestrator.errors import InvalidTransition


class UpgradeState(Enum):
    """(value, terminal, rollback allowed from here)"""

    PENDING = ("pending", False, True)
    PREFLIGHT = ("preflight", False, True)
    RUNNING = ("running", False, True)
    PAUSED = ("paused", False, True)
    WAITING_APPROVAL = ("waiting_approval", False, True)
    ABORTING = ("aborting", False, True)
    ROLLING_BACK = ("rolling_back", False, False)
    SUCCEEDED = ("succeeded", True, False)
    FAILED = ("failed", True, True)
    ROLLED_BACK = ("rolled_back", True, False)
    ABORTED = ("aborted", True, True)

    def __init__(self, label: str, terminal: bool, rollbackable: bool) -> None:
        self.label = label
        self.terminal = terminal
        self.rollbackable = rollbackable

    @classmethod
    def parse(cls, label: str) -> UpgradeState:
        for state in cls:
            if state.label == label:
                return state
        raise ValueError(f"unknown upgrade state {label!r}")


U = UpgradeState
UPGRADE_TRANSITIONS: dict[UpgradeState, frozenset[UpgradeState]] = {
    U.PENDING: frozenset({U.PREFLIGHT, U.ABORTING, U.ROLLING_BACK, U.FAILED}),
    U.PREFLIGHT: frozenset({U.RUNNING, U.FAILED, U.ABORTING, U.PAUSED, U.ROLLING_BACK}),
    U.RUNNING: frozenset(
        {U.PAUSED, U.WAITING_APPROVAL, U.ABORTING, U.ROLLING_BACK, U.SUCCEEDED, U.FAILED}
    ),
    U.PAUSED: frozenset({U.RUNNING, U.ABORTING, U.ROLLING_BACK, U.FAILED}),
    U.WAITING_APPROVAL: frozenset({U.RUNNING, U.PAUSED, U.ABORTING, U.ROLLING_BACK}),
    # SUCCEEDED: the abort came during the last steps, which finished; nothing was left to stop
    U.ABORTING: frozenset({U.ABORTED, U.ROLLING_BACK, U.FAILED, U.SUCCEEDED}),
    U.ROLLING_BACK: frozenset({U.ROLLED_BACK, U.FAILED}),
    U.SUCCEEDED: frozenset(),
    # a failed or aborted upgrade can still be rolled back (before the point of no return)
    U.FAILED: frozenset({U.ROLLING_BACK}),
    U.ROLLED_BACK: frozenset(),
    U.ABORTED: frozenset({U.ROLLING_BACK}),
}


class HostState(Enum):
    """A host's state within one phase."""

    PENDING = "pending"
    DRAINING = "draining"
    UPGRADING = "upgrading"
    CHECKING = "checking"
    UNDRAINING = "undraining"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


H = HostState
HOST_TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    H.PENDING: frozenset({H.DRAINING, H.UPGRADING, H.SKIPPED}),
    H.DRAINING: frozenset({H.UPGRADING, H.ROLLING_BACK}),
    H.UPGRADING: frozenset({H.CHECKING, H.UNDRAINING, H.DONE, H.ROLLING_BACK}),
    H.CHECKING: frozenset({H.UNDRAINING, H.DONE, H.ROLLING_BACK}),
    H.UNDRAINING: frozenset({H.DONE, H.ROLLING_BACK}),
    H.DONE: frozenset({H.ROLLING_BACK}),
    # a host the operator skipped after it failed is still drained: rollback undrains it
    H.SKIPPED: frozenset({H.ROLLING_BACK}),
    H.ROLLING_BACK: frozenset({H.ROLLED_BACK, H.FAILED}),
    # a failed host is rolled back when the whole upgrade is, or retried on resume
    H.FAILED: frozenset({H.ROLLING_BACK, H.PENDING, H.SKIPPED}),
    H.ROLLED_BACK: frozenset({H.FAILED, H.PENDING}),
}


class PhaseState(Enum):
    PENDING = "pending"
    GATED = "gated"
    WAITING_APPROVAL = "waiting_approval"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


P = PhaseState
PHASE_TRANSITIONS: dict[PhaseState, frozenset[PhaseState]] = {
    P.PENDING: frozenset({P.GATED, P.WAITING_APPROVAL, P.RUNNING, P.ROLLED_BACK}),
    P.GATED: frozenset({P.WAITING_APPROVAL, P.RUNNING, P.FAILED, P.ROLLED_BACK}),
    P.WAITING_APPROVAL: frozenset({P.RUNNING, P.ROLLED_BACK, P.FAILED}),
    P.RUNNING: frozenset({P.DONE, P.FAILED, P.ROLLING_BACK}),
    P.DONE: frozenset({P.ROLLING_BACK}),
    P.FAILED: frozenset({P.ROLLING_BACK, P.RUNNING, P.GATED}),
    P.ROLLING_BACK: frozenset({P.ROLLED_BACK, P.FAILED}),
    P.ROLLED_BACK: frozenset(),
}


class StepState(Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    UNDOING = "undoing"
    UNDONE = "undone"


S = StepState
STEP_TRANSITIONS: dict[StepState, frozenset[StepState]] = {
    S.PENDING: frozenset({S.RUNNING}),
    # RUNNING -> RUNNING: re-run after a crash (idempotent, or check said not done)
    S.RUNNING: frozenset({S.RUNNING, S.DONE, S.FAILED, S.UNDOING}),
    S.DONE: frozenset({S.UNDOING}),
    S.FAILED: frozenset({S.RUNNING, S.UNDOING}),
    S.UNDOING: frozenset({S.UNDOING, S.UNDONE, S.FAILED}),
    S.UNDONE: frozenset({S.RUNNING}),
}

E = TypeVar("E", bound=Enum)


def check_transition(table: dict[E, frozenset[E]], what: str, current: E, target: E) -> None:
    if target not in table[current]:
        raise InvalidTransition(what, _label(current), _label(target))


def _label(state: Enum) -> str:
    value = state.value
    return str(value[0] if isinstance(value, tuple) else value)
