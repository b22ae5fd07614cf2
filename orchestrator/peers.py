"""The daemon on a shared PostgreSQL store: its journal, its leadership and
its manager, wired so that exactly one peer acts at a time.

* elected: the journal writes with the new epoch, then the manager reads
  every upgrade back and resumes the unfinished ones (`promote`);
* lost (the lease ran out, another took it, or the store refused a write
  as stale): the journal writes nothing more, then the engines stop where
  they are (`demote`), and the daemon goes on as a standby;
* before every action on a host (`gate`): the lease must still be ours.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from orchestrator.engine.manager import UpgradeManager
from orchestrator.errors import FencedError
from orchestrator.store.leader import Leadership
from orchestrator.store.postgres import PostgresJournal
from orchestrator.store.role import LeaseSettings

log = structlog.get_logger("orchestrator.peers")


class Peer:
    def __init__(self, journal: PostgresJournal, url: str, address: str, lease: LeaseSettings):
        self.journal = journal
        self.leadership = Leadership(
            url, address, lease, on_elected=self._elected, on_lost=self._lost
        )
        self.manager: UpgradeManager | None = None
        self._task: asyncio.Task[None] | None = None
        journal.on_fenced = self.leadership.step_down

    def attach(self, manager: UpgradeManager) -> None:
        """The manager this peer promotes and demotes; it follows the journal."""
        self.manager = manager
        self.journal.on_change = manager.follow

    def gate(self) -> None:
        """Before a host action: FencedError unless the lease is still ours. A
        refusal also stops the journal at once: nothing after it is written."""
        try:
            self.leadership.check()
        except FencedError as exc:
            self.journal.unlead(str(exc))
            self.leadership.step_down(str(exc))
            raise

    def start(self) -> None:
        self._task = asyncio.create_task(self.leadership.run(), name="leadership")

    async def stop(self) -> None:
        """After the manager stopped its engines: resign the lease, so a
        standby takes over at its next look instead of at the lease's end."""
        self.journal.unlead("this daemon stopped")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.leadership.resign()

    async def _elected(self, epoch: int) -> None:
        assert self.manager is not None
        await self.journal.lead(epoch)
        await self.manager.promote()

    async def _lost(self, reason: str) -> None:
        self.journal.unlead(reason)
        if self.manager is not None:
            await self.manager.demote(reason)
