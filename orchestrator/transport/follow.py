"""Following a supervised run from the orchestrator's side (docs/transport.md).

`Follower` runs the wrapper of `supervise` over a connection of the pool
(leased for each exec: never closed under a run being followed), and after
a dropped or silent connection reconnects and runs it again with the same
record, under `retry.reattach_policy`, until the supervisor reports
how the run ended. It also kills a run (timeout, cancellation) by a second
exec. `SSHPool` owns one and turns what it reports into a `CommandResult`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Protocol

import asyncssh
import structlog

from orchestrator.errors import AgentLost, TransportError
from orchestrator.model import HostTarget
from orchestrator.retry import Sleep, first_then, lost_a_running_command, reattach_policy
from orchestrator.transport import supervise
from orchestrator.transport.agent import Agents
from orchestrator.transport.supervise import Ending

# after a kill, how long to wait for the command's end to be confirmed
KILL_GRACE = 5.0

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)

# the pool's connection to a host, held open until the block ends
Lease = Callable[[HostTarget], AbstractAsyncContextManager[asyncssh.SSHClientConnection]]


class MakeError(Protocol):
    """The pool's `TransportError` factory: it redacts secrets from the reason."""

    def __call__(
        self, host: str, reason: str, *, may_still_run: bool = False
    ) -> TransportError: ...


def describe(exc: BaseException) -> str:
    """What an asyncssh or OS error says, for a message."""
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    return str(exc) or type(exc).__name__


class Run:
    """One supervised run while the pool follows it."""

    __slots__ = (
        "attempts",
        "command",
        "forget",
        "record",
        "script",
        "sent",
        "shown",
        "size",
        "sudo",
    )

    def __init__(self, record: str, shown: str, script: str, sudo: bool) -> None:
        self.record, self.shown, self.script, self.sudo = record, shown, script, sudo
        self.size = len(script.encode())
        self.command = ""
        self.forget: tuple[str, ...] = ()  # records to remove with its start
        # the wrapper may have reached the host: from then on, losing sight of
        # the run means it may still run, and a cancellation must kill it
        self.sent = False
        self.attempts = 0


class _Wrapper(asyncssh.SSHClientSession[str]):
    """One exec of the wrapper: its script on stdin, what it wrote to each
    stream, and its channel's end.

    A session of asyncssh's own rather than a process: two streams read to
    their end took two tasks and a stream reader each per exec (at 200 hosts,
    0.31 -> 0.26 ms of the orchestrator's CPU per exec).

    The script follows the exec request at once, without waiting for its
    reply: SSH keeps a channel's messages in order, so the server has started
    the command when the script reaches it. asyncssh calls `connection_made`
    and then, in the same step, sends the exec request and waits for the
    reply among the channel's request waiters; the script is sent in the next
    callback of the loop only if that wait is there, else (another asyncssh)
    once `create_session` returns. Waiting for the reply first kept each
    command from starting for one more round trip: at 50 hosts at once, 3 to
    5 ms a step."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.sent = False  # the script and its end went with the exec request
        self.output: list[str] = []
        self.errors: list[str] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, chan: asyncssh.SSHClientChannel[str]) -> None:
        asyncio.get_running_loop().call_soon(self._follow_the_request, chan)

    def _follow_the_request(self, chan: asyncssh.SSHClientChannel[str]) -> None:
        if self.sent or chan.is_closing() or not getattr(chan, "_request_waiters", None):
            return
        self.send(chan)

    def send(self, chan: asyncssh.SSHClientChannel[str]) -> None:
        if not self.sent:
            self.sent = True
            chan.write(self.script)
            chan.write_eof()

    def data_received(self, data: str, datatype: asyncssh.DataType) -> None:
        (self.errors if datatype == asyncssh.EXTENDED_DATA_STDERR else self.output).append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # the channel closed: after the exit status and every byte, or lost
        # with its connection (the host's record then tells how it ended)
        if not self.closed.done():
            self.closed.set_result(None)


class Follower:
    """Starts, follows and kills supervised runs over the pool's connections."""

    def __init__(
        self,
        lease: Lease,
        error: MakeError,
        redact: Callable[[str], str],
        sleep: Sleep | None,
        *,
        agents: bool = True,
    ) -> None:
        self._lease, self._error, self._redact, self._sleep = lease, error, redact, sleep
        self._kills: set[asyncio.Task[None]] = set()
        self._agents = Agents(enabled=agents)

    async def close(self) -> None:
        """Wait a little for kills of cancelled runs still on their way."""
        if self._kills:
            await asyncio.wait(self._kills, timeout=KILL_GRACE)

    async def follow(self, target: HostTarget, run: Run) -> tuple[Ending, str]:
        """Start or follow the run until its supervisor reports the end, reconnecting."""
        try:
            return await first_then(
                lambda: self._attach(target, run),
                lost_a_running_command,
                lambda: reattach_policy(self._sleep),
            )
        except TransportError as exc:
            if not run.sent or exc.may_still_run:
                raise
            raise self._error(
                target.name,
                f"lost {run.shown!r} and could not reconnect: {exc.reason}; "
                "it may still be running on the host",
                may_still_run=True,
            ) from None

    async def _attach(self, target: HostTarget, run: Run) -> tuple[Ending, str]:
        """One exec of the wrapper: it starts the command, or finds its record."""
        async with self._lease(target) as conn:
            if self._agents.enabled:
                ended = await self._through(target, run, conn)
                if ended is not None:
                    return ended
            was_sent, run.sent = run.sent, True  # the exec may reach the host from here on
            run.attempts += 1
            session = _Wrapper(run.script)
            try:
                channel, _ = await conn.create_session(
                    lambda: session, run.command, encoding="utf-8", errors="replace"
                )
            except asyncssh.ChannelOpenError as exc:
                run.sent = was_sent  # refused before the exec request
                if not was_sent:
                    raise self._error(
                        target.name,
                        f"could not start {run.shown!r}: {describe(exc)}; it did not run",
                    ) from None
                raise self._detached(target.name, run, describe(exc)) from None
            except (asyncssh.Error, OSError) as exc:
                raise self._detached(target.name, run, describe(exc)) from None
            try:
                session.send(channel)  # unless it went with the exec request
                await session.closed
            except (asyncssh.Error, OSError) as exc:
                raise self._detached(target.name, run, describe(exc)) from None
            finally:
                channel.close()
            closed = conn.is_closed()
        output, errors = "".join(session.output), "".join(session.errors)
        return self._ending(target, run, output, errors, closed=closed)

    async def _through(
        self, target: HostTarget, run: Run, conn: asyncssh.SSHClientConnection
    ) -> tuple[Ending, str] | None:
        """One request to the connection's agent: it runs the wrapper as its exec
        would. None: the agent is not free, or the host runs none; nothing was sent."""
        was_sent, run.sent = run.sent, True  # the request may reach the host from here on
        run.attempts += 1
        request = supervise.agent_request(
            run.record, run.script.encode(), sudo=run.sudo, forget=run.forget
        )
        try:
            reply = await self._agents.run(conn, request)
        except asyncssh.ChannelOpenError:
            reply = None  # the agent's channel never opened: the request went nowhere
        except (AgentLost, asyncssh.Error, OSError) as exc:
            raise self._detached(target.name, run, describe(exc)) from None
        if reply is None:
            run.sent, run.attempts = was_sent, run.attempts - 1
            return None
        out, err = (part.decode("utf-8", errors="replace") for part in reply)
        return self._ending(target, run, out, err)

    def _ending(
        self, target: HostTarget, run: Run, output: str, errors: str, *, closed: bool = False
    ) -> tuple[Ending, str]:
        """What the wrapper said on stderr: how the run ended."""
        ending = supervise.parse_ending(errors)
        if ending is None:
            why = "connection closed" if closed else "its supervisor did not answer"
            raise self._detached(target.name, run, why)
        if ending.diagnostics:
            _log.warning("supervisor said", host=target.name, text=self._redact(errors))
        return ending, output

    def _detached(self, host: str, run: Run, why: str) -> TransportError:
        _log.warning("connection lost", host=host, during=run.shown, error=why, supervised=True)
        return self._error(
            host,
            f"connection lost during {run.shown!r}: {why}; it may still be running on the host",
            may_still_run=True,
        )

    async def stop(self, target: HostTarget, run: Run) -> tuple[Ending, str]:
        """Over its time: kill the command's process group, then read how it ended."""
        await self.kill(target, run, "timeout")
        try:
            async with asyncio.timeout(KILL_GRACE):
                return await self.follow(target, run)
        except (TimeoutError, TransportError):  # killed, but its record did not come back
            return Ending("killed", "timeout"), ""

    async def kill(self, target: HostTarget, run: Run, reason: str) -> None:
        command = supervise.kill_command(run.record, reason, sudo=run.sudo)
        try:
            async for attempt in reattach_policy(self._sleep):
                with attempt:
                    status, _, errors = await self.call(target, command)
        except TransportError as exc:
            raise self._error(
                target.name,
                f"could not kill {run.shown!r}: {exc.reason}; it may still be running on the host",
                may_still_run=True,
            ) from None
        if status != 0:
            raise self._error(
                target.name,
                f"could not kill {run.shown!r}: {errors.strip() or f'exit status {status}'}; "
                "it may still be running on the host",
                may_still_run=True,
            )
        _log.info("command killed", host=target.name, command=run.shown, reason=reason)

    async def kill_cancelled(self, target: HostTarget, run: Run) -> None:
        """The caller gave up on the run: kill it, waiting at most `KILL_GRACE`."""
        task = asyncio.ensure_future(self.kill(target, run, "cancel"))
        self._kills.add(task)
        task.add_done_callback(self._kill_done)
        with suppress(Exception, asyncio.CancelledError):  # the cancellation goes on anyway
            async with asyncio.timeout(KILL_GRACE):
                await asyncio.shield(task)

    def _kill_done(self, task: asyncio.Task[None]) -> None:
        self._kills.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("cancelled command not killed", error=str(exc))

    async def call(self, target: HostTarget, command: str) -> tuple[int, str, str]:
        """A short helper script of our own: exit status, stdout, stderr."""
        try:
            async with self._lease(target) as conn:
                result = await conn.run(command, stdin=asyncssh.DEVNULL, encoding="utf-8")
        except (asyncssh.Error, OSError) as exc:
            raise self._error(
                target.name, f"connection lost: {describe(exc)}", may_still_run=True
            ) from None
        if result.exit_status is None:
            raise self._error(target.name, "connection lost", may_still_run=True)
        return result.exit_status, str(result.stdout or ""), str(result.stderr or "")
