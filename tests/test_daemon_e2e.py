"""End to end: the real daemon as a subprocess (`orchestrator serve`), driven
by the real CLI (subprocesses too) and by raw HTTP, upgrading in-process SSH
hosts served by this test's event loop.

The CLI finds the daemon the way an operator's does: from the state
directory (ORCHESTRATOR_STATE_DIR) where the daemon wrote its address and
its token file.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.enginekit import inventory_text, seed
from tests.integration.servers import missing_parts
from tests.sshhosts import MakeSSHHosts, SSHHosts
from tests.test_api import PLAYBOOK, finish, poll, release, step_state

pytestmark = pytest.mark.slow


class Daemon:
    """`orchestrator serve` in a subprocess over one state directory."""

    def __init__(self, state_dir: Path, log: Path, *options: str) -> None:
        self.state_dir = state_dir
        self.log = log
        self.options = options
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | {
            "ORCHESTRATOR_STATE_DIR": str(state_dir)
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.port = 0
        self.starts = 0

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def start(self) -> None:
        """Start (again, on the same port once it has one) and wait until it answers."""
        address = self.state_dir / "daemon.json"
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
                *self.options,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.starts += 1
        pid = self.proc.pid

        async def listening() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()[-2000:]}")
            try:
                data: dict[str, Any] = json.loads(address.read_text())
            except (OSError, ValueError):
                return None
            return data if data["pid"] == pid else None

        info = await poll(listening, lambda d: d is not None)
        assert info is not None
        self.url = info["url"]
        self.port = int(self.url.rsplit(":", 1)[1])

    async def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await self.wait(10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def spawn(self, *argv: str) -> asyncio.subprocess.Process:
        """`orchestrator ARGV` as the operator runs it, finding this daemon by itself."""
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator",
            *argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def cli(self, *argv: str) -> tuple[int, str, str]:
        return await finished(await self.spawn(*argv))

    async def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        token: bool = True,
    ) -> tuple[int, Any]:
        all_headers = {**(self.auth if token else {}), **(headers or {})}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, json=body, headers=all_headers) as resp,
        ):
            raw = await resp.read()
            data = (
                json.loads(raw)
                if resp.content_type in ("application/json", "application/problem+json")
                else raw.decode()
            )
            return resp.status, data

    async def status(self, upgrade_id: str) -> dict[str, Any]:
        code, doc = await self.http("GET", f"/v1/upgrades/{upgrade_id}")
        assert code == 200, doc
        assert isinstance(doc, dict)
        return doc

    async def wait_state(self, upgrade_id: str, *states: str) -> dict[str, Any]:
        return await poll(lambda: self.status(upgrade_id), lambda d: d["state"] in states, 30)

    async def wait_step(self, upgrade_id: str, phase: str, host: str, state: str) -> None:
        await poll(
            lambda: self.status(upgrade_id), lambda d: step_state(d, phase, host) == state, 30
        )


async def finished(proc: asyncio.subprocess.Process, before: bytes = b"") -> tuple[int, str, str]:
    async with asyncio.timeout(40):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (before + out).decode(), err.decode()


@pytest.fixture
async def hosts(make_ssh_hosts: MakeSSHHosts) -> AsyncIterator[SSHHosts]:
    group = await make_ssh_hosts(3)
    seed(group)
    yield group
    release(group)  # nothing blocks the daemon's graceful stop
    finish(group)


@pytest.fixture
async def daemon(tmp_path: Path, hosts: SSHHosts) -> AsyncIterator[Daemon]:
    running = Daemon(tmp_path / "state", tmp_path / "daemon.log")
    await running.start()
    yield running
    release(hosts)
    finish(hosts)
    await running.stop()


@pytest.fixture
def files(tmp_path: Path, hosts: SSHHosts) -> list[str]:
    """`-i INVENTORY -p PLAYBOOK --to 2.0` for the CLI."""
    inventory, playbook = tmp_path / "cloud.yaml", tmp_path / "lab.yaml"
    inventory.write_text(inventory_text(hosts))
    playbook.write_text(PLAYBOOK)
    return ["-i", str(inventory), "-p", str(playbook), "--to", "2.0"]


async def submit(daemon: Daemon, files: list[str]) -> str:
    code, out, err = await daemon.cli("submit", *files)
    assert code == 0, err
    return out.split()[1]


def versions(hosts: SSHHosts) -> set[str]:
    return {(hosts.host_dir(n) / "version").read_text().strip() for n in hosts.names}


# --- the operator's day ---------------------------------------------------------


async def test_submit_watch_approve_to_the_end(
    daemon: Daemon, hosts: SSHHosts, files: list[str]
) -> None:
    token_file = daemon.state_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    release(hosts)
    finish(hosts)
    watching = asyncio.create_task(daemon.cli("submit", *files, "--watch"))
    upgrade_id = (
        await poll(lambda: daemon.http("GET", "/v1/upgrades"), lambda r: r[1]["upgrades"])
    )[1]["upgrades"][0]["id"]
    await daemon.wait_state(upgrade_id, "waiting_approval")
    code, out, _ = await daemon.cli("approve", upgrade_id)
    assert (code, out) == (0, f"approve: upgrade {upgrade_id} is running\n")

    code, out, err = await watching
    assert code == 0, err
    assert re.fullmatch(
        rf"upgrade {upgrade_id} succeeded in \d+ s, 3/3 hosts at 2\.0", out.splitlines()[-1]
    )
    assert "phase contract waiting_approval" in out
    assert versions(hosts) == {"2.0"}
    code, out, _ = await daemon.cli("status", upgrade_id)
    assert code == 0
    assert "succeeded" in out
    assert "next: nothing: every phase is done" in out
    # the JSON log: one object per line, with the upgrade id bound, and no token
    log_lines = [json.loads(line) for line in daemon.log.read_text().splitlines()]
    assert any(
        line.get("upgrade") == upgrade_id and line.get("state") == "succeeded" for line in log_lines
    )
    assert daemon.token not in daemon.log.read_text()


async def test_pause_and_resume_with_the_cli(
    daemon: Daemon, hosts: SSHHosts, files: list[str]
) -> None:
    upgrade_id = await submit(daemon, files)
    await daemon.wait_step(upgrade_id, "roll", "host-1", "running")
    code, out, _ = await daemon.cli("pause", upgrade_id)
    assert (code, out) == (0, f"pause: upgrade {upgrade_id} is paused (paused by the operator)\n")
    release(hosts, "host-1")
    await daemon.wait_step(upgrade_id, "roll", "host-1", "done")
    await asyncio.sleep(0.5)
    doc = await daemon.status(upgrade_id)
    assert doc["state"] == "paused"
    assert step_state(doc, "roll", "host-2") == "pending"

    code, _, _ = await daemon.cli("resume", upgrade_id)
    assert code == 0
    release(hosts)
    await daemon.wait_state(upgrade_id, "waiting_approval")
    assert versions(hosts) == {"2.0"}


async def test_rollback_and_the_409s(daemon: Daemon, hosts: SSHHosts, files: list[str]) -> None:
    upgrade_id = await submit(daemon, files)
    await daemon.wait_step(upgrade_id, "roll", "host-1", "running")

    # a second active upgrade of the same hosts
    code, _, err = await daemon.cli("submit", *files)
    assert code == 3
    assert f"is held by upgrade {upgrade_id}: one upgrade at a time per host" in err
    status, body = await daemon.http("POST", "/v1/upgrades/" + upgrade_id + "/approve")
    assert status == 409
    assert "nothing waits for approval" in body["detail"]

    code, out, _ = await daemon.cli("rollback", upgrade_id)
    assert code == 0
    assert "rolling_back" in out
    release(hosts)
    code, out, _ = await daemon.cli("watch", upgrade_id)
    assert code == 1
    assert out.splitlines()[-1].startswith(f"upgrade {upgrade_id} rolled back after ")
    assert versions(hosts) == {"1.0"}

    # after the point of no return, rollback is refused with its name
    second = await submit(daemon, files)
    await daemon.wait_state(second, "waiting_approval")
    assert (await daemon.cli("approve", second))[0] == 0
    await poll(lambda: daemon.status(second), lambda d: d["point_of_no_return_passed"], 30)
    code, _, err = await daemon.cli("rollback", second)
    assert code == 3
    assert "phase 'contract' is irreversible" in err
    assert "point of no return" in err
    status, body = await daemon.http("POST", f"/v1/upgrades/{second}/rollback")
    assert status == 409
    assert "contract" in body["detail"]
    finish(hosts)
    assert (await daemon.wait_state(second, "succeeded", "failed"))["state"] == "succeeded"


async def test_token_is_required_everywhere_but_healthz(daemon: Daemon) -> None:
    status, body = await daemon.http("GET", "/healthz", token=False)
    assert (status, body) == (200, {"status": "ok", "role": "leader", "store": "sqlite"})
    for method, path in [
        ("GET", "/v1/upgrades"),
        ("POST", "/v1/upgrades"),
        ("GET", "/metrics"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/upgrades/x/events"),
    ]:
        status, body = await daemon.http(method, path, token=False)
        assert status == 401, path
        status, body = await daemon.http(
            method, path, token=False, headers={"Authorization": "Bearer guess"}
        )
        assert status == 401, path
    status, body = await daemon.http("GET", "/v1/openapi.json")
    assert (status, body["openapi"]) == (200, "3.1.0")
    env = daemon.env
    daemon.env = env | {"ORCHESTRATOR_TOKEN": "not-the-token"}
    code, _, err = await daemon.cli("status")
    daemon.env = env
    assert code == 3
    assert "refused the token" in err


async def test_events_resume_with_last_event_id(
    daemon: Daemon, hosts: SSHHosts, files: list[str]
) -> None:
    upgrade_id = await submit(daemon, files)
    await daemon.wait_step(upgrade_id, "roll", "host-1", "running")
    events_url = f"{daemon.url}/v1/upgrades/{upgrade_id}/events"

    async def stream(last: str | None, limit: int | None = None) -> list[tuple[str, str]]:
        headers = daemon.auth | ({"Last-Event-ID": last} if last else {})
        seen: list[tuple[str, str]] = []
        async with (
            aiohttp.ClientSession() as session,
            session.get(events_url, headers=headers) as r,
        ):
            assert r.status == 200
            event_id = kind = ""
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    kind = line[7:]
                elif not line and kind:
                    seen.append((event_id, kind))
                    event_id = kind = ""
                    if limit is not None and len(seen) == limit:
                        break
        return seen

    first = await stream(None, limit=4)
    assert [e[0] for e in first] == ["1", "2", "3", "4"]
    release(hosts)
    await daemon.wait_state(upgrade_id, "waiting_approval")
    await daemon.cli("approve", upgrade_id)
    finish(hosts)
    rest = await stream("4")
    assert rest[-1][1] == "end"
    numbered = [int(e[0]) for e in rest[:-1]]
    assert numbered == list(range(5, 5 + len(numbered)))
    assert rest[-2][1] == "upgrade.state"


# --- stopping and restarting -------------------------------------------------------


async def test_killed_daemon_resumes_the_upgrade_and_watch_follows(
    daemon: Daemon, hosts: SSHHosts, files: list[str]
) -> None:
    upgrade_id = await submit(daemon, files)
    await daemon.wait_step(upgrade_id, "roll", "host-1", "running")
    watcher = await daemon.spawn("watch", upgrade_id)
    assert watcher.stdout is not None
    async with asyncio.timeout(20):  # it has found the upgrade and follows its events
        first_line = await watcher.stdout.readline()
    assert first_line.decode().startswith(f"upgrade {upgrade_id}: lab 1.0 -> 2.0")

    await daemon.signal(signal.SIGKILL)
    assert await daemon.wait() == -signal.SIGKILL
    release(hosts)  # the step's effect happens while no daemon is watching it
    await daemon.start()  # same port: the watcher reconnects with Last-Event-ID

    doc = await daemon.wait_state(upgrade_id, "waiting_approval")
    assert all(step_state(doc, "roll", name) == "done" for name in hosts.names), (
        "every host finished the rolling phase after the restart"
    )
    assert (await daemon.cli("approve", upgrade_id))[0] == 0
    finish(hosts)
    code, out, err = await finished(watcher, first_line)
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"upgrade {upgrade_id} succeeded")
    # the watcher saw every event exactly once across the restart
    assert out.count("upgrade preflight") == 1
    assert out.count("phase pin done") == 1
    assert versions(hosts) == {"2.0"}
    assert "resuming upgrade" in daemon.log.read_text()


async def test_first_sigterm_lets_running_steps_finish_second_cancels(
    daemon: Daemon, hosts: SSHHosts, files: list[str]
) -> None:
    upgrade_id = await submit(daemon, files)
    await daemon.wait_step(upgrade_id, "roll", "host-1", "running")

    # stage one: still serving, no new upgrades, the running step goes on
    await daemon.signal(signal.SIGTERM)
    await poll(
        lambda: daemon.http("GET", "/healthz", token=False), lambda r: r[1]["status"] == "stopping"
    )
    status, body = await daemon.http("POST", "/v1/upgrades", {"inventory": "x"})
    assert (status, body["detail"]) == (503, "the daemon is shutting down")
    assert daemon.proc is not None and daemon.proc.returncode is None
    release(hosts, "host-1")
    assert await daemon.wait() == 0
    journal = journaled(daemon, upgrade_id)
    assert ("step", "roll", "host-1", "done") in journal
    assert not any(e[1:3] == ("roll", "host-2") for e in journal), "nothing new started"

    # next daemon: continues with host-2; two signals cancel its running step
    await daemon.start()
    await daemon.wait_step(upgrade_id, "roll", "host-2", "running")
    await daemon.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    await daemon.signal(signal.SIGTERM)
    assert await daemon.wait() == 0
    steps = [e for e in journaled(daemon, upgrade_id) if e[:3] == ("step", "roll", "host-2")]
    assert steps[-1][3] == "running", "the cancelled step stays 'running' in the journal"

    # and the one after that re-runs the cancelled (idempotent) step and finishes
    await daemon.start()
    release(hosts)
    finish(hosts)
    await daemon.wait_state(upgrade_id, "waiting_approval")
    assert (await daemon.cli("approve", upgrade_id))[0] == 0
    doc = await daemon.wait_state(upgrade_id, "succeeded", "failed")
    assert doc["state"] == "succeeded", doc["reason"]
    assert versions(hosts) == {"2.0"}


async def test_a_daemon_that_cannot_listen_resumes_nothing(
    daemon: Daemon, hosts: SSHHosts, files: list[str]
) -> None:
    """Fails on the code before it: the daemon resumed its upgrades (journaled,
    re-checked the running step on its host) and only then found its port
    taken and exited 2, and under systemd's Restart=on-failure again every 5 s."""
    upgrade_id = await submit(daemon, files)
    await daemon.wait_step(upgrade_id, "roll", "host-1", "running")
    await daemon.signal(signal.SIGKILL)
    assert await daemon.wait() == -signal.SIGKILL
    before = journaled(daemon, upgrade_id)

    with socket.create_server(("127.0.0.1", daemon.port)):  # someone else has the port
        listen = f"127.0.0.1:{daemon.port}"
        code, _, err = await daemon.cli("serve", "--listen", listen)
    assert code == 2, err
    assert f"cannot listen on {listen}" in err
    assert journaled(daemon, upgrade_id) == before, "nothing resumed, nothing journaled"

    # with the port free again the next daemon resumes the upgrade
    release(hosts)
    await daemon.start()
    doc = await daemon.wait_state(upgrade_id, "waiting_approval")
    assert all(step_state(doc, "roll", name) == "done" for name in hosts.names)


def journaled(daemon: Daemon, upgrade_id: str) -> list[tuple[str, ...]]:
    """(kind, phase, host, state) of every journaled event, read from the SQLite
    file a stopped daemon left behind."""
    with sqlite3.connect(daemon.state_dir / "journal.sqlite3") as conn:
        rows = conn.execute(
            "SELECT kind, data FROM events WHERE upgrade_id = ? ORDER BY seq", (upgrade_id,)
        ).fetchall()
    found: list[tuple[str, ...]] = []
    for kind, data in rows:
        d = json.loads(data)
        found.append((kind, d.get("phase", ""), d.get("host", ""), d.get("state", "")))
    return found


# --- the daemon's own safety ---------------------------------------------------------


def self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orchestrator test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def test_tls_and_one_daemon_per_state_directory(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    daemon = Daemon(
        tmp_path / "state", tmp_path / "daemon.log", "--tls-cert", cert, "--tls-key", key
    )
    await daemon.start()
    try:
        assert daemon.url.startswith("https://127.0.0.1:")
        code, out, err = await daemon.cli("status", "--cacert", cert)
        assert (code, err) == (0, "")
        assert out.split() == ["id", "state", "playbook", "inventory", "versions"]
        code, _, err = await daemon.cli("status")
        assert code == 3
        assert "CERTIFICATE_VERIFY_FAILED" in err

        second = Daemon(daemon.state_dir, tmp_path / "second.log")
        code, _, err = await second.cli("serve", "--listen", "127.0.0.1:0")
        assert code == 3
        assert f"another daemon (pid {daemon.proc.pid if daemon.proc else 0})" in err
    finally:
        await daemon.stop()
    assert await daemon.wait() == 0


async def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a-token-that-is-long-enough\n")
    token.chmod(0o644)
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log")

    code, _, err = await daemon.cli("serve", "--listen", "127.0.0.1:0", "--token-file", str(token))

    assert code == 2
    assert f"chmod 600 {token}" in err
    assert "a-token-that-is-long-enough" not in err


async def test_systemd_hears_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    """Issue 13: the unit was Type=exec, with no readiness and no watchdog."""
    directory = Path(tempfile.mkdtemp(prefix="notify-"))  # a short socket path
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind(str(directory / "notify"))
        listener.setblocking(False)
        running = Daemon(tmp_path / "state", tmp_path / "daemon.log")
        running.env |= {"NOTIFY_SOCKET": str(directory / "notify"), "WATCHDOG_USEC": "200000"}
        loop = asyncio.get_running_loop()

        async def heard() -> str:
            async with asyncio.timeout(20):
                return (await loop.sock_recv(listener, 4096)).decode()

        await running.start()
        first = await heard()
        assert first.startswith("READY=1\nSTATUS=listening on http://127.0.0.1:"), first
        assert (running.state_dir / "daemon.json").exists(), "ready only once it listens"
        assert [await heard() for _ in range(3)] == ["WATCHDOG=1"] * 3  # every 0.1 s
        await running.signal(signal.SIGTERM)
        while (said := await heard()) == "WATCHDOG=1":
            pass
        assert said == "STOPPING=1"
        assert await running.wait() == 0
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_the_shipped_unit_is_hardened_below_3() -> None:
    """Issue 13: `systemd-analyze security` rated the unit 5.9 MEDIUM."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing_parts("needs systemd-analyze; install with: sudo apt-get install -y systemd")
    unit = Path(__file__).resolve().parent.parent / "docs" / "orchestrator.service"
    with tempfile.TemporaryDirectory() as tmp:  # the unit's name is its file name
        copy = Path(tmp) / "orchestrator.service"
        copy.write_text(unit.read_text())
        done = subprocess.run(
            [analyze, "security", "--offline=yes", "--no-pager", str(copy)],
            capture_output=True,
            text=True,
            check=False,
        )
    found = re.search(r"Overall exposure level for orchestrator\.service: (\d+\.\d+)", done.stdout)
    assert found is not None, done.stdout[-2000:] + done.stderr[-2000:]
    assert float(found.group(1)) < 3.0, done.stdout
    assert "Type=notify" in unit.read_text()
