"""What actions need from the transport. `orchestrator.transport.ssh.SSHPool`
is the real implementation; keeping the seam narrow keeps actions testable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

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
