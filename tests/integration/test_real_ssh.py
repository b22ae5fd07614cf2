"""The SSH transport against real OpenSSH sshd: commands, files, host keys,
that a command over its timeout is really stopped on the host, and that a
supervised command outlives a dropped or silent connection and is reported
with its real exit status."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from asyncssh.constants import MSG_CHANNEL_OPEN

from orchestrator.errors import HostKeyError
from orchestrator.transport.ssh import SSHPool
from tests.integration.conftest import MakeSSHHosts
from tests.integration.servers import INSTALL_HINT
from tests.test_transport_supervised import (
    assert_script_before_reply,
    client_packets,
    command_lines,
)

pytestmark = [pytest.mark.integration]


def gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaped yet (this container's init may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def wait_gone(*pids: int, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not all(gone(pid) for pid in pids):  # noqa: ASYNC110 - no event for a pid's end
            await asyncio.sleep(0.05)


async def test_commands_run_as_the_host_with_verified_keys(real_sshd_hosts: MakeSSHHosts) -> None:
    hosts = await real_sshd_hosts(["host-1", "host-2"])
    async with SSHPool(hosts.targets()) as pool:
        one = await pool.run("host-1", "pwd; echo $HOST_NAME; echo oops >&2; exit 3")
        two = await pool.run("host-2", "pwd; echo $HOST_NAME")
        killed = await pool.run("host-1", "kill -9 $$")
    assert one.exit_status == 3
    assert one.output.splitlines() == [str(hosts.host_dir("host-1")), "host-1", "oops"]
    assert two.output.splitlines() == [str(hosts.host_dir("host-2")), "host-2"]
    assert killed.exit_status is None and not killed.timed_out
    log = hosts.log("host-1")
    assert "Accepted publickey for stack" in log
    assert "Starting session: command" in log


async def test_files_go_over_sftp_relative_to_the_host(real_sshd_hosts: MakeSSHHosts) -> None:
    hosts = await real_sshd_hosts(["host-1"])
    conf = hosts.host_dir("host-1") / "etc" / "app.conf"
    async with SSHPool(hosts.targets()) as pool:
        assert await pool.read_file("host-1", "etc/app.conf") is None
        await pool.write_file("host-1", "etc/app.conf", "[DEFAULT]\nx = 1\n")
        conf.chmod(0o640)
        await pool.write_file("host-1", "etc/app.conf", "[DEFAULT]\nx = 2\n")
        assert await pool.read_file("host-1", "etc/app.conf") == "[DEFAULT]\nx = 2\n"
        assert conf.stat().st_mode & 0o777 == 0o640  # replaced atomically, mode kept
        assert sorted(p.name for p in conf.parent.iterdir()) == ["app.conf"]
        await pool.remove_file("host-1", "etc/app.conf")
    assert not conf.exists()
    assert any("subsystem 'sftp'" in line for line in hosts.sessions("host-1"))


async def test_timeout_kills_the_command_and_its_children(real_sshd_hosts: MakeSSHHosts) -> None:
    """The child would sleep 30 s: the run ending timed out with only the
    first line, and the child gone, show that the timeout ended it, on a
    machine of any speed (a loaded one took 4.3 s to connect and give up)."""
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    command = (
        "echo $$ > pid; (sleep 30; touch late) & echo $! > child; echo started; wait; echo never"
    )
    async with SSHPool(hosts.targets()) as pool:
        started = time.monotonic()
        result = await pool.run("host-1", command, timeout=0.5)
        elapsed = time.monotonic() - started
        assert result.timed_out and result.exit_status is None
        assert result.output == "started"
        await wait_gone(
            int((directory / "pid").read_text()), int((directory / "child").read_text())
        )
        assert not (directory / "late").exists()
        assert (await pool.run("host-1", "echo still usable")).output == "still usable"
    print(f"timed-out command stopped; run() returned after {elapsed:.2f}s")


async def test_cancelled_command_is_killed(real_sshd_hosts: MakeSSHHosts) -> None:
    hosts = await real_sshd_hosts(["host-1"])
    pid_file = hosts.host_dir("host-1") / "pid"
    async with SSHPool(hosts.targets()) as pool:
        task = asyncio.create_task(pool.run("host-1", "echo $$ > pid; sleep 30; touch late"))
        async with asyncio.timeout(5):
            while not pid_file.exists() or not pid_file.read_text().strip():  # noqa: ASYNC110 - host writes it
                await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_gone(int(pid_file.read_text()))


async def test_timeout_kills_a_command_run_with_sudo(real_sshd_hosts: MakeSSHHosts) -> None:
    """The login user cannot signal a root command; the watchdog inside sudo can."""
    if shutil.which("sudo") is None:
        message = f"needs sudo; {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    if os.geteuid() != 0:
        pytest.skip("sudo -n needs a password for a non-root developer; CI runs as root")
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    async with SSHPool(hosts.targets(become="sudo")) as pool:
        who = await pool.run("host-1", "id -u; pwd", become=True)
        assert who.output.splitlines() == ["0", str(directory)], who.output
        result = await pool.run("host-1", "echo $$ > pid; sleep 30", timeout=0.5, become=True)
        assert result.timed_out
        await wait_gone(int((directory / "pid").read_text()))


async def test_changed_host_key_is_refused_before_login(real_sshd_hosts: MakeSSHHosts) -> None:
    hosts = await real_sshd_hosts(["host-1"])
    async with SSHPool(hosts.targets()) as pool:
        await pool.connect("host-1")
    await hosts.change_host_key("host-1")
    logins = hosts.log("host-1").count("Accepted publickey")
    async with SSHPool(hosts.targets()) as pool:
        with pytest.raises(HostKeyError, match="host key does not match known_hosts"):
            await pool.connect("host-1")
    assert hosts.log("host-1").count("Accepted publickey") == logins  # never authenticated


# --- supervised commands: a dropped or silent connection does not stop them --------

RUN = "u20261201-120000-abc123/upgrade-computes.install.1"
UPGRADE = RUN.partition("/")[0]
# waits until the test lets it go (no timing assumptions); gives up after a
# minute or so, so that a failed test leaves nothing running
HOLD = (
    "echo $$ > pid; i=0; "
    "while [ ! -e release ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i + 1)); done"
)


async def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - files and logs on the host have no event
            await asyncio.sleep(0.02)


async def test_supervised_command_reports_as_before(real_sshd_hosts: MakeSSHHosts) -> None:
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    token = "tok-" + os.urandom(4).hex()
    async with SSHPool(hosts.targets()) as pool:
        task = asyncio.create_task(
            pool.run("host-1", f": {token}; {HOLD}; pwd; echo oops >&2; exit 3", run_id=RUN)
        )
        await wait_for((directory / "pid").exists)
        assert not [line for line in command_lines() if token in line]
        (directory / "release").touch()
        result = await task
        again = await pool.run("host-1", "touch again", run_id=RUN)
    assert result.exit_status == 3
    assert result.output.splitlines() == [str(directory), "oops"]
    assert (again.exit_status, again.output) == (3, result.output)  # recorded, not re-run
    assert not (directory / "again").exists()


async def test_one_agent_serves_every_step_and_leaves_nothing(
    real_sshd_hosts: MakeSSHHosts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: a host's supervised steps go through one agent exec, each with
    its own record; when the connection closes, sshd ends the agent's input
    and the agent removes its files."""
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    seen = client_packets(monkeypatch)
    async with SSHPool(hosts.targets()) as pool:
        for n in range(4):
            result = await pool.run("host-1", f"echo {n} >&2; exit {n}", run_id=f"{UPGRADE}/s.{n}")
            assert (result.exit_status, result.output) == (n, str(n))
    assert len({chan for chan, way, kind in seen if (way, kind) == ("sent", MSG_CHANNEL_OPEN)}) == 1
    await wait_for(lambda: not list((directory / ".orchestrator").glob("agent.*")))


@pytest.mark.parametrize("agent", [True, False], ids=["agent", "exec"])
async def test_sshd_takes_a_script_sent_before_its_exec_reply(
    real_sshd_hosts: MakeSSHHosts, monkeypatch: pytest.MonkeyPatch, agent: bool
) -> None:
    """The script follows the exec request at once (issue 14), the agent's
    first request as the wrapper's own: sshd has started the command when it
    reads it, whatever the script's size."""
    hosts = await real_sshd_hosts(["host-1"])
    seen = client_packets(monkeypatch)
    padding = "#" + "x" * 199 + "\n"
    script = padding * 500 + "echo done"  # 100 KB: several packets, beyond one window
    async with SSHPool(hosts.targets(), agents=agent) as pool:
        result = await pool.run("host-1", script, run_id="u20261201-120000-abc123/big.1")
    assert result.ok and result.output == "done"
    assert_script_before_reply(seen, agent=agent)


async def test_supervised_command_outlives_its_killed_sshd_session(
    real_sshd_hosts: MakeSSHHosts,
) -> None:
    """Defect 6: sshd's session process dies (SIGKILL), the command goes on. The
    old code raised "may have run" at once while the command still ran; now the
    pool reconnects and returns exit 7 only once the command has ended."""
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    async with SSHPool(hosts.targets()) as pool:
        task = asyncio.create_task(
            pool.run("host-1", f"{HOLD}; echo done >> f; exit 7", run_id=RUN)
        )
        await wait_for((directory / "pid").exists)
        sessions = hosts.session_pids("host-1")
        assert sessions
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: hosts.logins("host-1") == 2 or task.done())
        assert not task.done(), task.exception()  # reconnected, and waits while it runs
        assert not gone(int((directory / "pid").read_text()))
        (directory / "release").touch()
        result = await task
        assert (directory / "f").read_text() == "done\n"  # it had ended, once
    assert result.exit_status == 7


async def test_half_open_connection_is_found_by_keepalives(
    real_sshd_hosts: MakeSSHHosts,
) -> None:
    """Defect 6, silently: the session process stops (SIGSTOP), the TCP
    connection stays up and nothing says it is dead. Keepalives (1 s here) find
    it; the pool reconnects on a new connection and returns the real status."""
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    stopped: list[int] = []
    try:
        async with SSHPool(hosts.targets(keepalive_interval=1.0)) as pool:
            task = asyncio.create_task(
                pool.run("host-1", f"{HOLD}; echo done >> f; exit 7", run_id=RUN)
            )
            await wait_for((directory / "pid").exists)
            stopped = hosts.session_pids("host-1")
            assert stopped
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            await wait_for(lambda: hosts.logins("host-1") == 2 or task.done())
            found_after = time.monotonic() - started
            assert not task.done(), task.exception()  # found dead, reconnected, waits
            assert not set(hosts.session_pids("host-1")) <= set(stopped)  # a new session
            (directory / "release").touch()
            result = await task
            assert (directory / "f").read_text() == "done\n"
        assert result.exit_status == 7
        print(f"silent connection replaced after {found_after:.1f}s (keepalive 1 s x 3)")
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGCONT)


async def test_supervised_timeout_and_cancel_kill_the_command(
    real_sshd_hosts: MakeSSHHosts,
) -> None:
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    command = "echo $$ > pid; (sleep 30; touch late) & echo $! > child; echo started; wait"
    async with SSHPool(hosts.targets()) as pool:
        result = await pool.run("host-1", command, timeout=0.5, run_id=RUN)
        assert result.timed_out and result.output == "started"
        await wait_gone(*(int((directory / name).read_text()) for name in ("pid", "child")))
        (directory / "pid").unlink()
        task = asyncio.create_task(pool.run("host-1", f"{HOLD}; touch late", run_id=RUN + "b"))
        await wait_for(
            lambda: (directory / "pid").exists() and bool((directory / "pid").read_text())
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_gone(int((directory / "pid").read_text()))
    assert not (directory / "late").exists()


async def test_supervised_sudo_command_is_killed_on_timeout(
    real_sshd_hosts: MakeSSHHosts,
) -> None:
    """sudo for the command only: the supervisor and its record stay the login
    user's; the kill of the root process group goes through sudo."""
    if shutil.which("sudo") is None or os.geteuid() != 0:
        pytest.skip("needs sudo -n without a password: root, as in CI")
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    async with SSHPool(hosts.targets(become="sudo")) as pool:
        who = await pool.run("host-1", "id -u; pwd", become=True, run_id=RUN)
        assert who.output.splitlines() == ["0", str(directory)], who.output
        result = await pool.run("host-1", HOLD, timeout=0.5, become=True, run_id=RUN + "b")
        assert result.timed_out
        await wait_gone(int((directory / "pid").read_text()))
