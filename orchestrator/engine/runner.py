"""The engine: runs one plan from its journal, phase by phase, batch by batch.

Control (pause, resume, abort, approve, rollback) arrives as method calls;
each is journaled, and the engine reacts at its checkpoints, which sit
between steps. State is never assigned directly: every change is checked
against the transition tables in `states` and written to the journal first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import structlog

from orchestrator import eventloop, events, model
from orchestrator.actions.drain import Drainer, RuntimeAPI
from orchestrator.actions.health import Checker, HealthProgress
from orchestrator.actions.remote import HoldsConnections, Remote, RunRecords
from orchestrator.engine.host import HostRunner
from orchestrator.engine.preflight import PREFLIGHT_CONCURRENCY, nothing_left, probe_hosts
from orchestrator.engine.rollback import after_cancel, rollback_all
from orchestrator.engine.states import (
    HOST_TRANSITIONS,
    PHASE_TRANSITIONS,
    UPGRADE_TRANSITIONS,
    HostState,
    PhaseState,
    UpgradeState,
    check_transition,
)
from orchestrator.engine.view import UpgradeView
from orchestrator.errors import (
    ConflictError,
    NotLeaderError,
    OrchestratorError,
    RollbackRefused,
    Stop,
    StoreError,
    Suspend,
)
from orchestrator.retry import journal_retry
from orchestrator.secrets import SecretStore

log = structlog.get_logger("orchestrator.engine")
U = UpgradeState


class EventSink(Protocol):
    """The journal, as the engine sees it."""

    async def append_all(
        self,
        upgrade_id: str,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        release: bool = False,
    ) -> list[Any]: ...


class Engine:
    def __init__(
        self,
        upgrade_id: str,
        plan: model.Plan,
        journal: EventSink,
        remote: Remote,
        *,
        session: aiohttp.ClientSession,
        runtime_api: RuntimeAPI,
        secrets: SecretStore | None = None,
        view: UpgradeView | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_event: Callable[[Any], None] | None = None,
    ) -> None:
        self.id = upgrade_id
        self.plan = plan
        self.journal = journal
        self.remote = remote
        self.sleep = sleep
        self.secrets = secrets or SecretStore.from_plan(plan.secrets)
        self.view = view or UpgradeView(upgrade_id)
        self.checker = Checker(remote, session)
        self.drainer = Drainer(
            remote, session, {lb.name: lb for lb in plan.load_balancers}, runtime_api, sleep
        )
        self.on_event = on_event
        self._changed = asyncio.Event()
        self._abort_level = 1 if self.view.state is U.ABORTING else 0
        self._abort_orders = self._abort_level
        self._rollback = self.view.state is U.ROLLING_BACK or self.view.rollback_requested
        self._task: asyncio.Task[UpgradeState] | None = None
        self._suspend = False
        # set the moment a pause is ordered, before its journal write returns:
        # a host reaching a checkpoint meanwhile must not start another step
        self._pausing = False
        # the journal's last write error while the upgrade waits for it to work again
        self.stalled: str | None = None
        self._unstall = asyncio.Event()
        self.step_seconds: list[tuple[str, float]] = []
        self.live_health: dict[tuple[str, str], HealthProgress] = {}
        self.live_changes = 0  # a status document built before a change is stale
        self.health_failures = 0

    # --- journal and state ---------------------------------------------------

    async def record(
        self,
        event: events.JournalEvent,
        *,
        release: bool = False,
        before: Sequence[events.JournalEvent] = (),
    ) -> None:
        """Journal an event and fold it in; `release` ends the host leases with it;
        `before`: events that go first in the same commit (a host's step that
        ended, with the next one's start).

        Nothing happens on a host before the event announcing it is on disk,
        so while the journal cannot write (retried by `journal_policy`) the
        upgrade stalls here: visible in the status, the event stream and
        /healthz, until the operator, space freed, resumes it."""
        batch = [*before, event]
        stored = await self._append([(e.KIND, e.to_data()) for e in batch], release)
        first = self.view.first_failure
        for one, journaled in zip(batch, stored, strict=True):
            self.view.apply(journaled, one)
            if self.on_event is not None:
                self.on_event(journaled)
        if first is None and (failure := self.view.first_failure) is not None:
            log.warning(  # the cause, once, however much rollback follows
                "first failure",
                what=failure.what,
                phase=failure.phase,
                host=failure.host,
                step=failure.step,
                message=failure.message,
                output=failure.output,
            )
        self._changed.set()

    async def _append(self, items: list[tuple[str, dict[str, Any]]], release: bool) -> list[Any]:
        def write() -> Awaitable[list[Any]]:
            return self.journal.append_all(self.id, items, release=release)

        try:
            return await write()  # the common case, without the retry machinery
        except StoreError as exc:
            failed: StoreError | None = exc
        while True:
            try:
                return await journal_retry(write, failed, self.sleep)
            except StoreError as exc:
                await self._stall(str(exc))
                failed = None  # resumed: the policy's attempts start afresh

    async def _stall(self, reason: str) -> None:
        self.stalled = reason
        self._unstall.clear()
        log.error("upgrade stalled: the journal cannot record it", reason=reason)
        await self._unstall.wait()
        self.stalled = None
        if self._suspend:  # the daemon stops: the next one retries from the journal
            raise Suspend()
        log.info("upgrade unstalled: retrying the journal write")

    def _refuse_while_stalled(self) -> None:
        if self.stalled is not None:
            raise ConflictError(
                f"the upgrade is stalled, its journal cannot write: {self.stalled}; "
                "free the journal's storage, then resume"
            )

    async def set_upgrade(
        self, state: UpgradeState, reason: str | None = None, *, verify_step: str | None = None
    ) -> None:
        if self.view.state is state:
            return
        check_transition(UPGRADE_TRANSITIONS, f"upgrade {self.id}", self.view.state, state)
        event = events.UpgradeStateChanged(
            state=state.label, reason=reason or None, verify_step=verify_step
        )
        # an end state releases the hosts in the same commit
        await self.record(event, release=state.terminal)
        log.info("upgrade state", state=state.label, reason=reason)

    async def set_phase(
        self,
        name: str,
        state: PhaseState,
        *,
        reason: str | None = None,
        irreversible: bool | None = None,
    ) -> None:
        current = self.view.phase(name).state
        if current is state:
            return
        check_transition(PHASE_TRANSITIONS, f"phase {name}", current, state)
        await self.record(
            events.PhaseStateChanged(
                phase=name, state=state.value, reason=reason, irreversible=irreversible
            )
        )

    async def set_host(
        self,
        phase: str,
        host: str,
        state: HostState,
        error: str | None = None,
        *,
        before: Sequence[events.JournalEvent] = (),
    ) -> None:
        current = self.view.phase(phase).host(host).state
        if current is state:
            if before:
                await self.record(before[-1], before=before[:-1])
            return
        check_transition(HOST_TRANSITIONS, f"host {host} in {phase}", current, state)
        await self.record(
            events.HostStateChanged(phase=phase, host=host, state=state.value, error=error),
            before=before,
        )

    # --- metrics hooks (read by the daemon) -----------------------------------

    def metrics_step(self, step: model.Step, seconds: float, ok: bool) -> None:
        self.step_seconds.append((step.id, seconds))

    def metrics_health_failure(self, phase: str, host: str) -> None:
        self.health_failures += 1

    # --- control ---------------------------------------------------------------

    def going_on(self) -> bool:
        """Would a checkpoint now return at once (no stop, abort, rollback or pause)?"""
        return not (
            self._suspend
            or self._abort_level
            or self._rollback
            or self._pausing
            or self.view.state in (U.PAUSED, U.WAITING_APPROVAL)
        )

    async def checkpoint(self) -> None:
        """Between steps: stop when aborting or rolling back, wait while paused."""
        while not self.going_on():
            if self._suspend:
                raise Suspend()
            if self._abort_level or self._rollback:
                raise Stop()
            self._changed.clear()
            await self._changed.wait()

    async def pause_for(self, reason: str, *, verify_step: str | None = None) -> None:
        """Pause for the operator; with `verify_step`, the resume that follows
        is journaled as that step's verification by hand."""
        if self.view.state in (U.RUNNING, U.PREFLIGHT):
            await self.set_upgrade(U.PAUSED, reason, verify_step=verify_step)

    async def pause(self, by: str | None = None) -> None:
        self._refuse_while_stalled()
        if self.view.state is U.PAUSED:
            return
        if self.view.state not in (U.RUNNING, U.WAITING_APPROVAL, U.PREFLIGHT):
            raise ConflictError(f"cannot pause an upgrade that is {self.view.state.label}")
        self._pausing = True
        try:
            await self.record(events.Control(action="pause", by=by))
            await self.set_upgrade(U.PAUSED, "paused by the operator")
        finally:
            self._pausing = False
            self._changed.set()

    async def resume(self, by: str | None = None) -> None:
        if self.stalled is not None:  # the operator freed the storage: try again
            self._unstall.set()
            return
        if self.view.state is not U.PAUSED:
            raise ConflictError(f"cannot resume an upgrade that is {self.view.state.label}")
        await self.record(events.Control(action="resume", by=by))
        await self.set_upgrade(U.RUNNING)

    async def approve(self, by: str | None = None) -> None:
        self._refuse_while_stalled()
        if self.view.state is not U.WAITING_APPROVAL:
            raise ConflictError(
                f"nothing waits for approval: the upgrade is {self.view.state.label}"
            )
        phase = next(
            (p for p, v in self.view.phases.items() if v.state is PhaseState.WAITING_APPROVAL),
            None,
        )
        await self.record(events.Control(action="approve", phase=phase, by=by))
        await self.set_upgrade(U.RUNNING)

    async def abort(self, by: str | None = None) -> None:
        """First call: finish running steps, then stop. Second call: cancel."""
        self._refuse_while_stalled()
        if self.view.state.terminal:
            raise ConflictError(f"the upgrade is already {self.view.state.label}")
        self._abort_orders += 1
        stage = self._abort_orders
        await self.record(events.Control(action="abort", stage=stage, by=by))
        if stage == 1 and self.view.state is not U.ROLLING_BACK:
            await self.set_upgrade(U.ABORTING, "aborted by the operator")
        # only now may a checkpoint stop the run: it ends in ABORTED, which
        # the table allows from ABORTING, not from RUNNING
        self._abort_level = max(self._abort_level, stage)
        if stage > 1 and self._task is not None:
            self._task.cancel()
        self._changed.set()

    def check_rollback(self) -> None:
        """Raise what `rollback` would refuse with; change nothing."""
        self._refuse_while_stalled()
        point = self.view.irreversible_done
        if point is not None:
            raise RollbackRefused(point)
        if not self.view.state.rollbackable:
            raise ConflictError(f"cannot roll back an upgrade that is {self.view.state.label}")

    async def rollback(self, by: str | None = None) -> None:
        self.check_rollback()
        await self.record(events.Control(action="rollback", by=by))
        self._rollback = True
        await self.set_upgrade(U.ROLLING_BACK, "rollback ordered by the operator")
        if self._task is None or self._task.done():
            self.start()

    def _failed_host(self, action: str, host: str) -> str:
        """The phase a paused upgrade's `host` failed in, or ConflictError saying why not."""
        self._refuse_while_stalled()
        if self.view.state is not U.PAUSED:
            raise ConflictError(
                f"{action} {host} needs a paused upgrade; this one is {self.view.state.label}"
            )
        if not any(host == t.name for t in self.plan.hosts):
            raise ConflictError(f"{action} {host}: no host {host!r} in this upgrade")
        pview = self.view.failed_in(host)
        if pview is None:
            raise ConflictError(f"{action} {host}: {host} has not failed in this upgrade")
        return pview.name

    async def retry(self, host: str, by: str | None = None) -> None:
        """Run a failed host's phase procedure again when the upgrade resumes."""
        phase = self._failed_host("retry", host)
        await self.record(events.Control(action="retry", host=host, phase=phase, by=by))

    async def skip(self, host: str, by: str | None = None) -> None:
        """Leave a failed host behind: rolled back, out of service, out of the
        later phases and gates; the upgrade may then pass its gates."""
        phase = self._failed_host("skip", host)
        error = self.view.phase(phase).host(host).error
        await self.record(events.Control(action="skip", host=host, phase=phase, by=by))
        why = f"skipped by {by or 'the operator'}"
        await self.set_host(phase, host, HostState.SKIPPED, f"{why} after: {error}")

    # --- running -----------------------------------------------------------------

    async def suspend(self) -> None:
        """Daemon shutdown, first stage: running steps finish and are journaled,
        nothing new starts, the upgrade's state is left as it is."""
        self._suspend = True
        self._unstall.set()
        self._changed.set()

    def relinquish(self) -> None:
        """This daemon stopped leading: stop now, journaling nothing (the store
        refuses this daemon's writes); the new leader resumes from the journal."""
        self._suspend = True
        self._unstall.set()
        self.cancel()

    def cancel(self) -> None:
        """Daemon shutdown, second stage."""
        if self._task is not None:
            self._task.cancel()

    def start(self) -> asyncio.Task[UpgradeState]:
        # an API request may start it: the engine's work is not the request's
        self._task = eventloop.background(self.run(), name=f"upgrade-{self.id}")
        return self._task

    async def wait(self) -> UpgradeState:
        assert self._task is not None
        return await self._task

    async def run(self) -> UpgradeState:
        with structlog.contextvars.bound_contextvars(upgrade=self.id):
            try:
                state = await self._run()
                if state.terminal:
                    await self._forget_runs()
                return state
            except Suspend:
                log.info("suspended", state=self.view.state.label)
                return self.view.state
            except asyncio.CancelledError:
                if self._suspend:
                    raise
                await asyncio.shield(after_cancel(self))
                return self.view.state
            except NotLeaderError as exc:
                # fenced: another daemon leads and resumes this upgrade; writing
                # "failed" would be refused too, and would be wrong
                log.warning("engine stopped: this daemon no longer leads", reason=str(exc))
                return self.view.state
            except Exception as exc:
                # a bug or an unexpected fault: record it, never vanish silently
                log.exception("engine crashed")
                if (
                    not self.view.state.terminal
                    and U.FAILED in UPGRADE_TRANSITIONS[self.view.state]
                ):
                    await self.set_upgrade(U.FAILED, f"internal error: {type(exc).__name__}: {exc}")
                raise

    async def _forget_runs(self) -> None:
        """At an end state, remove this upgrade's run records from its hosts,
        as many at once as preflight reaches. Hosts done in their phase were
        cleaned at its end (`release(forget=...)`): the transport knows and
        does not ask them; the others may need a new connection each."""
        remote = self.remote
        if not isinstance(remote, RunRecords):
            return
        ran = {
            hv.name
            for pview in self.view.phases.values()
            for hv in pview.hosts.values()
            if any(sv.run_id is not None for sv in hv.steps.values())
        }
        handshakes = asyncio.Semaphore(PREFLIGHT_CONCURRENCY)

        async def forget(host: str) -> None:
            try:
                async with handshakes:
                    kept = await remote.forget_runs(host, self.id)
            except (OrchestratorError, OSError) as exc:
                log.warning("run records not removed", host=host, error=str(exc))
                return
            finally:
                if isinstance(remote, HoldsConnections):
                    remote.release(host)
            if kept:
                log.warning("run records kept: their commands still run", host=host, kept=kept)

        async with asyncio.TaskGroup() as group:
            for host in sorted(ran):
                group.create_task(forget(host))

    async def _run(self) -> UpgradeState:
        view = self.view
        if self._rollback or view.state is U.ROLLING_BACK:
            return await rollback_all(self)
        if view.state.terminal:
            return view.state
        try:
            if view.state in (U.PENDING, U.PREFLIGHT):
                await self._preflight()
            elif view.state is U.ABORTING:
                raise Stop()
            for phase in self.plan.phases:
                await self._phase(phase)
            if self.view.state is U.ABORTING:  # (the abort may have come since)
                # no checkpoint came after the abort: every step ran to its end
                reason = "the abort came after the last steps had started; they all finished"
                await self.set_upgrade(U.SUCCEEDED, reason)
            else:
                await self._settle(None, hold=True)
                await self.set_upgrade(U.SUCCEEDED, self._skipped_summary())
        except Stop:
            if self._rollback:
                return await rollback_all(self)
            if not view.state.terminal:
                await self.set_upgrade(U.ABORTED, "aborted by the operator")
        return view.state

    @property
    def stopping(self) -> bool:
        """An abort or a rollback has been ordered."""
        return bool(self._abort_level or self._rollback)

    async def _preflight(self) -> None:
        await self.set_upgrade(U.PREFLIGHT)
        problems = await probe_hosts(self)
        if self.stopping:
            raise Stop()  # ordered while preflight ran: nothing was changed yet
        if problems:
            await self.set_upgrade(U.FAILED, "preflight failed: " + "; ".join(sorted(problems)))
            raise Stop()
        nothing = await nothing_left(self.plan, self.view, self.remote)
        if nothing is not None:  # refused before anything ran, as a submit would have been
            await self.set_upgrade(U.FAILED, nothing)
            raise Stop()
        await self.set_upgrade(U.RUNNING)

    def at_target(self, host: str, plan: model.HostPlan) -> bool:
        """Skip a host that preflight found at the target: how a rerun resumes."""
        return plan.version is not None and self.view.preflight.get(host, {}).get("status") == (
            "at_target"
        )

    async def _phase(self, phase: model.Phase) -> None:
        pview = self.view.phase(phase.name)
        if pview.state is PhaseState.DONE:
            return
        with structlog.contextvars.bound_contextvars(phase=phase.name):
            await self.checkpoint()
            if pview.state in (PhaseState.PENDING, PhaseState.GATED):
                guarded = bool(phase.gates or phase.approve or phase.irreversible)
                await self._settle(phase, hold=guarded)
            if pview.state in (PhaseState.PENDING, PhaseState.GATED) and phase.gates:
                await self.set_phase(phase.name, PhaseState.GATED)
                ok, detail = await self._gates(phase)
                if not ok:
                    await self._phase_failed(
                        phase, f"gate failed: {detail}", retry=PhaseState.GATED
                    )
                    return await self._phase(phase)
            while phase.approve and phase.name not in self.view.approvals:
                await self.set_phase(phase.name, PhaseState.WAITING_APPROVAL)
                if self.view.state is U.RUNNING:
                    await self.set_upgrade(
                        U.WAITING_APPROVAL, f"phase {phase.name} waits for approval"
                    )
                await self.checkpoint()
            await self.set_phase(phase.name, PhaseState.RUNNING, irreversible=phase.irreversible)
            failed = await self._batches(phase)
            if failed > phase.max_failures:
                await self._phase_failed(
                    phase, f"{failed} host(s) failed, the budget is {phase.max_failures}"
                )
                return await self._phase(phase)
            await self.set_phase(phase.name, PhaseState.DONE, irreversible=phase.irreversible)

    async def _batches(self, phase: model.Phase) -> int:
        failed = 0
        for batch in phase.batches:
            await self.checkpoint()
            pview = self.view.phase(phase.name)
            pending = [
                hp
                for hp in batch.hosts
                if pview.host(hp.host).state not in (HostState.DONE, HostState.SKIPPED)
            ]
            if pending:
                results = await self._fan_out(phase, pending)
                failed += results.count(False)
            if failed > phase.max_failures:
                return failed
            last = batch is phase.batches[-1]
            if batch.canary and phase.canary_pause and pending and not last:
                await self.pause_for(
                    f"canary batch of phase {phase.name} is done: check it, then resume"
                )
            if phase.batch_pause and not last and pending:
                await self.sleep(phase.batch_pause)
        return failed

    async def _fan_out(self, phase: model.Phase, hosts: list[model.HostPlan]) -> list[bool]:
        """Run hosts of one batch concurrently; every host's outcome is kept."""
        runners = [HostRunner(self, phase, hp) for hp in hosts]
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(r.run()) for r in runners]
        outcomes = [t.result() for t in tasks]
        if any(o is None for o in outcomes):
            if self._suspend:
                raise Suspend()
            raise Stop()  # aborting or rolling back: every host has finished its step
        return [bool(o) for o in outcomes]

    async def _settle(self, before: model.Phase | None, *, hold: bool) -> None:
        """Run the retries the operator ordered; then, with `hold` (a gate, an
        approval or the end comes next), wait while a host that failed within
        its phase's budget is neither retried to success nor skipped: a gate
        or the point of no return must not pass over a host left behind."""
        while True:
            await self.checkpoint()
            for phase_name, host in sorted(self.view.retries):
                await self._retry(phase_name, host)
            held = self.view.tolerated()
            if not hold or not held:
                return
            what = "the end" if before is None else f"phase {before.name}"
            hosts = "; ".join(f"{hv.name} in phase {hv.phase}: {hv.error}" for hv in held[:5])
            await self.pause_for(
                f"{what} waits: {len(held)} host(s) failed within the failure budget and are "
                f"back at {self.plan.from_version}, out of service ({hosts}); retry HOST or "
                "skip HOST, then resume (or roll back)"
            )
            await self.checkpoint()

    async def _retry(self, phase_name: str, host: str) -> None:
        phase = next(p for p in self.plan.phases if p.name == phase_name)
        hp = next(h for b in phase.batches for h in b.hosts if h.host == host)
        with structlog.contextvars.bound_contextvars(phase=phase_name):
            outcome = await HostRunner(self, phase, hp).run()
        if outcome is None:
            raise Suspend() if self._suspend else Stop()

    def _skipped_summary(self) -> str | None:
        skipped = self.view.skipped
        if not skipped:
            return None
        names = ", ".join(f"{h} (failed in {p})" for h, p in sorted(skipped.items()))
        return (
            f"{len(skipped)} host(s) skipped by the operator, left at {self.plan.from_version} "
            f"and out of service: {names}"
        )

    async def _gates(self, phase: model.Phase) -> tuple[bool, str]:
        for index, gate in enumerate(phase.gates):
            if gate.kind == "all_at_target":
                behind = []
                for host, probe in gate.probes:
                    if host in self.view.skipped:
                        continue  # the operator left it behind, out of service
                    seen = await self.checker.version(host, probe)
                    if not probe.reports(seen, self.plan.to_version):
                        behind.append(f"{host}={probe.describe(seen) if seen else seen}")
                ok = not behind
                detail = "all at target" if ok else "not at target: " + ", ".join(behind[:10])
            else:
                assert gate.run is not None and gate.host is not None
                result = await self.remote.run(gate.host, gate.run)
                ok = result.exit_status == gate.expect_exit
                detail = f"{gate.run} on {gate.host} exited {result.exit_status}"
                said = [line for line in result.output.splitlines() if line.strip()]
                if said and not ok:
                    detail += f": {said[-1][:300]}"
            await self.record(events.Gate(phase=phase.name, index=index, ok=ok, detail=detail))
            if not ok:
                return False, detail
        return True, "ok"

    async def _phase_failed(
        self, phase: model.Phase, reason: str, retry: PhaseState = PhaseState.RUNNING
    ) -> None:
        """Apply the upgrade's failure policy. Returns when the operator resumed
        (pause policy, or past the point of no return); raises Stop to roll back."""
        await self.set_phase(phase.name, PhaseState.FAILED, reason=reason)
        point = self.view.irreversible_done
        if self.plan.on_failure == "rollback" and point is None:
            self._rollback = True
            await self.set_upgrade(U.ROLLING_BACK, f"phase {phase.name}: {reason}")
            raise Stop()
        why = f"phase {phase.name}: {reason}; resume retries"
        why += (
            f"; phase '{point}' was the point of no return, so rollback is refused: fix forward"
            if point
            else ", rollback undoes"
        )
        await self.pause_for(why)
        await self.checkpoint()
        await self.set_phase(phase.name, retry)

    async def fatal(self, reason: str) -> None:
        log.error("fatal", reason=reason)
