"""The journal's typed events: round trips, the format version, old journals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from orchestrator import events
from orchestrator.engine.states import HostState, PhaseState, StepState, UpgradeState
from orchestrator.engine.view import UpgradeView
from orchestrator.errors import EventFormatError

EVERY_KIND: list[events.JournalEvent] = [
    events.UpgradeStateChanged(state="paused", reason="by hand", verify_step="s1"),
    events.PreflightHost(host="h1", status="ready", version="1.0"),
    events.PhaseStateChanged(phase="p", state="running", irreversible=True),
    events.HostStateChanged(phase="p", host="h1", state="failed", error="boom"),
    events.Drain(phase="p", host="h1", action="drain", stage="done", index=0, detail="ok"),
    events.Step(phase="p", host="h1", step="s1", state="done", exit=0, output="hi"),
    events.Step(phase="p", host="h1", step="c1", state="running", previous=None, had_previous=True),
    events.Gate(phase="p", index=0, ok=False, detail="not at target: h1=1.0"),
    events.Health(phase="p", host="h1", ok=True, detail="2/2 passes"),
    events.Control(action="skip", host="h1", phase="p", by="alice"),
]


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: e.KIND)
def test_every_kind_round_trips_with_its_format_version(event: events.JournalEvent) -> None:
    data = event.to_data()
    assert data["v"] == events.FORMAT
    assert None not in {v for k, v in data.items() if k != "previous"}  # unset fields stay out
    assert events.parse(event.KIND, data) == event


def test_a_recorded_absent_config_value_is_not_an_unrecorded_one() -> None:
    absent = events.Step(phase="p", host="h", step="c", state="running", had_previous=True)
    assert absent.to_data()["previous"] is None
    unrecorded = events.Step(phase="p", host="h", step="c", state="done")
    assert "previous" not in unrecorded.to_data()
    assert events.parse("step", unrecorded.to_data()) == unrecorded


def test_newer_formats_and_malformed_events_are_refused_clearly() -> None:
    with pytest.raises(EventFormatError, match="format 2: this release reads up to 1"):
        events.parse("gate", {"v": 2, "phase": "p", "index": 0, "ok": True, "detail": ""})
    with pytest.raises(EventFormatError, match="gate event"):
        events.parse("gate", {"phase": "p"})
    assert events.parse("something.new", {"v": 1}) is None


@dataclass
class Stored:
    seq: int
    at: float
    kind: str
    data: dict[str, Any]


# what the engine journaled before events were typed: no "v", plain dicts
OLD_JOURNAL: list[tuple[str, dict[str, Any]]] = [
    ("upgrade.state", {"state": "preflight"}),
    ("preflight.host", {"host": "h1", "status": "ready", "version": "1.0"}),
    ("upgrade.state", {"state": "running"}),
    ("phase.state", {"phase": "pin", "state": "running", "irreversible": False}),
    ("host.state", {"phase": "pin", "host": "h1", "state": "upgrading"}),
    ("step", {"phase": "pin", "host": "h1", "step": "c", "state": "running", "previous": None}),
    ("step", {"phase": "pin", "host": "h1", "step": "c", "state": "done", "output": "changed"}),
    ("drain", {"phase": "pin", "host": "h1", "action": "drain", "stage": "start", "index": 0}),
    ("host.state", {"phase": "pin", "host": "h1", "state": "failed", "error": "health"}),
    ("control", {"action": "pause"}),
    ("upgrade.state", {"state": "paused", "reason": "paused by the operator"}),
]


def test_journals_written_before_the_format_version_still_load() -> None:
    view = UpgradeView("u1")
    for seq, (kind, data) in enumerate(OLD_JOURNAL, start=1):
        view.apply(Stored(seq, 1000.0 + seq, kind, data))
    assert (view.state, view.reason) == (UpgradeState.PAUSED, "paused by the operator")
    assert view.preflight["h1"]["status"] == "ready"
    pin = view.phases["pin"]
    assert pin.state is PhaseState.RUNNING
    host = pin.hosts["h1"]
    assert (host.state, host.error, host.drained) == (HostState.FAILED, "health", True)
    step = host.steps["c"]
    assert (step.state, step.had_previous, step.previous) == (StepState.DONE, True, None)
    assert view.completed == [("pin", "h1", "c")]
