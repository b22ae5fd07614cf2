"""A daemon's place among its peers on one store, as the API sees it: the
`Role` seam, its settings and figures. No database driver is imported here:
the SQLite daemon (and the CLI) never load one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.errors import UsageError


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    lease: float = 10.0  # seconds a renewal is good for
    renew: float = 2.0  # seconds between renewals (and between a standby's looks)

    def __post_init__(self) -> None:
        if not (self.renew > 0 and self.renew * 2 <= self.lease):
            raise UsageError(
                f"lease {self.lease:g} s and renew {self.renew:g} s: the leader must be able "
                "to renew at least twice per lease (renew <= lease / 2)"
            )


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """The leadership row as last read: who leads, since when it renewed."""

    epoch: int
    holder: str
    address: str
    renewed_ago: float  # seconds since its last renewal (the lease's age)
    expires_in: float  # seconds until the lease expires (negative: expired)


@dataclass(slots=True)
class Renewals:
    """Latency of lease renewals, for /metrics (a histogram)."""

    buckets: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
    counts: list[int] = field(default_factory=lambda: [0] * 11)
    total: float = 0.0
    n: int = 0
    last: float | None = None

    def observe(self, seconds: float) -> None:
        self.n += 1
        self.total += seconds
        self.last = seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1


class Role(Protocol):
    """What the API asks about this daemon's place among its peers."""

    @property
    def leading(self) -> bool: ...

    @property
    def leader_address(self) -> str | None:
        """The leader's API URL (None: no leader known)."""
        ...

    renewals: Renewals

    def describe(self) -> dict[str, Any]:
        """For /healthz: role, epoch, the leader, the lease's age."""
        ...


class SoleDaemon:
    """The role of a daemon on SQLite: always the leader, of nobody else."""

    def __init__(self) -> None:
        self.renewals = Renewals()

    @property
    def leading(self) -> bool:
        return True

    @property
    def leader_address(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"role": "leader", "store": "sqlite"}
