"""The live status document: byte for byte what `status_document` builds, kept
per journal seq, re-encoding only the rows events touched; the history the
estimate reads, kept per playbook."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import model
from orchestrator.actions.health import HealthProgress
from orchestrator.engine.eta import BatchClock, Histories, History, critical_path, history
from orchestrator.engine.livestatus import LiveStatus, around
from orchestrator.engine.manager import Upgrade, UpgradeManager
from orchestrator.engine.states import HostState, PhaseState, StepState, UpgradeState
from orchestrator.engine.status import status_document
from orchestrator.engine.view import UpgradeView
from orchestrator.store.base import Event
from tests.test_eta import earlier_run, plan

PLAN = plan()  # lab: pin (all), roll (one host a batch), contract, finish; hosts a, b, c
# long enough that hosts at work in the runs below still have some of it left
PAST = History({"pin": 20.0, "roll": 42.0, "contract": 10.0, "finish": 30.0}, 1)
NOW = 1030.0
PLACES = [
    (phase.name, hp.host, tuple(s.id for s in hp.steps))
    for phase in PLAN.phases
    for batch in phase.batches
    for hp in batch.hosts
]
KEYS = sorted({(phase, host) for phase, host, _ in PLACES})


def expected(view: UpgradeView, **kw: Any) -> bytes:
    """What the API answered before the live status: the whole document, encoded."""
    stalled = kw.pop("stalled", None)
    doc = status_document("u", PLAN, view, "dg", now=NOW, **kw)
    doc["stalled"] = stalled
    return json.dumps(doc, separators=(",", ":")).encode()


@st.composite
def journal_data(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """One event's kind and data, anywhere in the plan, in any state."""
    phase, host, steps = draw(st.sampled_from(PLACES))
    maybe = st.none() | st.sampled_from(["boom", "health: 503 from /healthcheck"])
    kind = draw(st.sampled_from(["upgrade", "phase", "host", "host", "drain", "step", "control"]))
    if kind == "upgrade":
        state = draw(st.sampled_from([s.label for s in UpgradeState]))
        return "upgrade.state", {"state": state, "reason": draw(maybe)}
    if kind == "phase":
        data = {"phase": phase, "state": draw(st.sampled_from([s.value for s in PhaseState]))}
        return "phase.state", data | {"reason": draw(maybe), "irreversible": draw(st.booleans())}
    if kind == "host":
        state = draw(st.sampled_from([s.value for s in HostState]))
        return "host.state", {"phase": phase, "host": host, "state": state, "error": draw(maybe)}
    if kind == "drain":
        action = draw(st.sampled_from(["drain", "undrain"]))
        stage = draw(st.sampled_from(["start", "done"]))
        return "drain", {"phase": phase, "host": host, "action": action, "stage": stage}
    if kind == "step":
        return "step", {
            "phase": phase,
            "host": host,
            "step": draw(st.sampled_from(steps)),
            "state": draw(st.sampled_from([s.value for s in StepState])),
            "exit": draw(st.none() | st.integers(0, 2)),
            "output": draw(st.none() | st.text(max_size=30)),
            "error": draw(maybe),
        }
    action = draw(st.sampled_from(["approve", "skip", "retry", "resume", "rollback"]))
    return "control", {"action": action, "phase": phase, "host": host, "by": "ops"}


health_maps = st.dictionaries(
    st.sampled_from(KEYS),
    st.builds(
        HealthProgress,
        st.integers(0, 3),
        st.just(3),
        st.floats(0, 60, allow_nan=False),
        st.just(30.0),
        st.text(max_size=10),
    ),
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(
    run=st.lists(
        st.tuples(journal_data(), st.booleans(), health_maps | st.none(), st.booleans()),
        max_size=60,
    ),
    past=st.none() | st.just(PAST),
)
def test_the_live_document_is_the_whole_document_after_every_event(
    run: list[tuple[tuple[str, dict[str, Any]], bool, dict[Any, HealthProgress] | None, bool]],
    past: History | None,
) -> None:
    view = UpgradeView("u")
    live = LiveStatus("u", PLAN, "dg", view, clock=lambda: NOW)
    health: dict[Any, HealthProgress] = {}
    for seq, ((kind, data), read, new_health, stall) in enumerate(run, start=1):
        view.apply(Event("u", seq, 1000.0 + seq * 0.5, kind, data))
        if new_health is not None:
            health = new_health
        if not read:
            continue  # several events between two reads
        stalled = "disk full" if stall else None
        got = live.document(stalled=stalled, health=health, changes=seq, past=past)
        assert got == expected(view, past=past, health=health, stalled=stalled)


class Run:
    def __init__(self, view: UpgradeView) -> None:
        self.view = view

    def __call__(self, kind: str, **data: Any) -> None:
        seq = self.view.last_seq + 1
        self.view.apply(Event(self.view.id, seq, 1000.0 + seq, kind, data))


def test_the_same_seq_is_the_same_object_and_an_event_makes_a_new_one() -> None:
    view = UpgradeView("u")
    event = Run(view)
    event("upgrade.state", state="running")
    live = LiveStatus("u", PLAN, "dg", view)
    first = live.document()
    assert live.document() is first  # nothing happened: the same bytes object
    assert live.builds == 1
    event("phase.state", phase="pin", state="running")
    second = live.document()
    assert second is not first and live.builds == 2
    assert json.loads(second)["last_event"] == 2
    assert json.loads(second)["phases"][0]["state"] == "running"
    # a stall, a health round, a new history: each is news the journal does not have
    assert live.document(stalled="disk full") is not second
    assert live.document(changes=1) is not live.document(changes=2)
    assert json.loads(live.document(past=PAST))["eta_s"] is not None


def test_an_event_re_encodes_the_row_it_touched_and_no_other() -> None:
    view = UpgradeView("u")
    event = Run(view)
    live = LiveStatus("u", PLAN, "dg", view)
    live.document()
    assert live.rows_encoded == len(PLACES)  # the first read encodes every row
    event("step", phase="roll", host="b", step=PLACES[4][2][0], state="running")
    event("host.state", phase="roll", host="b", state="upgrading")
    live.document()
    assert live.rows_encoded == len(PLACES) + 1
    live.document(health={("roll", "b"): HealthProgress(1, 3, 2.0, 30.0, "ok")}, changes=1)
    assert live.rows_encoded == len(PLACES) + 2
    live.document(health={}, changes=2)  # its check is over
    assert live.rows_encoded == len(PLACES) + 3
    # a phase's state decides whether its failed hosts are tolerated: those rows only
    event("host.state", phase="pin", host="a", state="failed", error="boom")
    live.document()
    event("phase.state", phase="pin", state="running")
    doc = json.loads(live.document())
    assert live.rows_encoded == len(PLACES) + 5
    assert doc["phases"][0]["batches"][0]["hosts"][0]["tolerated"] is True
    # an event about a host the plan does not have changes nothing
    event("host.state", phase="pin", host="zz", state="done")
    live.document()
    assert live.rows_encoded == len(PLACES) + 5


def test_around_splits_an_object_where_a_value_goes() -> None:
    head, tail = around({"a": 1, "rows": None, "b": "x"}, "rows")
    assert head + b"[1,2]" + tail == b'{"a":1,"rows":[1,2],"b":"x"}'
    head, tail = around({"rows": None}, "rows")
    assert head + b"[]" + tail == b'{"rows":[]}'


def test_around_splits_right_when_another_value_looks_like_its_marker() -> None:
    # a command's output or a reason can hold any text, the marker's too
    marker = "\x00hole\x00"
    obj = {"reason": marker, "rows": None, "output": [marker]}
    head, tail = around(obj, "rows")
    assert head + b"[7]" + tail == json.dumps({**obj, "rows": [7]}, separators=(",", ":")).encode()


def per_host(plan: model.Plan, past: History, view: UpgradeView, now: float) -> float | None:
    """The critical path as eta.py first summed it: every host of every batch."""
    total = 0.0
    for phase in plan.phases:
        pv = view.phases.get(phase.name)
        if pv is not None and pv.state in (PhaseState.DONE, PhaseState.ROLLED_BACK):
            continue
        mean = past.per_host.get(phase.name)
        if mean is None:
            if phase.host_count == 0:
                continue
            return None
        for batch in phase.batches:
            slowest = 0.0
            for hp in batch.hosts:
                hv = pv.hosts.get(hp.host) if pv is not None else None
                if hv is None or hv.state is HostState.PENDING:
                    left = mean
                elif hv.state in (
                    HostState.DONE,
                    HostState.SKIPPED,
                    HostState.FAILED,
                    HostState.ROLLED_BACK,
                ):
                    left = 0.0
                else:
                    left = max(0.0, mean - (now - (hv.started_at or now)))
                slowest = max(slowest, left)
            total += slowest
    return total


@settings(max_examples=100, deadline=None)
@given(run=st.lists(journal_data(), max_size=40), now=st.floats(1000.0, 1060.0))
def test_batch_clocks_give_the_critical_path_host_by_host(
    run: list[tuple[str, dict[str, Any]]], now: float
) -> None:
    view = UpgradeView("u")
    for seq, (kind, data) in enumerate(run, start=1):
        view.apply(Event("u", seq, 1000.0 + seq * 0.5, kind, data))
    assert critical_path(PLAN, PAST, view, now) == per_host(PLAN, PAST, view, now)
    clocks = [
        [BatchClock.of(batch, view.phases.get(phase.name)) for batch in phase.batches]
        for phase in PLAN.phases
    ]
    kept = critical_path(PLAN, PAST, view, now, lambda i, j: clocks[i][j])
    assert kept == per_host(PLAN, PAST, view, now)


def test_a_batch_waits_for_the_host_that_started_last() -> None:
    view = UpgradeView("u")
    for seq, at, host, state in [
        (1, 1002.0, "a", "upgrading"),
        (2, 1010.0, "b", "upgrading"),
        (3, 1011.0, "c", "upgrading"),
        (4, 1012.0, "c", "done"),
    ]:
        data = {"phase": "pin", "host": host, "state": state}
        view.apply(Event("u", seq, at, "host.state", data))
    clock = BatchClock.of(PLAN.phases[0].batches[0], view.phases["pin"])
    assert clock == BatchClock(waiting=False, latest=1010.0)
    assert clock.left(20.0, 1015.0) == 15.0  # b has 15 s left, a only 7
    assert clock.left(20.0, 1040.0) == 0.0  # overdue: nothing left, not less
    assert BatchClock(waiting=True, latest=None).left(20.0, 1040.0) == 20.0


# --- through the manager -------------------------------------------------------


class CountingHistory:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, runs: Iterable[tuple[model.Plan, UpgradeView]], playbook: str) -> History:
        self.calls.append(playbook)
        return history(runs, playbook)


def add(manager: UpgradeManager, upgrade_id: str, view: UpgradeView, name: str = "lab") -> Upgrade:
    run_plan = PLAN if name == "lab" else model.from_data({**model.to_data(PLAN), "name": name})
    up = Upgrade(upgrade_id, run_plan, "dg", "inv", 0.0, view)
    manager.upgrades[upgrade_id] = up
    return up


def test_history_is_read_once_per_playbook_until_an_upgrade_of_it_ends() -> None:
    counting = CountingHistory()
    manager = UpgradeManager(None, histories=Histories(counting))  # type: ignore[arg-type]
    add(manager, "u-old", earlier_run().view)
    running = UpgradeView("u-new")
    add(manager, "u-new", running)
    other = UpgradeView("u-other")
    add(manager, "u-other", other, name="other")
    event = Run(running)
    event("upgrade.state", state="running")

    first = manager.status_json("u-new")
    assert json.loads(first)["eta_s"] is not None  # from u-old's timings
    for _ in range(3):
        event("phase.state", phase="pin", state="running")
        manager.status_json("u-new")
    assert counting.calls == ["lab"]
    Run(other)("upgrade.state", state="succeeded")  # another playbook's end: not this one's
    manager.status_json("u-new")
    assert counting.calls == ["lab"]
    event("upgrade.state", state="succeeded")  # one of lab's ends: read again, once
    manager.status_json("u-new")
    manager.status_json("u-old")
    assert counting.calls == ["lab", "lab"]
    assert manager.history("lab").upgrades == 2


def test_a_view_read_afresh_gets_a_live_status_of_its_own() -> None:
    manager = UpgradeManager(None)  # type: ignore[arg-type]
    view = UpgradeView("u")
    up = add(manager, "u", view)
    Run(view)("upgrade.state", state="running")
    before = manager.status_json("u")
    assert up.live is not None and up.live.view is view
    fresh = UpgradeView("u")  # what a promotion reads back from the journal
    Run(fresh)("upgrade.state", state="paused", reason="by hand")
    up.view = fresh
    after = json.loads(manager.status_json("u"))
    assert after["state"] == "paused" and before != manager.status_json("u")
    assert up.live.view is fresh
