"""Prometheus metrics, through prometheus-client (its text format, its
process and platform collectors), one registry per app.

Gauges (upgrades and hosts by state, leadership) are read from the manager
and the daemon's role at scrape time; step durations and health-check
failures are fed from the journal events the engines emit, through
`Metrics.observe`. `orchestrator_build_info` says which release runs.
"""

from __future__ import annotations

import platform
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator import events
from orchestrator.engine.manager import UpgradeManager
from orchestrator.engine.states import HostState, StepState, UpgradeState
from orchestrator.engine.view import EventLike
from orchestrator.store.role import Role

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def package_version() -> str:
    try:
        return version("rolling-orchestrator")
    except PackageNotFoundError:
        return "unknown"


class _State(Collector):
    """What the manager and the role say now, read at every scrape."""

    def __init__(self) -> None:
        self.manager: UpgradeManager | None = None
        self.role: Role | None = None

    def collect(self) -> Iterator[Metric]:
        if self.manager is not None:
            yield from _upgrades(self.manager)
        if self.role is not None:
            yield from _leadership(self.role)


class Metrics:
    """Counters fed by events; `render` adds the gauges read from the manager."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = 0
        self._state = _State()
        self.registry.register(self._state)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info(
            "orchestrator_build", "The orchestrator release running.", registry=self.registry
        ).info({"version": package_version(), "python": platform.python_version()})
        self.steps = Histogram(
            "orchestrator_step_duration_seconds",
            "Wall time of host steps, from start to done or failed.",
            ["outcome"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.health_failures = PromCounter(
            "orchestrator_health_check_failures",
            "Failed host health checks, by phase.",
            ["phase"],
            registry=self.registry,
        )
        self._events = PromCounter(
            "orchestrator_journal_events",
            "Journal events emitted by running engines.",
            registry=self.registry,
        )
        self._running: dict[tuple[str, str, str, str], float] = {}

    def observe(self, upgrade_id: str, event: EventLike) -> None:
        self.events += 1
        self._events.inc()
        typed = events.parse(event.kind, event.data)
        if isinstance(typed, events.Step):
            key = (upgrade_id, typed.phase, typed.host, typed.step)
            if typed.state == StepState.RUNNING.value:
                self._running[key] = event.at
            elif typed.state in (StepState.DONE.value, StepState.FAILED.value):
                started = self._running.pop(key, None)
                if started is not None:
                    outcome = "ok" if typed.state == StepState.DONE.value else "failed"
                    self.steps.labels(outcome).observe(max(0.0, event.at - started))
        elif isinstance(typed, events.Health) and not typed.ok:
            self.health_failures.labels(typed.phase).inc()

    def render(self, manager: UpgradeManager, role: Role | None = None) -> str:
        self._state.manager, self._state.role = manager, role
        return generate_latest(self.registry).decode()


def _upgrades(manager: UpgradeManager) -> Iterator[Metric]:
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
    yield _by_state("orchestrator_upgrades", "Upgrades known to the daemon, by state.", upgrades)
    yield _by_state(
        "orchestrator_hosts", "Host slots (host x phase) of unfinished upgrades, by state.", hosts
    )


def _by_state(name: str, help_text: str, values: Counter[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=["state"])
    for label in sorted(values):
        family.add_metric([label], values[label])
    return family


def _leadership(role: Role) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "orchestrator_leader",
        "1 while this daemon leads (runs the engines), 0 on a standby.",
        value=1 if role.leading else 0,
    )
    renewals = role.renewals
    # Renewals counts each value in every bucket it fits: already cumulative
    buckets = [
        (repr(float(bound)), count)
        for bound, count in zip(renewals.buckets, renewals.counts, strict=True)
    ]
    buckets.append(("+Inf", renewals.n))
    yield HistogramMetricFamily(
        "orchestrator_lease_renewal_seconds",
        "Time a renewal of the leader lease took in the store.",
        buckets=buckets,
        sum_value=renewals.total,
    )
