"""How long an upgrade takes: the critical path, estimated from the time
hosts spent in each phase in earlier successful upgrades of the same
playbook (drain to undrain, health checks included).

Batches run one after another and the hosts of a batch side by side, so a
phase costs the sum over its batches of the slowest host; a host at work
has the rest of its phase's mean left. Waiting for an approval is not
counted: that is the operator's time. Without a sample for some phase left
to run there is no estimate (None) rather than a wrong one.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator import model
from orchestrator.engine.states import HostState, PhaseState, UpgradeState
from orchestrator.engine.view import PhaseView, UpgradeView
from orchestrator.store.base import Event

FINISHED = (HostState.DONE, HostState.SKIPPED, HostState.FAILED, HostState.ROLLED_BACK)


@dataclass(frozen=True, slots=True)
class History:
    """Mean seconds a host spent in each phase, over `upgrades` earlier runs."""

    per_host: dict[str, float]
    upgrades: int


def history(runs: Iterable[tuple[model.Plan, UpgradeView]], playbook: str) -> History:
    samples: dict[str, list[float]] = {}
    count = 0
    for plan, view in runs:
        if plan.name != playbook or view.state is not UpgradeState.SUCCEEDED:
            continue
        count += 1
        for pv in view.phases.values():
            for hv in pv.hosts.values():
                if hv.state is HostState.DONE and hv.started_at and hv.finished_at:
                    samples.setdefault(pv.name, []).append(hv.finished_at - hv.started_at)
    return History({name: statistics.fmean(v) for name, v in samples.items()}, count)


@dataclass(frozen=True, slots=True)
class BatchClock:
    """What the critical path needs of one batch: whether a host in it has
    all of its phase left (`waiting`), and the latest start among the hosts
    at work in it (None: none is)."""

    waiting: bool
    latest: float | None

    @classmethod
    def of(cls, batch: model.Batch, pv: PhaseView | None) -> BatchClock:
        waiting = False
        latest: float | None = None
        for hp in batch.hosts:
            hv = pv.hosts.get(hp.host) if pv is not None else None
            if hv is None or hv.state is HostState.PENDING:
                waiting = True
            elif hv.state in FINISHED:
                continue
            elif not hv.started_at:  # at work, its start unknown: all of it left
                waiting = True
            elif latest is None or hv.started_at > latest:
                latest = hv.started_at
        return cls(waiting, latest)

    def left(self, mean: float, clock: float) -> float:
        """Seconds until its slowest host is done: of the hosts at work, the one
        that started last has the most left (rounded subtraction keeps the order)."""
        slowest = max(0.0, mean) if self.waiting else 0.0
        if self.latest is not None:
            slowest = max(slowest, mean - (clock - self.latest))  # slowest >= 0
        return slowest


def critical_path(
    plan: model.Plan,
    past: History,
    view: UpgradeView | None = None,
    now: float | None = None,
    clocks: Callable[[int, int], BatchClock] | None = None,
) -> float | None:
    """Seconds left along the critical path (all of it without a `view`);
    `clocks`: (phase index, batch index) -> its BatchClock, when the caller
    keeps them (the live status does), instead of reading every host."""
    clock = time.time() if now is None else now
    total = 0.0
    for i, phase in enumerate(plan.phases):
        pv = view.phases.get(phase.name) if view is not None else None
        if pv is not None and pv.state in (PhaseState.DONE, PhaseState.ROLLED_BACK):
            continue
        mean = past.per_host.get(phase.name)
        if mean is None:
            if phase.host_count == 0:
                continue
            return None
        for j, batch in enumerate(phase.batches):
            batch_clock = clocks(i, j) if clocks is not None else BatchClock.of(batch, pv)
            total += batch_clock.left(mean, clock)
    return total


class Histories:
    """The history of each playbook, kept: read again only when the set of
    its successful upgrades changes (one succeeds, or a success is rolled
    back). `compute` is `history`; tests count its calls."""

    def __init__(
        self,
        compute: Callable[[Iterable[tuple[model.Plan, UpgradeView]], str], History] = history,
    ) -> None:
        self.compute = compute
        self._kept: dict[str, tuple[tuple[str, ...], History]] = {}

    def get(self, runs: Iterable[tuple[str, model.Plan, UpgradeView]], playbook: str) -> History:
        """`runs`: (upgrade id, plan, view) of every upgrade known."""
        listed = [(uid, plan, view) for uid, plan, view in runs if plan.name == playbook]
        key = tuple(uid for uid, _, view in listed if view.state is UpgradeState.SUCCEEDED)
        kept = self._kept.get(playbook)
        if kept is not None and kept[0] == key:
            return kept[1]
        past = self.compute(((plan, view) for _, plan, view in listed), playbook)
        self._kept[playbook] = (key, past)
        return past


def from_journal(path: Path, playbook: str) -> History:
    """The history in a daemon's SQLite journal, read only (for `plan`)."""
    if not path.exists():
        return History({}, 0)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return History({}, 0)
    runs: list[tuple[model.Plan, UpgradeView]] = []
    try:
        for uid, plan_json in conn.execute("SELECT id, plan FROM upgrades"):
            plan = model.from_json(str(plan_json))
            if plan.name != playbook:
                continue
            view = UpgradeView(str(uid))
            rows = conn.execute(
                "SELECT seq, at, kind, data FROM events WHERE upgrade_id = ? ORDER BY seq", (uid,)
            )
            for seq, at, kind, data in rows:
                view.apply(Event(str(uid), int(seq), float(at), str(kind), json.loads(data)))
            runs.append((plan, view))
    except (sqlite3.Error, ValueError):
        return History({}, 0)  # a journal this release cannot read: no estimate
    finally:
        conn.close()
    return history(runs, playbook)
