"""The SSH transport against real OpenSSH sshd: commands, files, host keys, and
above all that a command over its timeout is really stopped on the host."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from orchestrator.errors import HostKeyError
from orchestrator.transport.ssh import SSHPool
from tests.integration.conftest import MakeSSHHosts
from tests.integration.servers import INSTALL_HINT

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
    hosts = await real_sshd_hosts(["host-1"])
    directory = hosts.host_dir("host-1")
    command = (
        "echo $$ > pid; (sleep 2; touch late) & echo $! > child; echo started; wait; echo never"
    )
    async with SSHPool(hosts.targets()) as pool:
        started = time.monotonic()
        result = await pool.run("host-1", command, timeout=0.5)
        elapsed = time.monotonic() - started
        assert result.timed_out and result.exit_status is None
        assert result.output == "started"
        assert elapsed < 2.0, f"took {elapsed:.1f}s to give up"
        await wait_gone(
            int((directory / "pid").read_text()), int((directory / "child").read_text())
        )
        await asyncio.sleep(2.0)  # past the moment the child would have written
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
