"""SSHPool against real in-process SSH servers running real shell commands."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncssh
import pytest
from structlog.testing import capture_logs

from orchestrator.errors import HostKeyError, InputError, TransportError, UsageError
from orchestrator.secrets import SecretStore
from orchestrator.transport.slots import DEFAULT_MAX_CONNECTIONS, ConnectionLimit
from orchestrator.transport.ssh import MAX_OUTPUT_CHARS, MAX_OUTPUT_LINES, SSHPool
from tests.sshhosts import MakeSSHHosts, SSHHosts

# until tests/conftest.py lists it for every module
pytest_plugins = ["tests.conftest_ssh"]


class Sleeps:
    """A no-op policy sleep that records delays and can run a hook before returning."""

    def __init__(self, hook: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.delays: list[float] = []
        self._hook = hook

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self._hook is not None:
            await self._hook(len(self.delays))


async def wait_until_gone(pid: int, seconds: float = 5.0) -> None:
    """Poll: the OS offers no event for another session's process ending."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await asyncio.sleep(0.02)


# --- commands -----------------------------------------------------------------


async def test_exit_status_and_merged_output(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets()) as pool:
        result = await pool.run("host-1", "echo out; echo err >&2; exit 3")
        assert result.exit_status == 3
        assert not result.ok
        assert sorted(result.output.splitlines()) == ["err", "out"]
        assert not result.timed_out
        assert 0 <= result.duration < 5
        assert (await pool.run("host-1", "true")).ok


async def test_commands_run_in_the_host_directory(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets()) as pool:
        result = await pool.run("host-1", 'pwd; echo "$HOST_NAME $HOST_DIR"; echo hi > made')
    host_dir = ssh_hosts.host_dir("host-1")
    assert result.output.splitlines() == [str(host_dir), f"host-1 {host_dir}"]
    assert (host_dir / "made").read_text() == "hi\n"


async def test_killed_by_signal_has_no_exit_status(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets()) as pool:
        result = await pool.run("host-1", "echo before; kill -9 $$")
    assert result.exit_status is None
    assert not result.timed_out
    assert result.output == "before"


async def test_output_is_a_bounded_tail(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets()) as pool:
        many = await pool.run("host-1", "seq 1 5000")
        wide = await pool.run("host-1", "head -c 300000 /dev/zero | tr '\\0' x; echo; echo end")
    lines = many.output.splitlines()
    assert len(lines) == MAX_OUTPUT_LINES
    assert lines[-1] == "5000"
    assert lines[0] == str(5000 - MAX_OUTPUT_LINES + 1)
    assert len(wide.output) == MAX_OUTPUT_CHARS
    assert wide.output == "x" * (MAX_OUTPUT_CHARS - 4) + "\nend"


async def test_on_line_streams_lines_as_they_come(ssh_hosts: SSHHosts) -> None:
    seen: list[tuple[float, str]] = []
    async with SSHPool(ssh_hosts.targets()) as pool:
        result = await pool.run(
            "host-1",
            "echo first; sleep 0.4; printf 'second\\nthird'",
            on_line=lambda line: seen.append((time.monotonic(), line)),
        )
    assert [line for _, line in seen] == ["first", "second", "third"]
    assert seen[1][0] - seen[0][0] >= 0.3  # the first line came before the command ended
    assert result.output == "first\nsecond\nthird"


async def test_one_connection_serves_many_commands(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets()) as pool:
        await pool.connect("host-1")
        for i in range(10):
            assert (await pool.run("host-1", f"echo {i}")).output == str(i)
        await pool.write_file("host-1", "f", "x")
        assert await pool.read_file("host-1", "f") == "x"
    assert ssh_hosts.accepted("host-1") == 1


async def test_concurrent_commands_share_the_connection(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets()) as pool:
        started = time.monotonic()
        results = await asyncio.gather(
            *(pool.run("host-1", f"sleep 0.5; echo {i}") for i in range(6))
        )
        elapsed = time.monotonic() - started
    assert [r.output for r in results] == [str(i) for i in range(6)]
    assert elapsed < 2.5  # they ran side by side, not one after another
    assert ssh_hosts.accepted("host-1") == 1


async def test_timeout_kills_the_command_and_returns_quickly(ssh_hosts: SSHHosts) -> None:
    pid_file = ssh_hosts.host_dir("host-1") / "pid"
    async with SSHPool(ssh_hosts.targets()) as pool:
        started = time.monotonic()
        result = await pool.run("host-1", "echo $$ > pid; echo started; exec sleep 30", timeout=0.5)
        assert time.monotonic() - started < 3
        assert result.timed_out
        assert result.exit_status is None
        assert result.output == "started"
        await wait_until_gone(int(pid_file.read_text()))
        assert (await pool.run("host-1", "echo still usable")).output == "still usable"
    assert ssh_hosts.accepted("host-1") == 1


async def test_become_wraps_in_sudo_only_when_the_host_says_so(
    make_ssh_hosts: MakeSSHHosts,
) -> None:
    hosts = await make_ssh_hosts(["sudo-host", "plain-host"])
    targets = (hosts.target("sudo-host"), hosts.target("plain-host", become="none"))
    async with SSHPool(targets) as pool:
        wrapped = await pool.run("sudo-host", "echo ${FAKE_SUDO:-no}; echo 'a b'", become=True)
        plain = await pool.run("plain-host", "echo ${FAKE_SUDO:-no}", become=True)
        normal = await pool.run("sudo-host", "echo ${FAKE_SUDO:-no}")
    assert wrapped.output == "1\na b"
    assert hosts.commands("sudo-host")[0] == (
        "sudo -n sh -c 'echo ${FAKE_SUDO:-no}; echo '\"'\"'a b'\"'\"''"
    )
    assert plain.output == "no"
    assert hosts.commands("plain-host") == ["echo ${FAKE_SUDO:-no}"]
    assert normal.output == "no"


# --- connecting: host keys and retries ------------------------------------------


async def test_changed_host_key_is_refused_without_retry(ssh_hosts: SSHHosts) -> None:
    ssh_hosts.change_host_key("host-1")
    sleeps = Sleeps()
    async with SSHPool(ssh_hosts.targets(), policy_sleep=sleeps) as pool:
        with pytest.raises(HostKeyError) as caught:
            await pool.run("host-1", "echo never")
    message = str(caught.value)
    assert message.startswith("host-1: ")
    assert f"127.0.0.1:{ssh_hosts.port('host-1')}" in message
    assert "host key does not match known_hosts" in message
    assert sleeps.delays == []
    assert ssh_hosts.commands("host-1") == []


async def test_host_key_check_can_be_turned_off_for_a_lab(ssh_hosts: SSHHosts) -> None:
    ssh_hosts.change_host_key("host-1")
    async with SSHPool(ssh_hosts.targets(verify_host_keys=False)) as pool:
        assert (await pool.run("host-1", "echo lab")).output == "lab"


async def test_missing_known_hosts_file_is_a_host_key_error(
    ssh_hosts: SSHHosts, tmp_path: Path
) -> None:
    sleeps = Sleeps()
    targets = ssh_hosts.targets(known_hosts=str(tmp_path / "absent"))
    async with SSHPool(targets, policy_sleep=sleeps) as pool:
        with pytest.raises(HostKeyError, match="cannot read known_hosts"):
            await pool.connect("host-1")
    assert sleeps.delays == []


async def test_wrong_client_key_fails_without_retry(ssh_hosts: SSHHosts, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other))
    sleeps = Sleeps()
    async with SSHPool(ssh_hosts.targets(key=str(other)), policy_sleep=sleeps) as pool:
        with pytest.raises(TransportError, match=r"authentication as '.*' failed"):
            await pool.connect("host-1")
    assert sleeps.delays == []


async def test_refused_connection_is_retried_then_fails(ssh_hosts: SSHHosts) -> None:
    ssh_hosts.refuse("host-1")
    sleeps = Sleeps()
    async with SSHPool(ssh_hosts.targets(), policy_sleep=sleeps) as pool:
        with pytest.raises(TransportError) as caught:
            await pool.run("host-1", "echo never")
    assert not isinstance(caught.value, HostKeyError)
    assert len(sleeps.delays) == 4
    assert "gave up after 5 attempts" in str(caught.value)
    assert f"127.0.0.1:{ssh_hosts.port('host-1')}" in str(caught.value)


async def test_host_that_comes_back_during_retries_is_reached(ssh_hosts: SSHHosts) -> None:
    async def come_back(retry: int) -> None:
        if retry == 2:
            await ssh_hosts.accept("host-1")

    ssh_hosts.refuse("host-1")
    sleeps = Sleeps(come_back)
    async with SSHPool(ssh_hosts.targets(), policy_sleep=sleeps) as pool:
        assert (await pool.run("host-1", "echo back")).output == "back"
    assert len(sleeps.delays) == 2
    assert ssh_hosts.accepted("host-1") == 1


async def test_connection_dropped_mid_command_is_not_retried_and_then_replaced(
    ssh_hosts: SSHHosts,
) -> None:
    sleeps = Sleeps()
    pids: list[int] = []
    started = asyncio.Event()

    def on_line(line: str) -> None:
        pids.append(int(line))
        started.set()

    command = "echo $$; sleep 5; echo finished > done"
    async with SSHPool(ssh_hosts.targets(), policy_sleep=sleeps) as pool:
        running = asyncio.create_task(pool.run("host-1", command, on_line=on_line))
        await started.wait()
        ssh_hosts.drop("host-1")
        with pytest.raises(
            TransportError, match=r"connection lost during 'echo .*may have run"
        ) as e:
            await running
        assert e.value.may_still_run  # on OpenSSH it would go on: see test_transport_supervised
        assert ssh_hosts.commands("host-1") == [command]
        assert (await pool.run("host-1", "echo reconnected")).output == "reconnected"
    assert ssh_hosts.accepted("host-1") == 2
    assert sleeps.delays == []
    await wait_until_gone(pids[0])  # the server killed the command with its connection
    assert not (ssh_hosts.host_dir("host-1") / "done").exists()


# --- files ------------------------------------------------------------------------


async def test_read_write_remove_files(ssh_hosts: SSHHosts) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets()) as pool:
        assert await pool.read_file("host-1", "etc/nova/nova.conf") is None
        await pool.write_file("host-1", "/etc/nova/nova.conf", "[DEFAULT]\ndebug = true\n")
        assert (host_dir / "etc/nova/nova.conf").read_text() == "[DEFAULT]\ndebug = true\n"
        assert await pool.read_file("host-1", "etc/nova/nova.conf") == "[DEFAULT]\ndebug = true\n"
        await pool.write_file("host-1", "unicode.txt", "héllo ✓")
        assert (host_dir / "unicode.txt").read_text(encoding="utf-8") == "héllo ✓"
        await pool.remove_file("host-1", "etc/nova/nova.conf")
        assert not (host_dir / "etc/nova/nova.conf").exists()
        await pool.remove_file("host-1", "etc/nova/nova.conf")  # already gone: fine
        assert await pool.read_file("host-1", "/etc/nova/nova.conf") is None


async def test_write_replaces_the_file_atomically_and_keeps_its_mode(ssh_hosts: SSHHosts) -> None:
    path = ssh_hosts.host_dir("host-1") / "etc" / "app.conf"
    path.parent.mkdir()
    path.write_text("old\n")
    path.chmod(0o640)
    before = path.stat().st_ino
    async with SSHPool(ssh_hosts.targets()) as pool:
        await pool.write_file("host-1", "etc/app.conf", "new\n")
    assert path.read_text() == "new\n"
    assert path.stat().st_ino != before  # a new file renamed over the old, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["app.conf"]  # no temporary left


async def test_file_errors_other_than_absence_are_reported(ssh_hosts: SSHHosts) -> None:
    (ssh_hosts.host_dir("host-1") / "adir").mkdir()
    (ssh_hosts.host_dir("host-1") / "latin1.conf").write_bytes(b"caf\xe9\n")
    async with SSHPool(ssh_hosts.targets()) as pool:
        with pytest.raises(TransportError, match="sftp: cannot write adir"):
            await pool.write_file("host-1", "adir", "text")
        with pytest.raises(TransportError, match=r"sftp: latin1\.conf is not UTF-8 text"):
            await pool.read_file("host-1", "latin1.conf")


# --- secrets ------------------------------------------------------------------------


async def test_secrets_reach_the_host_but_never_the_output_or_logs(ssh_hosts: SSHHosts) -> None:
    value = "it's a s3cret"
    secrets = SecretStore.from_plan([("db", "env", "DB_PASS")], environ={"DB_PASS": value})
    lines: list[str] = []
    with capture_logs() as logs:
        async with SSHPool(ssh_hosts.targets(), secrets) as pool:
            result = await pool.run(
                "host-1",
                "printf %s @@secret:db@@ > pw; echo pw=@@secret:db@@; echo done",
                on_line=lines.append,
                become=True,
            )
    assert (ssh_hosts.host_dir("host-1") / "pw").read_text() == value
    assert result.output == "pw=***\ndone"
    assert lines == ["pw=***", "done"]
    # issue 11: a command holding a secret is sent on stdin, never on a command line
    assert ssh_hosts.commands("host-1")
    assert not [c for c in ssh_hosts.commands("host-1") if "s3cret" in c]
    assert logs
    assert all(value not in str(entry) for entry in logs)
    started = next(entry for entry in logs if entry["event"] == "command started")
    assert "@@secret:db@@" in started["command"]
    assert started["command"].startswith("sudo -n sh -c ")
    assert started["host"] == "host-1"


async def test_error_messages_are_redacted(ssh_hosts: SSHHosts) -> None:
    secrets = SecretStore.from_plan([("pw", "env", "PW")], environ={"PW": "hunter22"})
    async with SSHPool(ssh_hosts.targets(), secrets) as pool:
        running = asyncio.create_task(pool.run("host-1", "sleep 5 # hunter22"))
        await ssh_hosts.wait_for_commands("host-1")
        ssh_hosts.drop("host-1")
        with pytest.raises(TransportError) as caught:
            await running
    assert "hunter22" not in str(caught.value)
    assert "***" in str(caught.value)


async def test_undeclared_secret_is_refused_before_anything_is_sent(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets()) as pool:
        with pytest.raises(InputError, match="secret 'ghost' is used but not declared"):
            await pool.run("host-1", "echo @@secret:ghost@@")
    assert ssh_hosts.commands("host-1") == []
    assert ssh_hosts.accepted("host-1") == 0


@pytest.mark.parametrize("ssh_hosts", [3], indirect=True)
async def test_each_host_is_its_own_machine(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets()) as pool:
        results = await asyncio.gather(*(pool.run(n, "echo $HOST_NAME") for n in ssh_hosts.names))
    assert [r.output for r in results] == ["host-1", "host-2", "host-3"]
    assert [ssh_hosts.accepted(n) for n in ssh_hosts.names] == [1, 1, 1]


# --- UNIX sockets on hosts (the HAProxy runtime API) ------------------------------


async def test_unix_request_talks_to_a_socket_on_the_host(ssh_hosts: SSHHosts) -> None:
    requests: list[str] = []

    async def runtime_api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.read()).decode()  # until the client's end of input
        requests.append(request)
        writer.write(f"answer to {request.strip()}\nsecret=hunter22\n".encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    socket_path = ssh_hosts.host_dir("host-1") / "hap.sock"
    server = await asyncio.start_unix_server(runtime_api, path=str(socket_path))
    secrets = SecretStore.from_plan([("pw", "env", "PW")], environ={"PW": "hunter22"})
    try:
        async with SSHPool(ssh_hosts.targets(), secrets) as pool:
            reply = await pool.unix_request("host-1", "/hap.sock", "show stat")
            with pytest.raises(TransportError, match=r"cannot open socket /absent\.sock"):
                await pool.unix_request("host-1", "/absent.sock", "show stat")
            assert (await pool.run("host-1", "echo same connection")).ok
    finally:
        server.close()
        await server.wait_closed()
    assert requests == ["show stat\n"]
    assert reply == "answer to show stat\nsecret=***\n"
    assert ssh_hosts.accepted("host-1") == 1


async def test_unix_request_that_gets_no_reply_times_out(ssh_hosts: SSHHosts) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(
        silent, path=str(ssh_hosts.host_dir("host-1") / "mute.sock")
    )
    try:
        async with SSHPool(ssh_hosts.targets()) as pool:
            with pytest.raises(TransportError, match=r"no reply within 0\.3 s"):
                await pool.unix_request("host-1", "mute.sock", "show stat", timeout=0.3)
    finally:
        release.set()
        server.close()
        await server.wait_closed()


# --- bounded connections -----------------------------------------------------------

# waits until the test lets it go (no timing assumptions), or gives up after a minute
HOLD = "i=0; while [ ! -e go ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i + 1)); done; echo held"


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the servers' side to catch up; the test's timeout bounds it."""
    while not condition():  # noqa: ASYNC110 - the servers' connection counts have no event
        await asyncio.sleep(0.005)


class Peak:
    """The most connections the hosts held open at once, looked at every loop turn."""

    def __init__(self, hosts: SSHHosts) -> None:
        self._hosts = hosts
        self.most = 0
        self._task: asyncio.Task[None] | None = None

    def now(self) -> int:
        return sum(self._hosts.open_connections(name) for name in self._hosts.names)

    async def __aenter__(self) -> Peak:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self) -> None:
        while True:
            self.most = max(self.most, self.now())
            await asyncio.sleep(0)


def test_max_connections_must_be_a_whole_number_of_at_least_one() -> None:
    assert ConnectionLimit().max_connections == DEFAULT_MAX_CONNECTIONS == 256
    for bad in (0, -1, 2.5, "8", True, None):
        with pytest.raises(UsageError, match="max_connections must be a whole number"):
            ConnectionLimit(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("cap", [1, 3])
@pytest.mark.parametrize("ssh_hosts", [6], indirect=True)
async def test_never_more_connections_open_than_the_cap(ssh_hosts: SSHHosts, cap: int) -> None:
    """Many callers over many hosts at once, commands, supervised runs and files
    among them: the servers never see more than `cap` connections, and at a
    cap of 1 nobody waits forever."""
    limit = ConnectionLimit(cap)

    async def work(pool: SSHPool, i: int) -> str:
        host = ssh_hosts.names[i % len(ssh_hosts.names)]
        if i % 3 == 0:
            await pool.write_file(host, f"f{i}", str(i))
            return await pool.read_file(host, f"f{i}") or ""
        if i % 3 == 1:
            return (await pool.run(host, f"echo {i}", run_id=f"u1/s{i}.1")).output
        return (await pool.run(host, f"echo {i}")).output

    async with SSHPool(ssh_hosts.targets(), limit=limit) as pool, Peak(ssh_hosts) as peak:
        outputs = await asyncio.gather(*(work(pool, i) for i in range(36)))
    assert outputs == [str(i) for i in range(36)]
    assert peak.most == cap  # reached, never passed
    assert sum(ssh_hosts.accepted(name) for name in ssh_hosts.names) > cap  # places changed hands
    assert limit.open == 0


@pytest.mark.parametrize("ssh_hosts", [3], indirect=True)
async def test_the_least_recently_used_idle_connection_is_closed_first(
    ssh_hosts: SSHHosts,
) -> None:
    limit = ConnectionLimit(2)
    async with SSHPool(ssh_hosts.targets(), limit=limit) as pool:
        await pool.run("host-1", "true")
        await pool.run("host-2", "true")
        await pool.run("host-1", "true")  # host-2's is now the least recently used
        assert (limit.open, limit.idle) == (2, 2)
        assert (await pool.run("host-3", "echo three")).output == "three"
        await until(lambda: ssh_hosts.open_connections("host-2") == 0)
        assert ssh_hosts.open_connections("host-1") == 1
        assert ssh_hosts.open_connections("host-3") == 1
        assert (await pool.run("host-1", "true")).ok
        assert ssh_hosts.accepted("host-1") == 1  # kept all along
    assert limit.open == 0


@pytest.mark.parametrize("ssh_hosts", [3], indirect=True)
async def test_a_connection_in_use_is_never_closed_for_another_host(ssh_hosts: SSHHosts) -> None:
    """At a cap of 1, a running command keeps its connection; the next host
    waits for it to end, then takes its place."""
    limit = ConnectionLimit(1)
    async with SSHPool(ssh_hosts.targets(), limit=limit) as pool:
        held = asyncio.create_task(pool.run("host-1", HOLD))
        await ssh_hosts.wait_for_commands("host-1")
        second = asyncio.create_task(pool.run("host-2", "echo two"))
        third = asyncio.create_task(pool.read_file("host-3", "absent"))
        await until(lambda: limit.waiting == 2)
        assert ssh_hosts.accepted("host-2") == ssh_hosts.accepted("host-3") == 0
        assert ssh_hosts.open_connections("host-1") == 1
        (ssh_hosts.host_dir("host-1") / "go").touch()
        first = await held
        assert (await second).output == "two"
        assert await third is None
    assert first.ok and first.output == "held"
    assert ssh_hosts.accepted("host-2") == 1  # first come, first served


@pytest.mark.parametrize("ssh_hosts", [2], indirect=True)
async def test_a_forwarded_socket_in_use_keeps_its_connection(ssh_hosts: SSHHosts) -> None:
    asked, answer = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        asked.set()
        await answer.wait()
        writer.write(b"stat\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(
        slow, path=str(ssh_hosts.host_dir("host-1") / "hap.sock")
    )
    limit = ConnectionLimit(1)
    try:
        async with SSHPool(ssh_hosts.targets(), limit=limit) as pool:
            request = asyncio.create_task(pool.unix_request("host-1", "/hap.sock", "show stat"))
            await asked.wait()
            other = asyncio.create_task(pool.run("host-2", "echo two"))
            await until(lambda: limit.waiting == 1)
            assert ssh_hosts.accepted("host-2") == 0
            answer.set()
            assert await request == "stat\n"
            assert (await other).output == "two"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("ssh_hosts", [2], indirect=True)
async def test_a_followed_run_whose_connection_dropped_reconnects_within_the_cap(
    ssh_hosts: SSHHosts,
) -> None:
    """At a cap of 1: the supervised run's connection drops while another host
    waits for a place; the other host takes it, then the run reattaches and
    returns its real end."""
    limit = ConnectionLimit(1)
    async with SSHPool(ssh_hosts.targets(), policy_sleep=Sleeps(), limit=limit) as pool:
        run = asyncio.create_task(pool.run("host-1", f"{HOLD}; exit 4", run_id="u1/s.1"))
        await ssh_hosts.wait_for_commands("host-1")
        other = asyncio.create_task(pool.run("host-2", "echo two"))
        await until(lambda: limit.waiting == 1)
        ssh_hosts.drop("host-1")
        assert (await other).output == "two"
        await until(lambda: ssh_hosts.accepted("host-1") == 2)  # reattached
        (ssh_hosts.host_dir("host-1") / "go").touch()
        result = await run
    assert result.exit_status == 4
    assert result.output == "held"


@pytest.mark.parametrize("ssh_hosts", [2], indirect=True)
async def test_a_host_that_is_down_gives_its_place_back_between_attempts(
    ssh_hosts: SSHHosts,
) -> None:
    answers: list[str] = []

    async def meanwhile(attempt: int) -> None:
        if attempt == 1:  # host-2 waits between attempts: host-1 can connect
            answers.append((await pool.run("host-1", "echo one")).output)
            await ssh_hosts.accept("host-2")

    limit = ConnectionLimit(1)
    ssh_hosts.refuse("host-2")
    async with SSHPool(ssh_hosts.targets(), policy_sleep=Sleeps(meanwhile), limit=limit) as pool:
        assert (await pool.run("host-2", "echo two")).output == "two"
    assert answers == ["one"]


async def test_release_closes_an_idle_connection_at_once(ssh_hosts: SSHHosts) -> None:
    limit = ConnectionLimit(4)
    async with SSHPool(ssh_hosts.targets(), limit=limit) as pool:
        await pool.run("host-1", "true")
        pool.release("host-1")
        await until(lambda: ssh_hosts.open_connections("host-1") == 0)
        assert limit.open == 0
        assert (await pool.run("host-1", "echo again")).output == "again"
        assert ssh_hosts.accepted("host-1") == 2
        pool.release("absent-or-closed")  # nothing to do


async def test_release_of_a_busy_connection_closes_it_after_its_last_use(
    ssh_hosts: SSHHosts,
) -> None:
    limit = ConnectionLimit(4)
    go = ssh_hosts.host_dir("host-1") / "go"
    async with SSHPool(ssh_hosts.targets(), limit=limit) as pool:
        held = asyncio.create_task(pool.run("host-1", HOLD))
        await ssh_hosts.wait_for_commands("host-1")
        pool.release("host-1")
        assert ssh_hosts.open_connections("host-1") == 1  # never under its user
        go.touch()
        assert (await held).output == "held"
        await until(lambda: ssh_hosts.open_connections("host-1") == 0)
        assert limit.open == 0

        # a new use before the last one ended keeps it open
        go.unlink()
        held = asyncio.create_task(pool.run("host-1", HOLD))
        await ssh_hosts.wait_for_commands("host-1", 2)
        pool.release("host-1")
        assert (await pool.run("host-1", "echo wanted again")).ok
        go.touch()
        await held
        assert (limit.open, limit.idle) == (1, 1)
        assert ssh_hosts.accepted("host-1") == 2


async def test_a_cancelled_waiter_passes_its_place_on() -> None:
    """Pure bookkeeping: a waiter handed a place and cancelled before it ran
    must not take the place with it."""
    limit = ConnectionLimit(1)
    await limit.take()
    first = asyncio.create_task(limit.take())
    second = asyncio.create_task(limit.take())
    await asyncio.sleep(0)  # both queue up
    assert limit.waiting == 2
    limit.give()  # to the first ...
    first.cancel()  # ... which is cancelled before it could use it
    await second
    assert (limit.open, limit.waiting) == (1, 0)
    waiting = asyncio.create_task(limit.take())
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while it waits: it leaves the queue
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert limit.waiting == 0
    limit.give()
    assert limit.open == 0
