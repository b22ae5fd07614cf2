"""Supervised commands (`SSHPool.run(run_id=...)`) against the in-process SSH servers.

These hosts kill a command, with its process group, when its channel closes:
only a supervised command, in a session of its own, outlives a dropped
connection. The same behaviour against real OpenSSH is in
tests/integration/test_real_ssh.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_EOF, MSG_CHANNEL_SUCCESS
from asyncssh.packet import SSHPacketLogger

from orchestrator.errors import NotLeaderError, TransportError
from orchestrator.inventory import SSHSettings
from orchestrator.secrets import SecretStore
from orchestrator.transport import supervise
from orchestrator.transport.ssh import KEEPALIVE_COUNT_MAX, SSHPool
from orchestrator.transport.supervise import AGENT_NAME, chain, record_path, repeat_run_id
from tests.sshhosts import ADDRESS, SSHHosts

pytest_plugins = ["tests.conftest_ssh"]

RUN = "u20261201-120000-abc123/upgrade-computes.install.1"
RECORDS = Path(".orchestrator/runs/u20261201-120000-abc123")
# waits until the test lets it go (no timing assumptions); gives up after a
# minute or so, so that a failed test leaves nothing running
HOLD = (
    "echo $$ > pid; i=0; "
    "while [ ! -e release ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i + 1)); done"
)


class Sleeps:
    """A no-op policy sleep that counts the retries."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def running(pid: int) -> bool:
    """Alive and not a zombie (orphans here are reparented to an init that may not reap)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text.rpartition(")")[2].split()[0] not in ("Z", "X")


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll a condition on the host side: there is no event to wait on."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - the host's files and processes have no event
            await asyncio.sleep(0.01)


def read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


async def pid_of(path: Path) -> int:
    await until(lambda: read_pid(path) is not None)
    pid = read_pid(path)
    assert pid is not None
    return pid


def current_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def record_files(host_dir: Path) -> list[str]:
    directory = host_dir / RECORDS
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def command_lines() -> list[str]:
    """Every process's command line on this machine, as `ps` would show it."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return lines


def client_packets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str, int]]:
    """From now on, each SSH packet of a client channel: (channel, "sent" or
    "received", packet type), in the order asyncssh sent or read them."""
    seen: list[tuple[int, str, int]] = []
    sent, received = SSHPacketLogger.log_sent_packet, SSHPacketLogger.log_received_packet

    def log_sent(self: SSHPacketLogger, pkttype: int, *args: object, **kw: object) -> None:
        if isinstance(self, asyncssh.SSHClientChannel):
            seen.append((id(self), "sent", pkttype))
        sent(self, pkttype, *args, **kw)  # type: ignore[arg-type]

    def log_received(self: SSHPacketLogger, pkttype: int, *args: object, **kw: object) -> None:
        if isinstance(self, asyncssh.SSHClientChannel):
            seen.append((id(self), "received", pkttype))
        received(self, pkttype, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(SSHPacketLogger, "log_sent_packet", log_sent)
    monkeypatch.setattr(SSHPacketLogger, "log_received_packet", log_received)
    return seen


def assert_script_before_reply(seen: list[tuple[int, str, int]], *, agent: bool) -> None:
    """The first channel (the agent's exec, or a wrapper's) sent its first
    request (the script) before the exec request's reply came back; a
    wrapper's exec also its end of input (an agent reads more requests)."""
    first = seen[0][0]
    mine = [(way, kind) for chan, way, kind in seen if chan == first]
    reply = mine.index(("received", MSG_CHANNEL_SUCCESS))
    assert mine.index(("sent", MSG_CHANNEL_DATA)) < reply
    if agent:
        assert ("sent", MSG_CHANNEL_EOF) not in mine[: reply + 1]
    else:
        assert mine.index(("sent", MSG_CHANNEL_EOF)) < reply


# --- run ids ----------------------------------------------------------------------


def test_run_ids_become_safe_relative_paths() -> None:
    assert record_path(RUN) == (
        ".orchestrator/runs/u20261201-120000-abc123/upgrade-computes.install.1"
    )
    assert record_path("../etc/passwd") == ".orchestrator/runs/%2E./etc%2Fpasswd"
    assert record_path("u/.hidden") == ".orchestrator/runs/u/%2Ehidden"
    assert record_path("u/a b,c~2") == ".orchestrator/runs/u/a%20b%2Cc%7E2"
    assert record_path("u/a_b") != record_path("u/a b")  # escaping never collides
    for bad in ("no-step", "/step", "upgrade/"):
        with pytest.raises(ValueError, match="is not UPGRADE/STEP"):
            record_path(bad)


def test_repeats_of_one_command_share_a_chain() -> None:
    assert repeat_run_id(None, 3) is None
    assert repeat_run_id(RUN, 1) == RUN
    assert repeat_run_id(RUN, 2) == RUN + "~2"
    assert chain(RUN + "~2") == chain(RUN) == RUN
    assert chain("u/step~x") == "u/step~x"


def test_default_keepalives_find_a_silent_host_within_15_seconds() -> None:
    """asyncssh gives up at the (count + 1)-th silent interval. Fails on the old
    defaults: 15 s x (3 + 1) = 60 s."""
    assert SSHSettings().keepalive_interval * (KEEPALIVE_COUNT_MAX + 1) <= 15


# --- what comes back ----------------------------------------------------------------


async def test_exit_status_output_and_become_as_before(ssh_hosts: SSHHosts) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    lines: list[str] = []
    async with SSHPool(ssh_hosts.targets()) as pool:
        result = await pool.run(
            "host-1", "echo out; echo err >&2; exit 3", run_id=RUN, on_line=lines.append
        )
        killed = await pool.run("host-1", "echo before; kill -9 $$", run_id=RUN + "-kill")
        become = await pool.run(
            "host-1", "echo ${FAKE_SUDO:-no}; pwd; umask", become=True, run_id=RUN + "-sudo"
        )
        quiet = await pool.run("host-1", "true", run_id=RUN + "-quiet")
    assert (result.exit_status, result.timed_out, result.reason) == (3, False, None)
    assert sorted(result.output.splitlines()) == ["err", "out"]
    assert sorted(lines) == ["err", "out"]
    assert 0 <= result.duration < 5
    assert killed.exit_status is None and not killed.timed_out
    assert killed.output == "before"
    # sudo for the command only, in the login directory, with the login umask
    assert become.output.splitlines() == ["1", str(host_dir), f"{current_umask():04o}"]
    assert quiet.ok and quiet.output == ""
    assert stat.S_IMODE((host_dir / RECORDS).stat().st_mode) == 0o700
    assert not any(",in." in name for name in record_files(host_dir))  # scripts removed


@pytest.mark.parametrize("agent", [True, False], ids=["agent", "exec"])
async def test_the_script_follows_the_exec_request_without_waiting_for_its_reply(
    ssh_hosts: SSHHosts, monkeypatch: pytest.MonkeyPatch, agent: bool
) -> None:
    """The command starts one round trip sooner (issue 14): it used to wait
    for the exec request's reply before its script went. This also checks
    what `_Wrapper` and `AgentSession` assume of asyncssh: should a new release
    send the exec request later, the script would go after the reply, and
    this test says so."""
    seen = client_packets(monkeypatch)
    async with SSHPool(ssh_hosts.targets(), agents=agent) as pool:
        result = await pool.run("host-1", "echo started", run_id=RUN)
    assert result.ok and result.output == "started"
    assert_script_before_reply(seen, agent=agent)


async def test_the_script_is_on_no_command_line(ssh_hosts: SSHHosts) -> None:
    """Secrets off `ps` (issue 11): the text goes on stdin into a 0600 file."""
    value = "hunter2-" + os.urandom(4).hex()
    secrets = SecretStore.from_plan([("db", "env", "DB_PASS")], environ={"DB_PASS": value})
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets(), secrets) as pool:
        task = asyncio.create_task(
            pool.run("host-1", f"printf %s @@secret:db@@ > pw; {HOLD}", run_id=RUN, become=True)
        )
        await pid_of(host_dir / "pid")
        assert not [line for line in command_lines() if value in line]
        [script] = [p for p in (host_dir / RECORDS).iterdir() if ",in." in p.name]
        assert stat.S_IMODE(script.stat().st_mode) == 0o600
        assert value in script.read_text()
        (host_dir / "release").touch()
        result = await task
    assert result.ok
    assert (host_dir / "pw").read_text() == value
    assert not script.exists()  # removed when the command ended
    assert ssh_hosts.commands("host-1")
    assert not [c for c in ssh_hosts.commands("host-1") if value in c]


async def test_a_health_check_or_probe_with_a_secret_is_supervised_too(
    ssh_hosts: SSHHosts,
) -> None:
    """Commands without a run id (health checks, probes, drains, gates) that
    carry a secret take the supervised path, so the value is on no command
    line either; on main it was on the exec request's command line."""
    value = "hunter2-" + os.urandom(4).hex()
    secrets = SecretStore.from_plan([("db", "env", "DB_PASS")], environ={"DB_PASS": value})
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets(), secrets) as pool:
        result = await pool.run("host-1", "test @@secret:db@@ = @@secret:db@@ && echo fine")
        plain = await pool.run("host-1", "echo no secret here")
    assert (result.exit_status, result.output) == (0, "fine")
    assert plain.output == "no secret here"
    assert ssh_hosts.commands("host-1")
    assert not [c for c in ssh_hosts.commands("host-1") if value in c]
    assert "echo no secret here" in ssh_hosts.commands("host-1")  # the cheap path
    assert not [p for p in host_dir.rglob("*") if p.is_file() and value in p.read_text()]


# --- dropped and silent connections -------------------------------------------------


async def test_a_dropped_connection_does_not_stop_the_command(ssh_hosts: SSHHosts) -> None:
    """The defect: the connection drops, the command goes on (here the old code's
    server kills it with its channel: TransportError, no f). Now the pool
    reconnects, waits while it runs and returns its real exit status."""
    host_dir = ssh_hosts.host_dir("host-1")
    sleeps = Sleeps()
    async with SSHPool(ssh_hosts.targets(), policy_sleep=sleeps) as pool:
        task = asyncio.create_task(pool.run("host-1", f"{HOLD}; echo ran >> f; exit 7", run_id=RUN))
        pid = await pid_of(host_dir / "pid")
        ssh_hosts.drop("host-1")
        await until(lambda: ssh_hosts.accepted("host-1") == 2 or task.done())
        assert not task.done(), task.exception()  # reconnected, and waits while it runs
        assert running(pid)
        (host_dir / "release").touch()
        result = await task
    assert result.exit_status == 7
    assert (host_dir / "f").read_text() == "ran\n"  # once
    assert len(sleeps.delays) == 1  # one reattach


class Blackhole:
    """A TCP relay in front of a host that can go silent: a half-open connection.

    `freeze` stops relaying on every connection open now, in both directions,
    and keeps the sockets open, as a dead peer behind a live network would.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._frozen: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, ADDRESS, 0)
        return int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        for event in self._frozen:
            event.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(ADDRESS, self._port)
        self._writers += [writer, up_writer]
        frozen = asyncio.Event()
        self._frozen.append(frozen)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._copy(source, sink, frozen))
            self._tasks.add(task)

    async def _copy(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if frozen.is_set():
                    await asyncio.Event().wait()  # silent, forever
                sink.write(data)
                await sink.drain()


@pytest.fixture
async def blackhole(ssh_hosts: SSHHosts) -> AsyncIterator[tuple[Blackhole, int]]:
    relay = Blackhole(ssh_hosts.port("host-1"))
    port = await relay.start()
    yield relay, port
    await relay.close()


async def test_a_silent_connection_is_found_by_keepalives(
    ssh_hosts: SSHHosts, blackhole: tuple[Blackhole, int]
) -> None:
    """Half-open: nothing arrives any more, nothing says so. Keepalives find it."""
    relay, port = blackhole
    host_dir = ssh_hosts.host_dir("host-1")
    known = ssh_hosts.known_hosts_path
    line = known.read_text().splitlines()[0].replace(f":{ssh_hosts.port('host-1')} ", f":{port} ")
    known.write_text(known.read_text() + line + "\n")  # the relay presents the host's key
    target = ssh_hosts.target("host-1", port=port, keepalive_interval=0.2)
    async with SSHPool([target], policy_sleep=Sleeps()) as pool:
        task = asyncio.create_task(pool.run("host-1", f"{HOLD}; echo ran >> f; exit 6", run_id=RUN))
        await pid_of(host_dir / "pid")
        relay.freeze()
        await until(lambda: ssh_hosts.accepted("host-1") == 2 or task.done())
        assert not task.done(), task.exception()  # found dead, reconnected, waits
        (host_dir / "release").touch()
        result = await task
    assert result.exit_status == 6
    assert (host_dir / "f").read_text() == "ran\n"


async def test_a_host_that_stays_away_leaves_the_command_may_still_run(
    ssh_hosts: SSHHosts,
) -> None:
    """An undo must not start: the error says so. The same run id later, after
    a daemon restart say, returns the real result of that one run."""
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets(), policy_sleep=Sleeps()) as pool:
        task = asyncio.create_task(pool.run("host-1", f"{HOLD}; echo ran >> f; exit 5", run_id=RUN))
        await pid_of(host_dir / "pid")
        ssh_hosts.refuse("host-1")
        ssh_hosts.drop("host-1")
        with pytest.raises(TransportError) as caught:
            await task
    assert caught.value.may_still_run
    assert "may still be running on the host" in caught.value.reason
    await ssh_hosts.accept("host-1")
    (host_dir / "release").touch()
    async with SSHPool(ssh_hosts.targets()) as pool:
        result = await pool.run("host-1", "echo ran >> f; exit 0", run_id=RUN)
    assert result.exit_status == 5
    assert (host_dir / "f").read_text() == "ran\n"


async def test_a_connection_that_never_opened_did_not_run_it(ssh_hosts: SSHHosts) -> None:
    ssh_hosts.refuse("host-1")
    async with SSHPool(ssh_hosts.targets(), policy_sleep=Sleeps()) as pool:
        with pytest.raises(TransportError) as caught:
            await pool.run("host-1", "touch f", run_id=RUN)
    assert not caught.value.may_still_run
    assert ssh_hosts.commands("host-1") == []


# --- the record ---------------------------------------------------------------------


async def test_the_same_run_id_returns_the_recorded_result(ssh_hosts: SSHHosts) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets()) as pool:
        first = await pool.run("host-1", "echo ran >> f; echo first; exit 4", run_id=RUN)
        again = await pool.run("host-1", "echo ran >> f; echo second", run_id=RUN)
    async with SSHPool(ssh_hosts.targets()) as pool:  # a restarted daemon
        restarted = await pool.run("host-1", "echo ran >> f", run_id=RUN)
    assert first.exit_status == again.exit_status == restarted.exit_status == 4
    assert first.output == again.output == restarted.output == "first"
    assert (host_dir / "f").read_text() == "ran\n"


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@pytest.mark.parametrize(
    ("boot", "said"),
    [
        ("current", "ended without recording how the command ended"),
        ("other", "the host rebooted while the command ran"),
    ],
    ids=["pid-gone", "rebooted"],
)
async def test_a_record_whose_supervisor_died_is_reported_not_rerun(
    ssh_hosts: SSHHosts, boot: str, said: str
) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    child = await asyncio.create_subprocess_exec("true")
    await child.wait()  # its pid is gone now
    (host_dir / RECORDS).mkdir(parents=True)
    boot_id = _boot_id() if boot == "current" else "another-boot"
    (host_dir / (record_path(RUN) + ",pid")).write_text(f"{child.pid} {boot_id}\n")
    (host_dir / (record_path(RUN) + ",out")).write_text("half way\n")
    async with SSHPool(ssh_hosts.targets()) as pool:
        result = await pool.run("host-1", "touch f", run_id=RUN)
    assert result.exit_status is None and not result.timed_out
    assert result.reason is not None
    assert said in result.reason
    assert result.reason.startswith("the supervisor on host-1 died")
    assert result.output == "half way"
    assert not (host_dir / "f").exists()


async def test_timeout_kills_the_commands_process_group(ssh_hosts: SSHHosts) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    command = "echo $$ > pid; (sleep 30; touch late) & echo $! > child; echo started; wait"
    async with SSHPool(ssh_hosts.targets()) as pool:
        started = time.monotonic()
        result = await pool.run("host-1", command, timeout=0.5, run_id=RUN)
        elapsed = time.monotonic() - started
        pids = [int((host_dir / name).read_text()) for name in ("pid", "child")]
        await until(lambda: not any(running(pid) for pid in pids))
        again = await pool.run("host-1", "touch again", run_id=RUN)
    assert result.timed_out and result.exit_status is None
    assert result.output == "started"
    assert elapsed < 3, f"took {elapsed:.1f}s"
    assert again.timed_out  # recorded: not run again
    assert not (host_dir / "again").exists()


async def test_a_timed_out_command_run_with_sudo_is_killed(ssh_hosts: SSHHosts) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets()) as pool:
        result = await pool.run("host-1", HOLD, timeout=0.5, become=True, run_id=RUN)
    assert result.timed_out
    pid = int((host_dir / "pid").read_text())
    await until(lambda: not running(pid))


async def test_a_cancelled_command_is_killed(ssh_hosts: SSHHosts) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets()) as pool:
        task = asyncio.create_task(pool.run("host-1", f"{HOLD}; touch late", run_id=RUN))
        pid = await pid_of(host_dir / "pid")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: not running(pid))
        again = await pool.run("host-1", "touch again", run_id=RUN)
    assert again.exit_status is None
    assert again.reason == "killed: its run was cancelled"
    assert not (host_dir / "again").exists()
    assert not (host_dir / "late").exists()


# --- cleanup ----------------------------------------------------------------------


async def test_records_are_removed_once_the_engine_moved_on(ssh_hosts: SSHHosts) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    upgrade = supervise.upgrade_of(RUN)
    step = record_path(RUN).rpartition("/")[2]
    async with SSHPool(ssh_hosts.targets()) as pool:
        await pool.run("host-1", "echo one", run_id=RUN)
        assert {n.partition(",")[0] for n in record_files(host_dir)} == {step}
        # a repeat is the same chain: its record stays while the chain goes on
        await pool.run("host-1", "echo two", run_id=repeat_run_id(RUN, 2))
        assert {n.partition(",")[0] for n in record_files(host_dir)} == {step, step + "%7E2"}
        await pool.run("host-1", "echo three", run_id=f"{upgrade}/next.1")
        assert {n.partition(",")[0] for n in record_files(host_dir)} == {"next.1"}
        # an unfinished one stays
        task = asyncio.create_task(pool.run("host-1", HOLD, run_id=f"{upgrade}/held.1"))
        await pid_of(host_dir / "pid")
        assert await pool.forget_runs("host-1", upgrade) == 1
        assert {n.partition(",")[0] for n in record_files(host_dir)} == {"held.1"}
        (host_dir / "release").touch()
        assert (await task).ok
        assert await pool.forget_runs("host-1", upgrade) == 0
        assert await pool.forget_runs("host-1", "never-ran") == 0
    assert not (host_dir / RECORDS).exists()


async def test_benchmark_hosts_answer_sleep_and_a_removal_of_nothing_without_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`builtin_sleep` hosts (the benches' 200 on two cores) fork no shell for
    a supervised `sleep` nor for removing records that are not there; records
    that are there go through the real script."""
    shells: list[str] = []
    run_in_shell = SSHHosts._run

    async def counted(self: SSHHosts, host: Any, command: str, *args: Any) -> None:
        shells.append(command)
        await run_in_shell(self, host, command, *args)

    in_shell = SSHHosts._shell

    async def counted_shell(self: SSHHosts, host: Any, command: str, stdin: bytes) -> Any:
        shells.append(command)
        return await in_shell(self, host, command, stdin)

    monkeypatch.setattr(SSHHosts, "_run", counted)
    monkeypatch.setattr(SSHHosts, "_shell", counted_shell)
    upgrade = supervise.upgrade_of(RUN)
    async with SSHHosts(tmp_path / "hosts", 1, builtin_sleep=True) as hosts:
        host_dir = hosts.host_dir("host-1")
        async with SSHPool(hosts.targets()) as pool:
            assert (await pool.run("host-1", "sleep 0", run_id=RUN)).ok
            assert await pool.forget_runs("host-1", upgrade) == 0
            assert shells == []
            # both reached the host, the run through the agent (listed first)
            assert [AGENT_NAME in c for c in hosts.commands("host-1")] == [True, False, False]
            # a record of a command that did run in a shell: the script removes it
            assert (await pool.run("host-1", "echo real", run_id=f"{upgrade}/real.1")).ok
            assert record_files(host_dir)
            assert await pool.forget_runs("host-1", upgrade) == 0
    assert len(shells) == 2  # the wrapper of `echo real`, then the removal
    assert not (host_dir / RECORDS).exists()


async def test_release_after_the_hosts_work_removes_its_records_first(
    ssh_hosts: SSHHosts,
) -> None:
    """The engine's `release(host, forget=UPGRADE)`: the records go over the
    connection still open, then it closes; the end state's `forget_runs`
    then has nothing to ask the host."""
    host_dir = ssh_hosts.host_dir("host-1")
    upgrade = supervise.upgrade_of(RUN)
    async with SSHPool(ssh_hosts.targets()) as pool:
        await pool.run("host-1", "echo one", run_id=RUN)
        assert record_files(host_dir)
        pool.release("host-1", forget=upgrade)
        await until(lambda: ssh_hosts.open_connections("host-1") == 0)
        assert not (host_dir / RECORDS).exists()
        asked = len(ssh_hosts.commands("host-1"))
        assert await pool.forget_runs("host-1", upgrade) == 0
        assert len(ssh_hosts.commands("host-1")) == asked  # known clean: not asked
        assert ssh_hosts.accepted("host-1") == 1

        # a run of the upgrade since: the host is asked again
        await pool.run("host-1", "echo two", run_id=f"{upgrade}/next.1")
        assert await pool.forget_runs("host-1", upgrade) == 0
        assert len(ssh_hosts.commands("host-1")) == asked + 2
        assert not (host_dir / RECORDS).exists()


async def test_a_record_still_running_at_release_is_kept_and_asked_for_again(
    ssh_hosts: SSHHosts,
) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    upgrade = supervise.upgrade_of(RUN)
    async with SSHPool(ssh_hosts.targets()) as pool:
        task = asyncio.create_task(pool.run("host-1", HOLD, run_id=RUN))
        await pid_of(host_dir / "pid")
        pool.release("host-1", forget=upgrade)
        await until(lambda: "orchestrator-forget" in ssh_hosts.commands("host-1")[-1])
        assert ssh_hosts.open_connections("host-1") == 1  # the run still uses it
        (host_dir / "release").touch()
        assert (await task).ok
        await until(lambda: ssh_hosts.open_connections("host-1") == 0)
        assert record_files(host_dir)  # it ran on when the records were removed
        assert await pool.forget_runs("host-1", upgrade) == 0  # asked again
    assert not (host_dir / RECORDS).exists()


async def test_release_without_forget_or_while_not_leading_leaves_the_records(
    ssh_hosts: SSHHosts,
) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    upgrade = supervise.upgrade_of(RUN)

    def refuse() -> None:
        raise NotLeaderError("a standby now")

    async with SSHPool(ssh_hosts.targets()) as pool:
        await pool.run("host-1", "echo one", run_id=RUN)
        pool.release("host-1")
        await until(lambda: ssh_hosts.open_connections("host-1") == 0)
        await pool.run("host-1", "echo two", run_id=f"{upgrade}/next.1")
        pool.gate = refuse
        pool.release("host-1", forget=upgrade)
        await until(lambda: ssh_hosts.open_connections("host-1") == 0)
    assert not any("orchestrator-forget" in c for c in ssh_hosts.commands("host-1"))
    assert record_files(host_dir)


async def test_a_run_right_after_release_waits_for_the_records_removal(
    ssh_hosts: SSHHosts,
) -> None:
    """The removal takes the upgrade's directory when it is empty: a new run of
    the same upgrade on the host (its next phase) starts only after it."""
    upgrade = supervise.upgrade_of(RUN)
    async with SSHPool(ssh_hosts.targets()) as pool:
        await pool.run("host-1", "echo one", run_id=RUN)
        pool.release("host-1", forget=upgrade)
        result = await pool.run("host-1", "echo two", run_id=f"{upgrade}/next.1")
    assert result.ok and result.output == "two"
    commands = ssh_hosts.commands("host-1")
    assert "orchestrator-forget" in commands[1]
    assert supervise.WRAPPER_NAME in commands[2]
