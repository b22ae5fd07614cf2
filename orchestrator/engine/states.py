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
# The host procedure: for each state, the states it may go to and what the
# engine does on that edge (`HostRunner` walks it; resume re-enters it at the
# journal's state, through the same checks).
HOST_EDGES: dict[HostState, dict[HostState, str]] = {
    H.PENDING: {
        H.DRAINING: "take the host out of service",
        H.UPGRADING: "run the steps (the phase does not drain)",
        H.SKIPPED: "nothing: at the target already, or skipped by the operator",
    },
    H.DRAINING: {H.UPGRADING: "run the steps", H.ROLLING_BACK: "undo, the drain failed"},
    H.UPGRADING: {
        H.CHECKING: "health-check and probe the version",
        H.UNDRAINING: "put the host back in service",
        H.DONE: "nothing left",
        H.ROLLING_BACK: "undo the steps that ran, newest first",
    },
    H.CHECKING: {
        H.UNDRAINING: "put the host back in service",
        H.DONE: "nothing left",
        H.ROLLING_BACK: "undo the steps, the check failed",
    },
    H.UNDRAINING: {H.DONE: "nothing left", H.ROLLING_BACK: "undo, the undrain failed"},
    H.DONE: {H.ROLLING_BACK: "fleet rollback: undo the steps"},
    # a host the operator skipped after it failed is still drained: rollback undrains it
    H.SKIPPED: {H.ROLLING_BACK: "fleet rollback: put it back in service"},
    H.ROLLING_BACK: {
        H.ROLLED_BACK: "nothing: undone and back in service",
        H.FAILED: "keep it out of service (its undo failed, or it failed in the budget)",
    },
    # a failed host is rolled back when the whole upgrade is, or retried on resume
    H.FAILED: {
        H.ROLLING_BACK: "fleet rollback: undo what is left, undrain",
        H.PENDING: "retry: the phase procedure again",
        H.SKIPPED: "the operator leaves it behind",
    },
    H.ROLLED_BACK: {H.FAILED: "record why", H.PENDING: "retry: the phase procedure again"},
}
HOST_TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    state: frozenset(edges) for state, edges in HOST_EDGES.items()
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
# A step's life, with what the engine does on each edge.
STEP_EDGES: dict[StepState, dict[StepState, str]] = {
    S.PENDING: {S.RUNNING: "run it"},
    S.RUNNING: {
        # after a crash: its check said not done, or it is idempotent, or verified by hand
        S.RUNNING: "run it again",
        S.DONE: "record its output (or its check passed after a crash)",
        S.FAILED: "record why; the host fails",
        S.UNDOING: "undo it: it may have run",
    },
    S.DONE: {S.UNDOING: "run its undo (or restore the config value)"},
    S.FAILED: {S.RUNNING: "run it again (phase retried)", S.UNDOING: "undo it: it may have run"},
    S.UNDOING: {
        S.UNDOING: "undo again after a crash",
        S.UNDONE: "nothing",
        S.FAILED: "record why; the rollback is incomplete",
    },
    S.UNDONE: {S.RUNNING: "run it again (host or phase retried)"},
}
STEP_TRANSITIONS: dict[StepState, frozenset[StepState]] = {
    state: frozenset(edges) for state, edges in STEP_EDGES.items()
}
# cleanup steps run on every attempt of their host, whatever happened before
CLEANUP_TRANSITIONS: dict[StepState, frozenset[StepState]] = {
    S.PENDING: frozenset({S.RUNNING}),
    S.RUNNING: frozenset({S.RUNNING, S.DONE, S.FAILED}),
    S.DONE: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.RUNNING}),
    S.UNDOING: frozenset(),
    S.UNDONE: frozenset(),
}

E = TypeVar("E", bound=Enum)


def check_transition(table: dict[E, frozenset[E]], what: str, current: E, target: E) -> None:
    if target not in table[current]:
        raise InvalidTransition(what, _label(current), _label(target))


def edge_action(table: dict[E, dict[E, str]], current: E, target: E) -> str:
    """What the engine does on an allowed edge (for the log)."""
    return table[current].get(target, "")


def _label(state: Enum) -> str:
    value = state.value
    return str(value[0] if isinstance(value, tuple) else value)
