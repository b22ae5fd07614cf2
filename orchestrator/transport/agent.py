"""One long-lived agent channel per connection for supervised runs (docs/transport.md).

A supervised run used to be one exec of `supervise`'s wrapper: a channel
opened, an exec request, the script, its end, the exit status, the channel's
close; some ten packets each way per step. The agent (`supervise.agent_command`)
is one exec per connection that runs the same wrapper once per request: a
step is one request out and one reply back, with no round trip to open a
channel. At 50 hosts at once (benchmark hosts, 2 cores), the orchestrator's
CPU per supervised step went from 0.30 to 0.12 ms, and the time beyond the
command from 15 to 6 ms a step.

The wrapper, its record and its rules are the same on both paths: only the
way the request reaches the wrapper differs. An agent serves one run at a
time; a second run on the same connection meanwhile goes the old way (its own
exec). Anything unexpected on an agent (its channel lost, a reply that does
not parse, a caller that gave up before the reply) closes it: what it ran is
then followed through its record, as after any lost channel, and the next run
starts a new agent.
"""

from __future__ import annotations

import asyncio
import weakref

import asyncssh
import structlog

from orchestrator.errors import AgentLost, AgentRefused
from orchestrator.transport import supervise

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger("orchestrator.transport.ssh")


class AgentSession(asyncssh.SSHClientSession[bytes]):
    """The agent's channel: one request at a time, its reply parsed off stdout.

    The first request follows the agent's exec request at once, as the
    wrapper's script does (`follow._Wrapper`): asyncssh sends the exec request
    in the step that calls `connection_made`."""

    def __init__(self, first: bytes) -> None:
        self._buffer = bytearray()
        self._sizes: tuple[int, int, int] | None = None  # header length, out, err
        self._first: bytes | None = first
        self.reply: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()
        self.channel: asyncssh.SSHClientChannel[bytes] | None = None
        self.complaints: list[bytes] = []

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.channel = chan
        asyncio.get_running_loop().call_soon(self._follow_the_request, chan)

    def _follow_the_request(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        if chan.is_closing() or not getattr(chan, "_request_waiters", None):
            return
        self.send_first()

    def closing(self) -> bool:
        return self.channel is not None and self.channel.is_closing()

    def send_first(self) -> None:
        """The first request, unless it went with the exec request."""
        if self._first is not None and self.channel is not None:
            first, self._first = self._first, None
            self.channel.write(first)

    def send(self, request: bytes) -> asyncio.Future[tuple[bytes, bytes]]:
        assert self.channel is not None and self.reply.done()
        self.reply = asyncio.get_running_loop().create_future()
        self.channel.write(request)
        return self.reply

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.complaints.append(data)  # the agent's own shell complained
            return
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        if self._sizes is None:
            end = self._buffer.find(b"\n")
            if end < 0:
                return
            words = bytes(self._buffer[:end]).split()
            if words[:2] == [_MARK, b"refused"]:
                self._fail(AgentRefused(b" ".join(words[2:]).decode(errors="replace")))
                return
            if len(words) != 3 or words[0] != _MARK or not (words[1] + words[2]).isdigit():
                self._fail(AgentLost(f"the agent said {bytes(self._buffer[:end])[:200]!r}"))
                return
            self._sizes = (end + 1, int(words[1]), int(words[2]))
        start, out, err = self._sizes
        end = start + out + err
        if len(self._buffer) < end:
            return
        reply = (bytes(self._buffer[start : start + out]), bytes(self._buffer[start + out : end]))
        del self._buffer[:end]
        self._sizes = None
        if self.reply.done() or self._buffer:
            self._fail(AgentLost("the agent said more than its reply"))
            return
        self.reply.set_result(reply)

    def _fail(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)
        if self.channel is not None:
            self.channel.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            why = (str(exc) or type(exc).__name__) if exc is not None else "its channel closed"
            self.reply.set_exception(AgentLost(why))


_MARK = supervise.AGENT_MARK.encode()


class Agents:
    """The agent of each connection of a pool, started with its first run."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._sessions: dict[asyncssh.SSHClientConnection, AgentSession] = {}
        self._busy: set[AgentSession] = set()
        # connections whose host runs no agent: their runs exec
        self._refused: weakref.WeakSet[asyncssh.SSHClientConnection] = weakref.WeakSet()
        self._watches: set[asyncio.Task[None]] = set()

    async def run(
        self, conn: asyncssh.SSHClientConnection, request: bytes
    ) -> tuple[bytes, bytes] | None:
        """The wrapper's stdout and stderr for one request; None when the run
        must exec instead (the agent serves another run or is starting, or the
        host runs none), and then nothing was sent. Raises `AgentLost` once the
        request may have reached the host; a cancellation closes the agent (its
        reply would come too late to be told from the next one's)."""
        if not self.enabled or conn in self._refused:
            return None
        session = self._sessions.get(conn)
        if session is not None and session.closing():
            session = None  # closed after a failure: another starts
        if session is None:
            session = AgentSession(request)
            self._sessions[conn] = session
            self._busy.add(session)
            try:
                chan, _ = await conn.create_session(
                    lambda: session, supervise.agent_command(), encoding=None
                )
            except BaseException:
                del self._sessions[conn]
                self._busy.discard(session)
                raise
            watch = asyncio.ensure_future(self._forget_when_closed(conn, session, chan))
            self._watches.add(watch)
            watch.add_done_callback(self._watches.discard)
            session.send_first()
            reply = session.reply
        elif session in self._busy:
            return None
        else:
            self._busy.add(session)
            reply = session.send(request)
        try:
            return await reply
        except AgentRefused as exc:
            _log.warning("no agent here: its runs exec", reason=str(exc))
            self._refused.add(conn)
            return None
        except BaseException:
            if session.channel is not None:
                session.channel.close()
            raise
        finally:
            self._busy.discard(session)

    async def _forget_when_closed(
        self,
        conn: asyncssh.SSHClientConnection,
        session: AgentSession,
        chan: asyncssh.SSHClientChannel[bytes],
    ) -> None:
        await chan.wait_closed()
        if self._sessions.get(conn) is session:
            del self._sessions[conn]
        if session.complaints:
            text = b"".join(session.complaints).decode(errors="replace")
            _log.warning("the agent said", text=text[-2000:])
