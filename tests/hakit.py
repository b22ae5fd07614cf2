"""Several `orchestrator serve` daemons on one PostgreSQL store, upgrading a
minicloud under checked load: shared by the HA end-to-end tests and
bench/takeover.py.

The daemons are real subprocesses with state directories of their own and
one shared token file; the minicloud (services, load balancer, SSH hosts)
and the load generator run in the caller's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import yaml

from orchestrator.client import Client, Endpoint
from orchestrator.minicloud.embedded import EmbeddedCloud
from orchestrator.playbook import resolve_playbook

TOKEN = "ha-test-token-0123456789abcdef"
# the minicloud playbook's non-idempotent steps (the package installs): they
# must never run twice on a host. The playbook marks the others idempotent
# (migrate-data repeats by design; contract has a check that it is done)
ONCE = ("minicloud-ctl install",)
MARKERS = "ran-once.log"


def counted_playbook() -> str:
    """The shipped minicloud playbook, each non-idempotent step first writing
    a line to the host's ran-once.log: the proof of "never run twice"."""
    data = yaml.safe_load(resolve_playbook("minicloud").read_text())
    for phase in data["phases"]:
        for step in phase.get("steps", []):
            run = step.get("run")
            if isinstance(run, str) and not step.get("idempotent") and any(p in run for p in ONCE):
                step["run"] = f"echo {json.dumps(run)} >> {MARKERS} && {run}"
    return yaml.safe_dump(data, sort_keys=False)


def run_twice(ec: EmbeddedCloud) -> dict[str, list[str]]:
    """Host -> the non-idempotent commands that ran on it more than once."""
    twice: dict[str, list[str]] = {}
    for host in ec.cloud.hosts:
        path = host.directory / MARKERS
        lines = path.read_text().splitlines() if path.exists() else []
        repeated = sorted({line for line in lines if lines.count(line) > 1})
        if repeated:
            twice[host.name] = repeated
    return twice


def ran_once(ec: EmbeddedCloud) -> dict[str, list[str]]:
    """Host -> the counted commands that ran on it, in order."""
    found: dict[str, list[str]] = {}
    for host in ec.cloud.hosts:
        path = host.directory / MARKERS
        found[host.name] = path.read_text().splitlines() if path.exists() else []
    return found


def drained(ec: EmbeddedCloud) -> list[str]:
    return sorted(name for name, server in ec.lb.servers.items() if server.state != "ready")


@dataclass
class Peer:
    """One `orchestrator serve --store postgresql://...` subprocess."""

    name: str
    root: Path
    store: str
    token_file: Path
    options: Sequence[str]
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    port: int = 0

    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        address = self.state_dir / "daemon.json"
        address.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "orchestrator",
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--state-dir",
                str(self.state_dir),
                "--token-file",
                str(self.token_file),
                "--store",
                self.store,
                *self.options,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        async with asyncio.timeout(30):
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
                try:
                    info = json.loads(address.read_text())
                    if info["pid"] == self.proc.pid:
                        break
                except (OSError, ValueError):
                    pass
                await asyncio.sleep(0.05)
        self.url = str(info["url"])
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a stopped one must be able to hear SIGTERM
        self.proc.send_signal(signal.SIGTERM)
        try:
            await self.wait(20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def health(self) -> dict[str, Any] | None:
        """/healthz, or None while it does not answer."""
        if not self.running:
            return None
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.url + "/healthz") as resp,
            ):
                data: dict[str, Any] = await resp.json()
                return data
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    def client(self) -> Client:
        return Client(Endpoint(self.url, TOKEN))


@dataclass
class Peers:
    root: Path
    store: str
    lease: float
    renew: float
    peers: list[Peer] = field(default_factory=list)

    @property
    def token_file(self) -> Path:
        return self.root / "token"

    async def start(self, count: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        options = ("--lease-seconds", str(self.lease), "--renew-seconds", str(self.renew))
        for _ in range(count):
            peer = Peer(f"d{len(self.peers) + 1}", self.root, self.store, self.token_file, options)
            self.peers.append(peer)
        await asyncio.gather(*(p.start() for p in self.peers[-count:]))

    async def close(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.peers))

    async def leader(self, *, timeout: float = 60) -> Peer:
        """The one running peer whose /healthz says it leads (waits for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for peer in self.peers:
                    health = await peer.health()
                    if health is not None and health["role"] == "leader":
                        return peer
                await asyncio.sleep(0.05)

    def standby(self, leader: Peer) -> Peer:
        """A running peer other than `leader` (the leader itself if none is left)."""
        return next((p for p in self.peers if p is not leader and p.running), leader)


async def status(peer: Peer, upgrade_id: str) -> dict[str, Any]:
    async with peer.client() as client:
        return await client.status(upgrade_id)


async def wait_status(
    peers: Peers, upgrade_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 240
) -> dict[str, Any]:
    """Poll any running peer (standbys serve reads) until `done(status)`."""
    async with asyncio.timeout(timeout):
        while True:
            for peer in peers.peers:
                if peer.running:
                    try:
                        doc = await status(peer, upgrade_id)
                    except Exception:  # that peer is between lives: ask another
                        continue
                    if done(doc):
                        return doc
                    break
            await asyncio.sleep(0.1)


def running_in(phase: str) -> Callable[[dict[str, Any]], bool]:
    """The status shows a host of `phase` running (a step under way)."""

    def check(doc: dict[str, Any]) -> bool:
        for p in doc["phases"]:
            if p["name"] == phase:
                return any(
                    h["state"] in ("draining", "upgrading", "checking", "undraining")
                    for b in p["batches"]
                    for h in b["hosts"]
                )
        return False

    return check


def epochs(store: str, upgrade_id: str) -> list[tuple[int, int]]:
    """(seq, epoch) of every journaled event of the upgrade, in order."""
    with psycopg.connect(store, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT seq, epoch FROM events WHERE upgrade_id = %s ORDER BY seq", (upgrade_id,)
        ).fetchall()
    return [(int(s), int(e)) for s, e in rows]
