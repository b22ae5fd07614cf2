"""Undoing an upgrade: the fleet rollback, newest phase first, and what a
second abort (cancelled steps) leaves to put right.

Both go through the same host procedure and transition tables as the
forward run; a host is never left drained.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from orchestrator.engine.host import HOST_FAULTS, HostRunner
from orchestrator.engine.states import HostState, PhaseState, UpgradeState
from orchestrator.errors import RollbackRefused

if TYPE_CHECKING:
    from orchestrator.engine.runner import Engine

log = structlog.get_logger("orchestrator.engine")
U = UpgradeState


async def rollback_all(engine: Engine) -> UpgradeState:
    """Undo every host and pin, newest phase first, batch by batch in reverse."""
    if engine.view.irreversible_done is not None:
        await engine.set_upgrade(U.FAILED, str(RollbackRefused(engine.view.irreversible_done)))
        return engine.view.state
    if engine.view.state is not U.ROLLING_BACK:
        await engine.set_upgrade(U.ROLLING_BACK, "rolling back")
    errors: list[str] = []
    for phase in reversed(engine.plan.phases):
        pview = engine.view.phases.get(phase.name)
        if pview is None or pview.state in (PhaseState.PENDING, PhaseState.ROLLED_BACK):
            continue
        if pview.state not in (PhaseState.ROLLING_BACK,):
            if pview.state in (PhaseState.GATED, PhaseState.WAITING_APPROVAL):
                await engine.set_phase(phase.name, PhaseState.ROLLED_BACK)
                continue
            await engine.set_phase(phase.name, PhaseState.ROLLING_BACK)
        for batch in reversed(phase.batches):
            runners = [HostRunner(engine, phase, hp) for hp in batch.hosts]
            results = await asyncio.gather(
                *(_undo_host(r) for r in runners), return_exceptions=True
            )
            errors.extend(str(r) for r in results if isinstance(r, BaseException))
        await engine.set_phase(phase.name, PhaseState.ROLLED_BACK)
    if errors:
        await engine.set_upgrade(U.FAILED, "rollback incomplete: " + "; ".join(errors[:5]))
    else:
        await engine.set_upgrade(U.ROLLED_BACK, "every host and pin undone")
    return engine.view.state


async def _undo_host(runner: HostRunner) -> None:
    state = runner.view.state
    untouched = (HostState.PENDING, HostState.SKIPPED, HostState.ROLLED_BACK)
    if state in untouched and not runner.view.drained:
        return
    with structlog.contextvars.bound_contextvars(phase=runner.phase.name, host=runner.name):
        if state is not HostState.ROLLING_BACK:
            await runner.set(HostState.ROLLING_BACK)
        try:
            await runner.undo()
        except HOST_FAULTS as exc:
            await runner.set(HostState.FAILED, f"rollback failed: {exc}")
            raise
        await runner.set(HostState.ROLLED_BACK)


async def after_cancel(engine: Engine) -> None:
    """Second abort: running steps were cancelled. Never leave a host drained."""
    for phase in engine.plan.phases:
        pview = engine.view.phases.get(phase.name)
        if pview is None:
            continue
        for batch in phase.batches:
            for hp in batch.hosts:
                if pview.host(hp.host).drained:
                    try:
                        await HostRunner(engine, phase, hp).undrain()
                    except HOST_FAULTS as exc:
                        log.error("undrain after cancel failed", host=hp.host, error=str(exc))
    if not engine.view.state.terminal:
        if engine.view.state is U.ROLLING_BACK:
            await engine.set_upgrade(U.FAILED, "rollback cancelled by a second abort")
        else:
            if engine.view.state is not U.ABORTING:
                await engine.set_upgrade(U.ABORTING, "cancelled")
            await engine.set_upgrade(U.ABORTED, "cancelled by a second abort")
