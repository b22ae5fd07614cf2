"""The host procedure: drain -> steps -> health -> undrain, and its undo.

Every side effect is journaled before it starts and after it ends, so a
daemon killed at any point resumes from what the journal says: a step left
`running` is re-checked through its `check`, re-run when idempotent, or the
upgrade pauses and says why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog

from orchestrator import events, model
from orchestrator.actions.config import apply_config, read_previous
from orchestrator.actions.drain import Drainer
from orchestrator.actions.health import Checker, HealthProgress
from orchestrator.actions.remote import HoldsConnections, Remote
from orchestrator.actions.run import RunOutcome, run_action
from orchestrator.engine.states import (
    CLEANUP_TRANSITIONS,
    STEP_TRANSITIONS,
    HostState,
    StepState,
    UpgradeState,
    check_transition,
)
from orchestrator.engine.view import UpgradeView
from orchestrator.errors import (
    DrainError,
    OrchestratorError,
    StepFailed,
    Stop,
    Suspend,
    TransportError,
)
from orchestrator.secrets import SecretStore

log = structlog.get_logger("orchestrator.engine")


class HostEngine(Protocol):
    """What a host's procedure needs from the engine: its tools, the journal,
    the checkpoints. `Engine` is one; the host procedure never sees the rest."""

    id: str
    plan: model.Plan
    view: UpgradeView
    remote: Remote
    drainer: Drainer
    checker: Checker
    secrets: SecretStore
    sleep: Callable[[float], Awaitable[None]]
    # not journaled: where each host's health check stands, for the live view
    live_health: dict[tuple[str, str], HealthProgress]
    live_changes: int

    async def record(
        self, event: events.JournalEvent, *, before: Sequence[events.JournalEvent] = ()
    ) -> None: ...

    async def set_host(
        self,
        phase: str,
        host: str,
        state: HostState,
        error: str | None = None,
        *,
        before: Sequence[events.JournalEvent] = (),
    ) -> None: ...

    def going_on(self) -> bool: ...

    async def checkpoint(self) -> None: ...

    async def pause_for(self, reason: str, *, verify_step: str | None = None) -> None: ...

    def at_target(self, host: str, plan: model.HostPlan) -> bool: ...

    def metrics_step(self, step: model.Step, seconds: float, ok: bool) -> None: ...

    def metrics_health_failure(self, phase: str, host: str) -> None: ...

    async def fatal(self, reason: str) -> None: ...


HOST_FAULTS = (StepFailed, DrainError, TransportError)
# upgrade states in which a lost command pauses the upgrade until it is found again
FORWARD = (UpgradeState.RUNNING, UpgradeState.PAUSED, UpgradeState.WAITING_APPROVAL)


class HostRunner:
    def __init__(self, engine: HostEngine, phase: model.Phase, plan: model.HostPlan) -> None:
        self.engine = engine
        self.phase = phase
        self.plan = plan
        self.view = engine.view.phase(phase.name).host(plan.host)
        self._cleanup_ids = frozenset(step.id for step in plan.cleanup)
        # a run step's end, journaled in one commit with what the host does
        # next (the next step's start, its health check, its end): one commit
        # between two commands instead of two. Nothing happens on the host
        # before it is on disk; `flush` writes it alone.
        self._ended: list[events.JournalEvent] = []

    @property
    def name(self) -> str:
        return self.plan.host

    async def set(self, state: HostState, error: str | None = None) -> None:
        await self.engine.set_host(self.phase.name, self.name, state, error, before=self._take())

    def _take(self) -> list[events.JournalEvent]:
        ended, self._ended = self._ended, []
        return ended

    async def flush(self) -> None:
        """Journal a step's end still waiting for the host's next event."""
        if ended := self._take():
            await self.engine.record(ended[-1], before=ended[:-1])

    def _step_change(self, step: str, state: StepState, fields: dict[str, Any]) -> events.Step:
        """A step's change of state, checked against its table."""
        view = self.view.steps.get(step)
        current = StepState.PENDING if view is None else view.state
        table = CLEANUP_TRANSITIONS if step in self._cleanup_ids else STEP_TRANSITIONS
        check_transition(table, f"step {step} on {self.name}", current, state)
        return events.Step(
            phase=self.phase.name, host=self.name, step=step, state=state.value, **fields
        )

    async def step_event(self, step: str, state: StepState, **fields: Any) -> None:
        """Journal a step's change of state, checked against its table first."""
        event = self._step_change(step, state, fields)
        await self.engine.record(event, before=self._take())

    def step_ended(self, step: str, state: StepState, **fields: Any) -> None:
        """A run step's end: journaled with the host's next event (`_ended`)."""
        self._ended.append(self._step_change(step, state, fields))

    async def drain_event(
        self, action: str, stage: str, index: int, detail: str | None = None
    ) -> None:
        await self.engine.record(
            events.Drain(
                phase=self.phase.name,
                host=self.name,
                action=action,
                stage=stage,
                index=index,
                detail=detail,
            ),
            before=self._take(),
        )

    async def run(self) -> bool | None:
        """True when the host ended done or skipped; False when it failed (and
        was rolled back); None when it stopped because the upgrade is aborting
        or rolling back (its current step finished, then it was rolled back)."""
        view = self.view
        if view.state in (HostState.DONE, HostState.SKIPPED):
            return True
        if view.state in (HostState.FAILED, HostState.ROLLED_BACK):
            await self.set(HostState.PENDING)
        with structlog.contextvars.bound_contextvars(phase=self.phase.name, host=self.name):
            try:
                await self.engine.checkpoint()
                left = self.engine.view.skipped.get(self.name)
                if view.state is HostState.PENDING and left is not None:
                    await self.set(HostState.SKIPPED, f"skipped: it failed in phase {left}")
                    return True
                if view.state is HostState.PENDING and self.engine.at_target(self.name, self.plan):
                    await self.set(HostState.SKIPPED, "already at the target version")
                    return True
                await self._forward()
                return True
            except Suspend:
                return None
            except Stop:
                if self.view.state is not HostState.PENDING:
                    await self._fail("stopped: the upgrade is " + self.engine.view.state.label)
                return None
            except HOST_FAULTS as exc:
                log.warning("host failed", error=str(exc))
                # within the failure budget the upgrade goes on without it: it
                # stays out of service until retried, skipped or rolled back
                await self._fail(str(exc), keep_drained=True)
                return False
            finally:
                await self.flush()
                await self._cleanup()
                if isinstance(self.engine.remote, HoldsConnections):
                    # done with it in this phase: its connection need not stay
                    # open, nor, once it is journaled done, its run records
                    done = self.view.state is HostState.DONE
                    self.engine.remote.release(self.name, forget=self.engine.id if done else None)

    async def _forward(self) -> None:
        view, engine = self.view, self.engine
        if self.plan.drains and view.state in (HostState.PENDING, HostState.DRAINING):
            if view.state is HostState.PENDING:
                await self.set(HostState.DRAINING)
            for index, drain in enumerate(self.plan.drains):
                await self.drain_event("drain", "start", index)
                detail = await engine.drainer.drain(self.name, drain)
                await self.drain_event("drain", "done", index, detail)
        if view.state in (HostState.PENDING, HostState.DRAINING):
            await self.set(HostState.UPGRADING)
        if view.state is HostState.UPGRADING:
            for step in self.plan.steps:
                if self._ended and not engine.going_on():
                    await self.flush()  # the last step's end first: the checkpoint waits or stops
                await engine.checkpoint()
                await self._step(step)
            if self.plan.health is not None or self.plan.version is not None:
                await self.set(HostState.CHECKING)
        if view.state is HostState.CHECKING:
            await self._health()
            await self.set(HostState.UNDRAINING if self.plan.drains else HostState.DONE)
        if view.state is HostState.UNDRAINING or (
            view.state is HostState.UPGRADING and self.plan.drains
        ):
            if view.state is HostState.UPGRADING:
                await self.set(HostState.UNDRAINING)
            await self.undrain()
            await self.set(HostState.DONE)
        elif view.state is HostState.UPGRADING:
            await self.set(HostState.DONE)

    async def _health(self) -> None:
        engine = self.engine

        async def report(result: object) -> None:
            engine.metrics_health_failure(self.phase.name, self.name)

        key = (self.phase.name, self.name)

        def progress(now: HealthProgress) -> None:
            engine.live_health[key] = now
            engine.live_changes += 1

        try:
            result = await engine.checker.until_healthy(
                self.name,
                self.plan.health,
                version=self.plan.version,
                target=engine.plan.to_version,
                sleep=engine.sleep,
                on_result=report,
                on_progress=progress,
            )
        finally:
            engine.live_health.pop(key, None)
            engine.live_changes += 1
        await engine.record(
            events.Health(
                phase=self.phase.name, host=self.name, ok=result.ok, detail=result.detail
            ),
            before=self._take(),
        )
        if not result.ok:
            raise StepFailed(self.name, "health", result.detail)

    async def _step(self, step: model.Step) -> None:
        view = self.view.steps.get(step.id)
        if view is not None and view.state is StepState.DONE:
            return
        with structlog.contextvars.bound_contextvars(step=step.id):
            in_flight = view is not None and view.state is StepState.RUNNING
            if in_flight:
                await self.flush()  # a run found again: nothing before it may wait
            run_id = view.run_id if view is not None and in_flight else None
            # its supervisor knows how it ended, or that it never started
            if run_id is not None and await self._follow(step, run_id):
                return
            if in_flight and await self._already_done(step):
                return
            await self._execute(step)

    async def _follow(self, step: model.Step, run_id: str) -> bool:
        """Follow an in-flight step's supervised run to its end and judge it;
        False when it was killed or its supervisor died (in doubt: the
        step's check, idempotence or the operator decide)."""
        assert isinstance(step.action, model.RunAction)
        outcome = await self._supervised(step, step.action, run_id)
        if outcome.exit_status is None and not outcome.timed_out:
            log.warning("in-flight step ended in doubt", reason=outcome.reason)
            return False
        await self._judge(step, outcome)
        return True

    async def _supervised(
        self, step: model.Step, action: model.RunAction, run_id: str
    ) -> RunOutcome:
        """Run (or follow) one supervised run; while the transport has lost
        sight of it, the upgrade pauses and never undoes a command that may
        still run: resume follows the same run again."""
        engine = self.engine
        while True:
            try:
                return await run_action(
                    engine.remote,
                    self.name,
                    action,
                    become=step.become,
                    sleep=engine.sleep,
                    run_id=run_id,
                )
            except TransportError as exc:
                if not exc.may_still_run or engine.view.state not in FORWARD:
                    raise  # did not start; or a rollback or abort, which fails this host
                await engine.pause_for(
                    f"step {step.id} on {self.name}: {exc.reason}; nothing is undone while it "
                    "may still run: resume follows it again once the host answers"
                )
                await engine.checkpoint()

    async def _already_done(self, step: model.Step) -> bool:
        """A step was in flight when the daemon stopped: decide, never guess."""
        engine = self.engine
        if step.check is not None:
            result = await engine.remote.run(self.name, step.check, become=step.become)
            if result.exit_status == 0:
                await self.step_event(step.id, StepState.DONE, via="check", output=result.output)
                return True
            return False
        if step.idempotent or step.id in engine.view.verified:
            return False  # safe to repeat, or the operator has verified it
        await engine.pause_for(
            f"step {step.id} was running on {self.name} when the daemon stopped; it has no "
            "'check' and is not idempotent: verify it by hand, then resume to run it again",
            verify_step=step.id,
        )
        await engine.checkpoint()
        return False

    async def _execute(self, step: model.Step) -> None:
        engine, action = self.engine, step.action
        if isinstance(action, model.ConfigAction):
            await self.flush()  # it reads the host before its start is journaled
            view = self.view.steps.get(step.id)
            if view is not None and view.had_previous:
                previous = view.previous
            else:
                previous = engine.secrets.remarker(
                    await read_previous(engine.remote, self.name, action)
                )
            await self.step_event(step.id, StepState.RUNNING, previous=previous, had_previous=True)
            value = (
                None
                if action.value is None
                else engine.secrets.substitute(action.value, shell=False)
            )
            changed = await apply_config(engine.remote, self.name, action, value)
            await self.step_event(
                step.id, StepState.DONE, output="changed" if changed else "unchanged"
            )
            return
        if isinstance(action, model.WaitAction):
            await self.step_event(step.id, StepState.RUNNING)
            await engine.sleep(action.seconds)
            await self.step_event(step.id, StepState.DONE)
            return
        attempt = self.view.step(step.id).attempts + 1
        run_id = f"{engine.id}/{step.id}.{attempt}"
        await self.step_event(step.id, StepState.RUNNING, run=run_id)
        started = time.monotonic()
        try:
            outcome = await self._supervised(step, action, run_id)
        except TransportError as exc:
            if not exc.may_still_run:  # it certainly did not start
                await self.step_event(step.id, StepState.FAILED, error=exc.reason)
            raise  # else it stays running: the undo follows it to its end first
        engine.metrics_step(step, time.monotonic() - started, outcome.ok)
        await self._judge(step, outcome)

    async def _judge(self, step: model.Step, outcome: RunOutcome) -> None:
        """Journal how a run step ended (a success with the host's next event);
        StepFailed when it failed."""
        if outcome.ok:
            self.step_ended(
                step.id, StepState.DONE, exit=outcome.exit_status, output=outcome.output
            )
            return
        await self.step_event(
            step.id,
            StepState.FAILED,
            exit=outcome.exit_status,
            output=outcome.output,
            error=outcome.reason,
        )
        raise StepFailed(
            self.name, step.id, outcome.reason or "failed", outcome.exit_status, outcome.output
        )

    async def undrain(self) -> None:
        engine = self.engine
        for index, drain in reversed(list(enumerate(self.plan.drains))):
            await self.drain_event("undrain", "start", index)
            detail = await engine.drainer.undrain(self.name, drain)
            await self.drain_event("undrain", "done", index, detail)

    async def _fail(self, error: str, *, keep_drained: bool = False) -> None:
        """Undo this host's steps newest first, undrain unless `keep_drained`,
        and mark it failed."""
        if self.view.state not in (HostState.ROLLING_BACK,):
            await self.set(HostState.ROLLING_BACK, error)
        try:
            await self.undo(keep_drained=keep_drained)
            await self.set(HostState.FAILED, error)
        except (OrchestratorError, OSError) as exc:
            await self.set(HostState.FAILED, f"{error}; rollback of the host failed: {exc}")
            await self.engine.fatal(f"host {self.name}: rollback failed: {exc}")

    async def undo(self, *, keep_drained: bool = False) -> None:
        """Undo completed (and failed) steps in reverse, then undrain if drained
        (unless `keep_drained`).

        Used for a failed host and for the fleet rollback; safe to repeat."""
        engine = self.engine
        needs = [
            s
            for s in self.plan.steps
            if (v := self.view.steps.get(s.id)) is not None
            and v.state in (StepState.DONE, StepState.FAILED, StepState.RUNNING, StepState.UNDOING)
        ]
        if needs and self.plan.drains and not self.view.drained:
            for index, drain in enumerate(self.plan.drains):
                await self.drain_event("drain", "start", index)
                await engine.drainer.drain(self.name, drain)
                await self.drain_event("drain", "done", index)
        for step in reversed(needs):
            await self._undo_step(step)
        if self.view.drained and not keep_drained:
            await self.undrain()

    async def _undo_step(self, step: model.Step) -> None:
        engine = self.engine
        view = self.view.step(step.id)
        action = step.action
        with structlog.contextvars.bound_contextvars(step=step.id):
            if (
                view.state is StepState.RUNNING
                and view.run_id is not None
                and isinstance(action, model.RunAction)
            ):
                # never undo a command that may still run: follow it to its end first
                outcome = await self._supervised(step, action, view.run_id)
                state = StepState.DONE if outcome.ok else StepState.FAILED
                await self.step_event(
                    step.id, state, exit=outcome.exit_status, output=outcome.output
                )
            await self.step_event(step.id, StepState.UNDOING)
            if isinstance(action, model.ConfigAction):
                if view.had_previous:
                    previous = view.previous
                    value = (
                        None
                        if previous is None
                        else engine.secrets.substitute(previous, shell=False)
                    )
                    await apply_config(engine.remote, self.name, action, value)
                await self.step_event(step.id, StepState.UNDONE)
                return
            if step.undo is None:
                await self.step_event(step.id, StepState.UNDONE, output="no undo declared")
                return
            run_id = f"{engine.id}/{step.id}.undo{view.undos}"
            outcome = await self._supervised(step, step.undo, run_id)
            if not outcome.ok:
                await self.step_event(
                    step.id,
                    StepState.FAILED,
                    exit=outcome.exit_status,
                    output=outcome.output,
                    error=f"undo: {outcome.reason}",
                )
                raise StepFailed(
                    self.name,
                    f"{step.id} (undo)",
                    outcome.reason or "failed",
                    outcome.exit_status,
                    outcome.output,
                )
            await self.step_event(
                step.id, StepState.UNDONE, exit=outcome.exit_status, output=outcome.output
            )

    async def _cleanup(self) -> None:
        """Cleanup steps always run; their failures are recorded, never fatal."""
        engine = self.engine
        for step in self.plan.cleanup:
            if not isinstance(step.action, model.RunAction):
                continue
            try:
                await self.step_event(step.id, StepState.RUNNING)
                outcome = await asyncio.shield(
                    run_action(
                        engine.remote,
                        self.name,
                        step.action,
                        become=step.become,
                        sleep=engine.sleep,
                    )
                )
                await self.step_event(
                    step.id,
                    StepState.DONE if outcome.ok else StepState.FAILED,
                    exit=outcome.exit_status,
                    output=outcome.output,
                )
            except (OrchestratorError, OSError) as exc:
                log.warning("cleanup step failed", step=step.id, error=str(exc))


def upgrade_paused(state: UpgradeState) -> bool:
    return state in (UpgradeState.PAUSED, UpgradeState.WAITING_APPROVAL)
