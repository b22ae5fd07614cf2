"""An upgrade of a minicloud under checked load, shared by the embedded
end-to-end tests and the real-server tier (which differ only in the hosts
and the load balancer in front of the APIs)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.engine.manager import Upgrade, UpgradeManager
from orchestrator.engine.states import UpgradeState
from orchestrator.minicloud.loadgen import LoadGenerator, LoadReport
from orchestrator.pipeline import build_text
from orchestrator.plan import Options
from orchestrator.playbook import resolve_playbook
from orchestrator.store.journal import Journal


@dataclass(frozen=True, slots=True)
class UpgradeRun:
    upgrade: Upgrade
    report: LoadReport
    during: int  # requests answered between submit and the upgrade's end
    seconds: float  # from submit to the upgrade's end


async def run_under_load(
    inventory_text: str,
    lb_url: str,
    journal_path: Path,
    *,
    playbook: str | None = None,
    rate: float = 30.0,
    approve: bool = True,
    approve_after: int = 0,
    deadline: float = 240.0,
    to_version: str = "2.0",
    load: Callable[..., LoadGenerator] = LoadGenerator,
    workers: int = 4,
) -> UpgradeRun:
    """Run `playbook` (default: the shipped minicloud one) to `to_version`
    through an in-process UpgradeManager while a load generator (`load`,
    minicloud's by default) checks every answer.

    The point of no return is approved once the load has made `approve_after`
    requests since the submit (an operator watching the figures before
    approving), so the count during the upgrade does not depend on how fast
    the machine rolls the hosts."""
    text = playbook if playbook is not None else resolve_playbook("minicloud").read_text()
    plan = build_text(inventory_text, text, Options(to_version=to_version))
    journal = await Journal.open(journal_path)
    manager = UpgradeManager(journal)
    await manager.start()
    loop = asyncio.get_running_loop()
    try:
        async with load(
            lb_url, rate=rate, workers=workers, max_duration=deadline + 60
        ) as generator:
            await generator.wait(10)
            before, started = len(generator.latencies), loop.time()
            up, _ = await manager.submit(plan)
            async with asyncio.timeout(deadline):
                while not up.view.state.terminal:
                    if (
                        approve
                        and up.view.state is UpgradeState.WAITING_APPROVAL
                        and len(generator.latencies) - before >= approve_after
                    ):
                        await manager.control(up.id, "approve")
                    await asyncio.sleep(0.2)
            during, seconds = len(generator.latencies) - before, loop.time() - started
            await asyncio.sleep(0.5)
        return UpgradeRun(up, generator.report(), during, seconds)
    finally:
        await manager.close()
        await journal.close()
