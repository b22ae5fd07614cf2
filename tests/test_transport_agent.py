"""The agent channel of `orchestrator.transport.agent`: one exec per connection
runs every supervised run's wrapper, and every failure of it leaves the run to
its record, as a lost exec channel does (issue 14)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import asyncssh
import pytest

from orchestrator.errors import AgentLost, AgentRefused
from orchestrator.transport import supervise
from orchestrator.transport.agent import AgentSession
from orchestrator.transport.ssh import SSHPool
from orchestrator.transport.supervise import AGENT_MARK, AGENT_NAME, WRAPPER_NAME
from tests.sshhosts import MakeSSHHosts, SSHHosts
from tests.test_transport_supervised import (
    HOLD,
    RUN,
    Sleeps,
    pid_of,
    record_files,
    running,
    until,
)

pytest_plugins = ["tests.conftest_ssh"]

UPGRADE = supervise.upgrade_of(RUN)


def agents_on(host_dir: Path) -> list[int]:
    """PIDs of the agents running in this host's directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if AGENT_NAME.encode() in argv and cwd == str(host_dir):
            found.append(int(entry.name))
    return found


async def test_one_agent_runs_every_step_of_a_host(ssh_hosts: SSHHosts) -> None:
    """Five runs, one exec: the agent's. Each ends as it would have on its own exec."""
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets()) as pool:
        results = [
            await pool.run("host-1", f"echo step {n}; exit {n}", run_id=f"{UPGRADE}/s.{n}")
            for n in range(5)
        ]
        assert [r.exit_status for r in results] == [0, 1, 2, 3, 4]
        assert [r.output for r in results] == [f"step {n}" for n in range(5)]
        commands = ssh_hosts.commands("host-1")
        assert len(commands) == 1 and f" {AGENT_NAME} " in commands[0]
        # each run removed the record of the one before it, as with its own exec
        assert {name.partition(",")[0] for name in record_files(host_dir)} == {"s.4"}
        [first] = agents_on(host_dir)
    # these hosts SIGKILL it with its channel; once reaped, it is no agent
    await until(lambda: not Path(f"/proc/{first}").exists())
    async with SSHPool(ssh_hosts.targets()) as pool:
        assert (await pool.run("host-1", "true", run_id=f"{UPGRADE}/s.5")).ok
        [agent] = agents_on(host_dir)
        # the next agent removed the files of the one killed
        assert list((host_dir / ".orchestrator").glob("agent.*")) == [
            host_dir / f".orchestrator/agent.{agent}"
        ]


async def test_output_of_any_size_and_bytes_comes_back_whole(ssh_hosts: SSHHosts) -> None:
    """The reply is counted in bytes, not lines: output without a final newline,
    invalid UTF-8, and a tail larger than a channel window come back as with an exec."""
    script = (
        "printf 'no newline'; printf '\\377' ; head -c 300000 /dev/zero | tr '\\0' x; "
        f"echo '{AGENT_MARK} 9 9'"  # a reply header inside the output
    )
    async with SSHPool(ssh_hosts.targets()) as pool:
        big = await pool.run("host-1", script, run_id=f"{UPGRADE}/big.1")
        after = await pool.run("host-1", "echo next", run_id=f"{UPGRADE}/next.1")
    assert big.ok and after.ok and after.output == "next"
    assert big.output.endswith("x" * 1000 + f"{AGENT_MARK} 9 9")
    assert len(big.output.encode()) <= supervise.OUTPUT_TAIL_BYTES + 4


async def test_a_second_run_on_a_busy_agent_gets_its_own_exec(ssh_hosts: SSHHosts) -> None:
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets()) as pool:
        first = asyncio.create_task(pool.run("host-1", f"{HOLD}; echo one", run_id=RUN))
        await pid_of(host_dir / "pid")
        second = await pool.run("host-1", "echo two", run_id=f"{UPGRADE}/two.1")
        (host_dir / "release").touch()
        assert (await first).output == "one" and second.output == "two"
        kinds = [AGENT_NAME in c or WRAPPER_NAME in c for c in ssh_hosts.commands("host-1")]
        assert kinds == [True, True]
        assert f" {AGENT_NAME} " in ssh_hosts.commands("host-1")[0]


async def test_a_killed_agent_leaves_the_run_to_its_record(ssh_hosts: SSHHosts) -> None:
    """The agent dies under a run: the pool follows the run through its record
    (its real exit status, run once), and the next run starts a new agent."""
    host_dir = ssh_hosts.host_dir("host-1")
    sleeps = Sleeps()
    async with SSHPool(ssh_hosts.targets(), policy_sleep=sleeps) as pool:
        task = asyncio.create_task(pool.run("host-1", f"{HOLD}; echo ran >> f; exit 7", run_id=RUN))
        await pid_of(host_dir / "pid")
        [agent] = agents_on(host_dir)
        os.kill(agent, signal.SIGKILL)
        await ssh_hosts.wait_for_commands("host-1", 2)  # a new agent follows the run
        assert not task.done()
        (host_dir / "release").touch()
        result = await task
        assert (result.exit_status, (host_dir / "f").read_text()) == (7, "ran\n")
        assert len(sleeps.delays) == 1  # one reattach
        assert (await pool.run("host-1", "echo again", run_id=f"{UPGRADE}/again.1")).ok
        agent_execs = [c for c in ssh_hosts.commands("host-1") if f" {AGENT_NAME} " in c]
        assert len(agent_execs) == 2


async def test_a_cancelled_run_closes_its_agent_and_is_killed(ssh_hosts: SSHHosts) -> None:
    """A reply that comes after its caller gave up could be taken for the next
    run's: the agent is closed, and the next run has a new one."""
    host_dir = ssh_hosts.host_dir("host-1")
    async with SSHPool(ssh_hosts.targets()) as pool:
        task = asyncio.create_task(pool.run("host-1", f"{HOLD}; touch late", run_id=RUN))
        pid = await pid_of(host_dir / "pid")
        [agent] = agents_on(host_dir)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ended = "upgrade-computes.install.1,done.killed.cancel"
        await until(lambda: ended in record_files(host_dir))
        await until(lambda: agent not in agents_on(host_dir))
        assert not running(pid)
        result = await pool.run("host-1", "echo fresh", run_id=f"{UPGRADE}/fresh.1")
        assert result.output == "fresh"
        assert len(agents_on(host_dir)) == 1
    assert not (host_dir / "late").exists()


async def test_a_host_where_the_agent_cannot_work_gets_one_exec_per_run(
    make_ssh_hosts: MakeSSHHosts,
) -> None:
    """`head -c` missing: the agent says so before it reads anything, the run
    execs the wrapper, and that connection asks no agent again."""
    hosts = await make_ssh_hosts(1)
    hosts.bin.mkdir(parents=True, exist_ok=True)
    fake = hosts.bin / "head"
    fake.write_text("#!/bin/sh\necho 'head: no -c here' >&2\nexit 1\n")
    fake.chmod(0o755)
    async with SSHPool(hosts.targets()) as pool:
        for n in range(3):
            assert (await pool.run("host-1", f"echo {n}", run_id=f"{UPGRADE}/s.{n}")).ok
    commands = hosts.commands("host-1")
    assert [f" {AGENT_NAME} " in c for c in commands] == [True, False, False, False]
    assert all(f" {WRAPPER_NAME} " in c for c in commands[1:])


async def test_without_agents_every_run_execs_the_wrapper(ssh_hosts: SSHHosts) -> None:
    async with SSHPool(ssh_hosts.targets(), agents=False) as pool:
        for n in range(2):
            assert (await pool.run("host-1", f"echo {n}", run_id=f"{UPGRADE}/s.{n}")).ok
    assert [f" {WRAPPER_NAME} " in c for c in ssh_hosts.commands("host-1")] == [True, True]


# --- the reply parser, on its own ------------------------------------------------


class FakeChannel:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def session() -> tuple[AgentSession, FakeChannel]:
    agent = AgentSession(b"first")
    chan = FakeChannel()
    agent.channel = chan  # type: ignore[assignment]
    return agent, chan


def feed(agent: AgentSession, *chunks: bytes) -> None:
    for chunk in chunks:
        agent.data_received(chunk, None)


async def test_a_reply_split_anywhere_is_put_together() -> None:
    reply = f"{AGENT_MARK} 3 5\n".encode() + b"out" + b"err\nx"
    for cut in range(1, len(reply)):
        agent, chan = session()
        feed(agent, reply[:cut], reply[cut:])
        assert agent.reply.result() == (b"out", b"err\nx")
        assert not chan.closed


async def test_the_next_request_waits_for_its_own_reply() -> None:
    agent, _ = session()
    feed(agent, f"{AGENT_MARK} 1 0\na".encode())
    second = agent.send(b"second")
    assert not second.done()
    feed(agent, f"{AGENT_MARK} 0 2\nok".encode())
    assert second.result() == (b"", b"ok")


@pytest.mark.parametrize(
    "said",
    [b"garbage\n", f"{AGENT_MARK} x 1\n".encode(), f"{AGENT_MARK} 0 0\nmore".encode()],
    ids=["not-a-reply", "bad-size", "more-than-asked"],
)
async def test_anything_but_a_reply_closes_the_agent(said: bytes) -> None:
    agent, chan = session()
    feed(agent, said)
    with pytest.raises(AgentLost):
        agent.reply.result()
    assert chan.closed


async def test_a_refusal_and_a_lost_channel_fail_the_waiting_request() -> None:
    agent, _ = session()
    feed(agent, f"{AGENT_MARK} refused head -c does not work here\n".encode())
    with pytest.raises(AgentRefused, match="head -c"):
        agent.reply.result()
    agent, _ = session()
    agent.connection_lost(asyncssh.ConnectionLost("gone"))
    with pytest.raises(AgentLost, match="gone"):
        agent.reply.result()
