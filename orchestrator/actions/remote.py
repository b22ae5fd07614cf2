"""What actions need from the transport. `orchestrator.transport.ssh.SSHPool`
is the real implementation; keeping the seam narrow keeps actions testable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from orchestrator.transport.ssh import CommandResult


class Remote(Protocol):
    async def connect(self, host: str) -> None: ...

    async def run(
        self,
        host: str,
        command: str,
        *,
        timeout: float | None = None,
        become: bool = False,
        on_line: Callable[[str], None] | None = None,
        run_id: str | None = None,
    ) -> CommandResult: ...

    async def read_file(self, host: str, path: str) -> str | None: ...

    async def write_file(self, host: str, path: str, text: str) -> None: ...


@runtime_checkable
class RunRecords(Protocol):
    """A transport that keeps supervised runs' records on the hosts."""

    async def forget_runs(self, host: str, upgrade_id: str) -> int: ...


@runtime_checkable
class HoldsConnections(Protocol):
    """A transport that keeps connections open between calls (a bounded number)."""

    def release(self, host: str, *, forget: str | None = None) -> None:
        """The host's work in its phase is done: its connection may close.

        `forget`: the upgrade whose work on the host is done and journaled;
        its run records there may go (`forget_runs` then has less to do)."""
