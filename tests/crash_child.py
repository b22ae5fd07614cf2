"""Child process for the crash test: run (or resume) one upgrade from a
journal, optionally SIGKILLing itself right after journal event N commits.

    python -m tests.crash_child JOURNAL PLAN_JSON CRASH_AT|-
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from orchestrator import logs, model
from orchestrator.engine.manager import UpgradeManager
from orchestrator.store.journal import Event, Journal


async def main(journal_path: Path, plan_path: Path, crash_at: int | None) -> int:
    def hook(event: Event) -> None:
        if crash_at is not None and event.seq >= crash_at:
            os.kill(os.getpid(), signal.SIGKILL)

    logs.configure("json", level="warning", stream=sys.stderr)
    journal = await Journal.open(journal_path, after_commit=hook)
    manager = UpgradeManager(journal)
    try:
        await manager.start()
        if not manager.upgrades:
            plan = model.from_json(await asyncio.to_thread(plan_path.read_text))
            await manager.submit(plan)
        (upgrade,) = manager.upgrades.values()
        state = await manager.wait(upgrade.id, timeout=60)
        print(state.label)
        return 0
    finally:
        await manager.close()
        await journal.close()


if __name__ == "__main__":
    crash = None if sys.argv[3] == "-" else int(sys.argv[3])
    sys.exit(asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), crash)))
