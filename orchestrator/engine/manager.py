"""Every upgrade the daemon knows: submit, resume from the journal, control, stop.

The daemon's HTTP handlers and the tests both drive upgrades through this
one object; it owns the journal, an SSH pool per upgrade and one engine per
unfinished upgrade.

On a shared store the manager is either leading (engines run, it writes)
or a standby: it runs no engine and writes nothing, and keeps its views
current by following what the leader commits (`follow`). `promote` makes
it the leader exactly as a restart does: every upgrade is read back from
the store and every unfinished one resumes; `demote` stops its engines at
once, journaling nothing (the store would refuse it anyway).
"""

from __future__ import annotations

import asyncio
import secrets as pysecrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from orchestrator import model
from orchestrator.actions.drain import tcp_runtime_api
from orchestrator.actions.health import Checker
from orchestrator.engine.eta import Histories, History
from orchestrator.engine.livestatus import LiveStatus
from orchestrator.engine.preflight import Earlier, done_by_earlier, nothing_to_do
from orchestrator.engine.runner import Engine
from orchestrator.engine.states import UpgradeState
from orchestrator.engine.view import UpgradeView
from orchestrator.errors import ConflictError, NotFoundError, NotLeaderError
from orchestrator.secrets import SecretStore
from orchestrator.store.base import Event, Store
from orchestrator.transport.ssh import SSHPool

log = structlog.get_logger("orchestrator.manager")

RemoteFactory = Callable[[model.Plan, SecretStore], SSHPool]


@dataclass(slots=True)
class Upgrade:
    id: str
    plan: model.Plan
    digest: str
    inventory: str
    created_at: float
    view: UpgradeView
    engine: Engine | None = None
    pool: SSHPool | None = None
    # the status document, kept encoded over `view` (made at the first read)
    live: LiveStatus | None = None
    # the plan as the API answers it, encoded at the first read (orchestrator.api.handlers)
    plan_json: bytes | None = None


def new_id() -> str:
    return time.strftime("u%Y%m%d-%H%M%S-", time.gmtime()) + pysecrets.token_hex(3)


class UpgradeManager:
    def __init__(
        self,
        journal: Store,
        *,
        remote_factory: RemoteFactory | None = None,
        on_event: Callable[[str, Event], None] | None = None,
        gate: Callable[[], None] | None = None,
        histories: Histories | None = None,
    ) -> None:
        self.journal = journal
        self.remote_factory = remote_factory or (lambda plan, store: SSHPool(plan.hosts, store))
        self.on_event = on_event
        # called before every action on a host: raises when this daemon may no longer act
        self.gate = gate
        self.upgrades: dict[str, Upgrade] = {}
        self.histories = histories or Histories()
        self.session: aiohttp.ClientSession | None = None
        self.leading = True
        self._submit_lock = asyncio.Lock()
        self._dirty: set[str] = set()
        self._follow_wake = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None

    async def start(self, *, lead: bool = True) -> None:
        """Load every upgrade from the journal; leading, resume the unfinished ones."""
        self.session = aiohttp.ClientSession()
        self.leading = lead
        if not lead:
            self._follower = asyncio.create_task(self._follow_main(), name="follow-journal")
        await self._load(resume=lead)

    async def _load(self, *, resume: bool) -> None:
        loaded: dict[str, Upgrade] = {}
        for record in await self.journal.upgrades():
            fresh = await self._read(record.id)
            known = self.upgrades.get(record.id)
            if known is not None:  # the same object: open event streams hold it
                known.view, known.engine, known.pool = fresh.view, None, None
                fresh = known
            loaded[record.id] = fresh
        self.upgrades = loaded
        if not resume:
            return
        for up in loaded.values():
            if not up.view.state.terminal:
                log.info("resuming upgrade", upgrade=up.id, state=up.view.state.label)
                try:  # a journal from before leases has none: take them now
                    await self.journal.lease(up.id, up.plan.endpoints())
                except ConflictError as exc:
                    log.warning("resuming without its host leases", upgrade=up.id, error=str(exc))
                self._engine(up).start()

    async def _read(self, upgrade_id: str) -> Upgrade:
        record = await self.journal.get(upgrade_id)
        plan = model.from_json(await self.journal.plan_json(upgrade_id))
        view = UpgradeView(upgrade_id)
        for event in await self.journal.events(upgrade_id):
            view.apply(event)
        return Upgrade(upgrade_id, plan, record.digest, record.inventory, record.created_at, view)

    # --- leading and following (a shared store) -------------------------------------

    async def promote(self) -> None:
        """This daemon leads now (its store writes with the new epoch): read
        every upgrade back and resume the unfinished ones, as a restart does."""
        async with self._submit_lock:
            self.leading = True
            await self._load(resume=True)
        log.info("leading", upgrades=len(self.upgrades))

    async def demote(self, reason: str) -> None:
        """Stop leading: engines stop where they are, writing nothing; the next
        leader resumes them from the journal. The views follow the store again."""
        self.leading = False
        engines = [up.engine for up in self.upgrades.values() if up.engine is not None]
        for engine in engines:
            engine.relinquish()
        tasks = [e._task for e in engines if e._task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for up in self.upgrades.values():
            up.engine = None
            if up.pool is not None:
                await up.pool.close()
                up.pool = None
        log.warning("standing by", reason=reason, stopped=len(engines))
        self._dirty.update(self.upgrades)
        if self._follower is None:
            self._follower = asyncio.create_task(self._follow_main(), name="follow-journal")
        self._follow_wake.set()

    def follow(self, upgrade_id: str, seq: int) -> None:
        """Another daemon committed up to `seq` of `upgrade_id` (called by the store)."""
        if not self.leading:
            self._dirty.add(upgrade_id)
            self._follow_wake.set()

    async def _follow_main(self) -> None:
        while True:
            await self._follow_wake.wait()
            self._follow_wake.clear()
            while self._dirty and not self.leading:
                upgrade_id = self._dirty.pop()
                try:
                    await self._catch_up(upgrade_id)
                except Exception as exc:  # the store is down: the next change retries
                    log.warning("following the journal failed", upgrade=upgrade_id, error=str(exc))
                    self._dirty.add(upgrade_id)
                    await asyncio.sleep(1.0)

    async def _catch_up(self, upgrade_id: str) -> None:
        up = self.upgrades.get(upgrade_id)
        if up is None:
            self.upgrades[upgrade_id] = await self._read(upgrade_id)
            return
        for event in await self.journal.events(upgrade_id, up.view.last_seq):
            if self.leading:
                return  # promoted meanwhile: promote read everything afresh
            up.view.apply(event)

    def _engine(self, up: Upgrade) -> Engine:
        assert self.session is not None
        store = SecretStore.from_plan(up.plan.secrets)
        up.pool = self.remote_factory(up.plan, store)
        up.pool.gate = self.gate
        balancers = {lb.name: lb for lb in up.plan.load_balancers}

        async def runtime_api(lb: model.LoadBalancerTarget, command: str) -> str:
            if self.gate is not None:
                self.gate()
            target = balancers[lb.name]
            if target.address is not None:
                return await tcp_runtime_api(target.address, command)
            assert target.host is not None and target.socket is not None and up.pool is not None
            return await up.pool.unix_request(target.host, target.socket, command)

        def forward(event: Event) -> None:
            if self.on_event is not None:
                self.on_event(up.id, event)

        up.engine = Engine(
            up.id,
            up.plan,
            self.journal,
            up.pool,
            session=self.session,
            runtime_api=runtime_api,
            secrets=store,
            view=up.view,
            on_event=forward,
        )
        return up.engine

    async def submit(
        self,
        plan: model.Plan,
        *,
        idempotency_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> tuple[Upgrade, bool]:
        """Start an upgrade of `plan`. Returns (upgrade, created); a repeated
        idempotency key returns the first upgrade with created=False."""
        async with self._submit_lock:
            self._require_leading()  # one submit at a time: the 409 check is then exact
            if idempotency_key is not None:
                existing = await self.journal.lookup_key(idempotency_key)
                if existing is not None and existing in self.upgrades:
                    return self.upgrades[existing], False
            await self._refuse_nothing_to_do(plan)
            upgrade_id = new_id()
            digest = plan.digest
            if idempotency_key is not None:
                # bind the key before creating anything: a crash in between
                # must not leave an upgrade that a retried submit duplicates
                first = await self.journal.remember_key(idempotency_key, upgrade_id)
                if first != upgrade_id and first in self.upgrades:
                    return self.upgrades[first], False
            await self.journal.create(
                upgrade_id,
                model.to_json(plan),
                inventory=plan.inventory,
                digest=digest,
                meta=meta or {},
                # every host it works on, by SSH endpoint: a second upgrade of
                # any of them is refused here (409), whatever the names
                endpoints=plan.endpoints(),
            )
            up = Upgrade(
                upgrade_id, plan, digest, plan.inventory, time.time(), UpgradeView(upgrade_id)
            )
            self.upgrades[upgrade_id] = up
            self._engine(up).start()
            return up, True

    def _require_leading(self) -> None:
        if not self.leading:
            raise NotLeaderError("this daemon is a standby: the leader takes submits and actions")

    async def _refuse_nothing_to_do(self, plan: model.Plan) -> None:
        """409 before anything runs when the cloud is already where the plan
        leads and its point of no return is behind it (only reads hosts)."""
        earlier = (Earlier(up.id, up.plan, up.view) for up in self.upgrades.values())
        why = done_by_earlier(plan, earlier)
        if why is None:
            return  # the usual submit: no host is contacted
        assert self.session is not None
        pool = self.remote_factory(plan, SecretStore.from_plan(plan.secrets))
        try:
            nothing = await nothing_to_do(plan, Checker(pool, self.session), why)
        finally:
            await pool.close()
        if nothing is not None:
            raise ConflictError(nothing)

    def stalled(self) -> dict[str, str]:
        """Upgrade id -> why, for every upgrade waiting for its journal to write."""
        return {
            up.id: up.engine.stalled
            for up in self.upgrades.values()
            if up.engine is not None and up.engine.stalled is not None
        }

    def history(self, playbook: str) -> History:
        """How long hosts took per phase in the playbook's earlier upgrades
        (read again only once the set of its successful upgrades changed)."""
        runs = ((up.id, up.plan, up.view) for up in self.upgrades.values())
        return self.histories.get(runs, playbook)

    def status_json(self, upgrade_id: str) -> bytes:
        """The status document as JSON: the same bytes object until the next
        journal event, stall or health round changes it."""
        up = self.get(upgrade_id)
        live = up.live
        if live is None or live.view is not up.view:  # a restart read the view afresh
            live = up.live = LiveStatus(up.id, up.plan, up.digest, up.view)
        engine = up.engine
        return live.document(
            stalled=engine.stalled if engine is not None else None,
            health=engine.live_health if engine is not None else None,
            changes=engine.live_changes if engine is not None else 0,
            past=self.history(up.plan.name),
        )

    def get(self, upgrade_id: str) -> Upgrade:
        up = self.upgrades.get(upgrade_id)
        if up is None:
            raise NotFoundError(f"no upgrade {upgrade_id!r}")
        return up

    async def control(self, upgrade_id: str, action: str, *, by: str | None = None) -> Upgrade:
        """pause, resume, abort, approve or rollback, journaled with who ordered it."""
        self._require_leading()
        up = self.get(upgrade_id)
        engine = up.engine
        if engine is None:
            if action != "rollback":
                raise ConflictError(f"upgrade {upgrade_id} is {up.view.state.label}")
            engine = self._engine(up)
        handlers = {
            "pause": engine.pause,
            "resume": engine.resume,
            "abort": engine.abort,
            "approve": engine.approve,
            "rollback": engine.rollback,
        }
        if action not in handlers:
            raise NotFoundError(f"no action {action!r}")
        if action == "rollback" and up.view.state.terminal:
            # its end released its hosts: rolling it back needs them again
            engine.check_rollback()
            await self.journal.lease(up.id, up.plan.endpoints())
        await handlers[action](by)
        return up

    async def control_host(
        self, upgrade_id: str, action: str, host: str, *, by: str | None = None
    ) -> Upgrade:
        """retry or skip a host that failed in a paused upgrade."""
        self._require_leading()
        up = self.get(upgrade_id)
        engine = up.engine
        if engine is None:
            raise ConflictError(f"upgrade {upgrade_id} is {up.view.state.label}")
        handlers = {"retry": engine.retry, "skip": engine.skip}
        if action not in handlers:
            raise NotFoundError(f"no host action {action!r}")
        await handlers[action](host, by)
        return up

    async def wait(self, upgrade_id: str, timeout: float | None = None) -> UpgradeState:
        """Until the upgrade's engine stops (terminal, paused engines keep waiting)."""
        up = self.get(upgrade_id)
        if up.engine is None or up.engine._task is None:
            return up.view.state
        async with asyncio.timeout(timeout):
            return await asyncio.shield(up.engine._task)

    async def stop(self, *, cancel: bool = False) -> None:
        """First stage: running steps finish and are journaled, nothing new starts.
        With cancel=True (second signal), running steps are cancelled."""
        engines = [up.engine for up in self.upgrades.values() if up.engine is not None]
        for engine in engines:
            if cancel:
                engine.cancel()
            else:
                await engine.suspend()
        tasks = [e._task for e in engines if e._task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await self.stop()
        for up in self.upgrades.values():
            if up.pool is not None:
                await up.pool.close()
        if self.session is not None:
            await self.session.close()
