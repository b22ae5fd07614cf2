"""What every journal store is: the records it hands out and the one interface
the manager, the engines and the API use, whichever database is behind it.

Two stores implement it: `orchestrator.store.journal.Journal` (SQLite, one
daemon, the embedded default) and `orchestrator.store.postgres.PostgresJournal`
(PostgreSQL, several daemons of which one leads). Both give the same
guarantees: an event is durable when `append` returns; sequence numbers are
gapless per upgrade and assigned in commit order; events are append-only
and the database itself refuses anything else; concurrent appends share
one commit (group commit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Event:
    """One journaled state transition. `at` is when the writer sequenced it."""

    upgrade_id: str
    seq: int
    at: float
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UpgradeRecord:
    id: str
    created_at: float
    inventory: str
    digest: str
    meta: dict[str, Any]
    last_seq: int
    last_kind: str | None


@dataclass(slots=True)
class JournalStats:
    """Counters kept by the writer (for tests, benches and metrics)."""

    commits: int = 0
    events: int = 0
    largest_batch: int = 0


# A cap on one transaction keeps the latency of the first event in it bounded.
MAX_BATCH = 1000

# Called (in the event loop) for every event this store commits.
AfterCommit = Callable[[Event], None]


class Store(Protocol):
    """The journal as the daemon uses it. Writes are durable when they return;
    a write that raises wrote nothing."""

    stats: JournalStats

    @property
    def where(self) -> str:
        """The store, for messages: a path, or a URL without its password."""
        ...

    async def close(self) -> None: ...

    async def create(
        self,
        upgrade_id: str,
        plan_json: str,
        *,
        inventory: str,
        digest: str,
        meta: Mapping[str, Any],
        endpoints: Mapping[str, str] | None = None,
    ) -> None:
        """Record a new upgrade and its plan, leasing `endpoints` (SSH endpoint
        -> host name) to it in the same commit. A duplicate id, or an endpoint
        another upgrade holds, is a ConflictError and creates nothing."""
        ...

    async def append(
        self, upgrade_id: str, kind: str, data: Mapping[str, Any], *, release: bool = False
    ) -> Event:
        """Journal one event; returns it (with its seq) once it is durable.
        `release`: the event ends the upgrade, and its host leases end with it."""
        ...

    async def append_all(
        self,
        upgrade_id: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        release: bool = False,
    ) -> list[Event]:
        """Journal (kind, data) events in order in one commit: all of them or
        none. A host's step that ends and its next that starts are one commit."""
        ...

    async def lease(self, upgrade_id: str, endpoints: Mapping[str, str]) -> None:
        """Lease `endpoints` to an existing upgrade; ConflictError if another holds one."""
        ...

    async def leases(self) -> dict[str, tuple[str, str]]:
        """Every lease: endpoint -> (upgrade id, host name)."""
        ...

    async def remember_key(self, key: str, upgrade_id: str) -> str:
        """Bind an idempotency key to `upgrade_id`; returns the id it was first bound to."""
        ...

    async def lookup_key(self, key: str) -> str | None:
        """The upgrade an idempotency key is bound to, if any."""
        ...

    async def events(
        self, upgrade_id: str, after: int = 0, limit: int | None = None
    ) -> list[Event]: ...

    async def upgrades(self) -> list[UpgradeRecord]: ...

    async def get(self, upgrade_id: str) -> UpgradeRecord: ...

    async def plan_json(self, upgrade_id: str) -> str: ...

    async def wait_for(self, upgrade_id: str, after: int, timeout: float) -> list[Event]:
        """Events after `after`, waiting up to `timeout` seconds for the first; [] on timeout.
        Events committed by another daemon on the same store count too."""
        ...
