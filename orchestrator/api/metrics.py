"""Prometheus text exposition, written by hand (format 0.0.4; no extra dependency).

Gauges (upgrades and hosts by state) are computed from the manager's views at
scrape time; step durations and health-check failures are fed from the
journal events the engines emit, through `Metrics.observe`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from orchestrator import events
from orchestrator.engine.manager import UpgradeManager
from orchestrator.engine.states import HostState, StepState, UpgradeState
from orchestrator.engine.view import EventLike
from orchestrator.store.role import Role

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


@dataclass(slots=True)
class Metrics:
    """Counters fed by events; `render` adds the gauges read from the manager."""

    steps: dict[str, Histogram] = field(default_factory=dict)
    health_failures: Counter[str] = field(default_factory=Counter)
    events: int = 0
    _running: dict[tuple[str, str, str, str], float] = field(default_factory=dict)

    def observe(self, upgrade_id: str, event: EventLike) -> None:
        self.events += 1
        typed = events.parse(event.kind, event.data)
        if isinstance(typed, events.Step):
            key = (upgrade_id, typed.phase, typed.host, typed.step)
            if typed.state == StepState.RUNNING.value:
                self._running[key] = event.at
            elif typed.state in (StepState.DONE.value, StepState.FAILED.value):
                started = self._running.pop(key, None)
                if started is not None:
                    outcome = "ok" if typed.state == StepState.DONE.value else "failed"
                    self.steps.setdefault(outcome, Histogram()).observe(
                        max(0.0, event.at - started)
                    )
        elif isinstance(typed, events.Health) and not typed.ok:
            self.health_failures[typed.phase] += 1

    def render(self, manager: UpgradeManager, role: Role | None = None) -> str:
        lines: list[str] = []
        if role is not None:
            _leadership(lines, role)
        upgrades: Counter[str] = Counter({s.label: 0 for s in UpgradeState})
        hosts: Counter[str] = Counter({s.value: 0 for s in HostState})
        for up in manager.upgrades.values():
            upgrades[up.view.state.label] += 1
            if up.view.state.terminal:
                continue
            for phase in up.plan.phases:
                pview = up.view.phases.get(phase.name)
                for batch in phase.batches:
                    for hp in batch.hosts:
                        hview = pview.hosts.get(hp.host) if pview else None
                        hosts[(hview.state if hview else HostState.PENDING).value] += 1
        _gauge(lines, "orchestrator_upgrades", "Upgrades known to the daemon, by state.", upgrades)
        _gauge(
            lines,
            "orchestrator_hosts",
            "Host slots (host x phase) of unfinished upgrades, by state.",
            hosts,
        )
        name = "orchestrator_step_duration_seconds"
        lines.append(f"# HELP {name} Wall time of host steps, from start to done or failed.")
        lines.append(f"# TYPE {name} histogram")
        for outcome in sorted(self.steps):
            hist = self.steps[outcome]
            for bound, count in zip(hist.buckets, hist.counts, strict=True):
                lines.append(f'{name}_bucket{{outcome="{outcome}",le="{_num(bound)}"}} {count}')
            lines.append(f'{name}_bucket{{outcome="{outcome}",le="+Inf"}} {hist.n}')
            lines.append(f'{name}_sum{{outcome="{outcome}"}} {_num(hist.total)}')
            lines.append(f'{name}_count{{outcome="{outcome}"}} {hist.n}')
        name = "orchestrator_health_check_failures_total"
        lines.append(f"# HELP {name} Failed host health checks, by phase.")
        lines.append(f"# TYPE {name} counter")
        for phase_name in sorted(self.health_failures):
            count = self.health_failures[phase_name]
            lines.append(f'{name}{{phase="{_escape(phase_name)}"}} {count}')
        name = "orchestrator_journal_events_total"
        lines.append(f"# HELP {name} Journal events emitted by running engines.")
        lines.append(f"# TYPE {name} counter")
        lines.append(f"{name} {self.events}")
        return "\n".join(lines) + "\n"


def _leadership(lines: list[str], role: Role) -> None:
    name = "orchestrator_leader"
    lines.append(f"# HELP {name} 1 while this daemon leads (runs the engines), 0 on a standby.")
    lines.append(f"# TYPE {name} gauge")
    lines.append(f"{name} {1 if role.leading else 0}")
    renewals = role.renewals
    name = "orchestrator_lease_renewal_seconds"
    lines.append(f"# HELP {name} Time a renewal of the leader lease took in the store.")
    lines.append(f"# TYPE {name} histogram")
    for bound, count in zip(renewals.buckets, renewals.counts, strict=True):
        lines.append(f'{name}_bucket{{le="{_num(bound)}"}} {count}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {renewals.n}')
    lines.append(f"{name}_sum {_num(renewals.total)}")
    lines.append(f"{name}_count {renewals.n}")


def _gauge(lines: list[str], name: str, help_text: str, values: Counter[str]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} gauge")
    for label in sorted(values):
        lines.append(f'{name}{{state="{_escape(label)}"}} {values[label]}')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value))
