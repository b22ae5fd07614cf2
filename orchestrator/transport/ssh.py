"""Commands and files on hosts over SSH: one reused asyncssh connection per host.

What a caller can rely on:

* host keys are checked against the host's known_hosts file (unless the
  inventory turned that off for a lab); a mismatch is a `HostKeyError` and is
  never retried (`orchestrator.transport.dial`);
* at most `max_connections` connections are open at once (a `ConnectionLimit`,
  shared by every pool of a daemon; `orchestrator.transport.slots`): a host
  beyond it waits until the least recently used idle connection is closed or
  one is free; a connection in use is never closed under its user, and
  `release(host)` closes a host's connection once its work is done;
* opening a connection is retried by `retry.connect_policy`; a command is
  never retried: a connection lost while it ran raises `TransportError`
  saying it may have run (``may_still_run=True``);
* a command given a ``run_id`` runs under a supervisor on the host
  (`orchestrator.transport.supervise`, docs/transport.md): a dropped or
  silent connection (keepalives: `KEEPALIVE_COUNT_MAX` + 1 intervals) does
  not stop it; the pool reconnects under `retry.reattach_policy` and returns
  its real result, or raises `TransportError` with ``may_still_run=True``.
  The same run id never runs its command twice: it returns the recorded end;
* a command over its timeout (or whose caller is cancelled) is killed and
  comes back with ``timed_out=True``; OpenSSH's sshd neither kills a command
  whose channel closes nor honours the ``signal`` request for root logins,
  forced commands or a sudo'd command, so there a command runs inside a
  small watchdog (`_watchdog`) that kills its process group on request;
* secrets exist only in the bytes sent to the host: logs show the marker
  form and outputs and error messages are redacted.

Files go over SFTP on the same connection, and `unix_request` reaches a UNIX
socket on the host (HAProxy's runtime API) through SSH stream forwarding.
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets as token
import shlex
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import asyncssh
import structlog

from orchestrator.errors import OrchestratorError, TransportError
from orchestrator.model import HostTarget
from orchestrator.secrets import SecretStore
from orchestrator.templating import SECRET_MARKER
from orchestrator.transport import supervise
from orchestrator.transport.dial import KEEPALIVE_COUNT_MAX, Dialer
from orchestrator.transport.follow import KILL_GRACE, Follower, Run
from orchestrator.transport.follow import describe as _describe
from orchestrator.transport.records import Lull, Records
from orchestrator.transport.slots import ConnectionLimit, HostConnections
from orchestrator.transport.supervise import Ending

__all__ = ["KEEPALIVE_COUNT_MAX", "CommandResult", "ConnectionLimit", "SSHPool"]

MAX_OUTPUT_CHARS = 64 * 1024
MAX_OUTPUT_LINES = 200
READ_CHUNK = 64 * 1024
# the records of commands supervised only to keep a secret off the command line
ADHOC = "adhoc"

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command did. `exit_status` is None when it was killed by a signal or timed out."""

    exit_status: int | None
    output: str
    duration: float
    timed_out: bool
    # why there is no exit status when it is not a signal or the timeout
    # (a supervised run whose supervisor died with its host)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out


class _Tail:
    """The last lines of a command's output, bounded in lines and characters.

    Lines are redacted before anyone sees them, `on_line` included.
    """

    __slots__ = ("_chars", "_lines", "_on_line", "_partial", "_redact")

    def __init__(self, on_line: Callable[[str], None] | None, redact: Callable[[str], str]) -> None:
        self._lines: deque[str] = deque()
        self._chars = 0
        self._partial = ""
        self._on_line = on_line
        self._redact = redact

    def feed(self, chunk: str) -> None:
        *complete, self._partial = (self._partial + chunk).split("\n")
        for line in complete:
            self._add(line)
        # a line that goes on and on: only its end can be shown anyway
        self._partial = self._partial[-MAX_OUTPUT_CHARS:]

    def finish(self) -> str:
        if self._partial:
            self._add(self._partial)
            self._partial = ""
        # a multi-line secret is only whole in the joined text
        return self._redact("\n".join(self._lines))

    def _add(self, raw: str) -> None:
        line = self._redact(raw.removesuffix("\r"))
        if self._on_line is not None:
            self._on_line(line)
        self._lines.append(line)
        self._chars += len(line) + 1  # with its newline: the joined text is one shorter
        if len(self._lines) > MAX_OUTPUT_LINES:
            self._chars -= len(self._lines.popleft()) + 1
        while (excess := self._chars - (MAX_OUTPUT_CHARS + 1)) > 0:
            oldest = self._lines[0]
            if len(oldest) + 1 <= excess and len(self._lines) > 1:
                self._lines.popleft()
                self._chars -= len(oldest) + 1
            else:  # keep the end of a line that does not fit whole
                self._lines[0] = oldest[excess:]
                self._chars -= excess


def _sudo(command: str) -> str:
    return f"sudo -n sh -c {shlex.quote(command)}"


# A line on the command's stdin that makes the watchdog kill it. Only this
# line does: a connection that merely drops (EOF) leaves the command running,
# as sshd itself would, so "it may have run" stays the whole truth.
KILL_LINE = "kill\n"
# POSIX sh. fd 3 keeps the channel's stdin for the watcher, the command gets
# /dev/null as before; the wrapper's own stderr goes to /dev/null so a shell's
# "Killed" notice does not join the output. `kill 0` is the session's process
# group: sshd starts every session with setsid(), and daemons a command starts
# in their own session survive. A command killed by a signal kills the
# wrapper with the same signal, so the exit status still says "signal".
_WATCHDOG = (
    "exec 3<&0 4>&2 </dev/null 2>/dev/null; "
    '{{ read -r l <&3 && [ "$l" = kill ] && kill -KILL 0; }} >/dev/null 4>&- & '
    "sh -c {command} 2>&4 3<&- 4>&-; s=$?; kill $! 2>/dev/null; "
    '[ "$s" -gt 128 ] && kill -$((s - 128)) $$; exit "$s"'
)


def _watchdog(command: str) -> str:
    return "exec sh -c " + shlex.quote(_WATCHDOG.format(command=shlex.quote(command)))


def _needs_watchdog(conn: asyncssh.SSHClientConnection) -> bool:
    """OpenSSH: a closed channel or a refused signal leaves the command running."""
    version = conn.get_extra_info("server_version") or ""
    return isinstance(version, str) and version.startswith("SSH-2.0-OpenSSH")


class SSHPool:
    """One lazily opened, shared SSH connection per host, within a `ConnectionLimit`;
    replaced when it drops. Supervised runs go through one agent per connection
    (`orchestrator.transport.agent`); `agents=False` gives each its own exec."""

    def __init__(
        self,
        hosts: Sequence[HostTarget],
        secrets: SecretStore | None = None,
        *,
        policy_sleep: Callable[[float], Awaitable[None]] | None = None,
        limit: ConnectionLimit | None = None,
        agents: bool = True,
    ) -> None:
        self._targets = {host.name: host for host in hosts}
        self._secrets = secrets if secrets is not None else SecretStore((), {})
        self._conns = HostConnections(limit or ConnectionLimit(), Dialer(), policy_sleep)
        self._lease = self._conns.lease
        self._follower = Follower(
            self._lease, self._error, self._secrets.redact, policy_sleep, agents=agents
        )
        # the record removals of hosts done with a phase wait for a pause in
        # the upgrade's own commands, unless hosts wait for a connection place
        self._lull = Lull(lambda: self._conns.limit.waiting > 0)
        self._records = Records(self._follower.call, self._error, self._lull)
        # called before anything that changes a host: raises to forbid it (a
        # daemon whose leader lease has run out must not act on hosts)
        self.gate: Callable[[], None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def target(self, host: str) -> HostTarget:
        try:
            return self._targets[host]
        except KeyError:
            raise KeyError(f"host {host!r} is not in this SSH pool") from None

    async def connect(self, host: str) -> None:
        """Preflight: the host is reachable and presents the key we know, or this raises."""
        async with self._lease(self.target(host)):
            pass

    def release(self, host: str, *, forget: str | None = None) -> None:
        """The host's work in its phase is done: close its connection once idle.

        `forget`: an upgrade whose work on the host is done and journaled: its
        run records there are removed first, in the background, over the
        connection still open (`forget_runs` then needs no new one). A later
        call for the host opens a new connection."""
        if forget is not None and self._may_act():
            self._records.forget_soon(self.target(host), forget, lambda: self._conns.release(host))
        else:
            self._conns.release(host)

    def _may_act(self) -> bool:
        if self.gate is None:
            return True
        try:
            self.gate()
        except OrchestratorError:
            return False
        return True

    @property
    def limit(self) -> ConnectionLimit:
        return self._conns.limit

    async def run(
        self,
        host: str,
        command: str,
        *,
        timeout: float | None = None,
        become: bool = False,
        on_line: Callable[[str], None] | None = None,
        run_id: str | None = None,
    ) -> CommandResult:
        """Run `command` (marker form) on `host`; stdout and stderr come back merged.

        With a `run_id` (``UPGRADE/STEP``) it runs supervised: see the module
        docstring, `supervise` and docs/transport.md.
        """
        if self.gate is not None:
            self.gate()
        if run_id is None and SECRET_MARKER.search(command):
            # a secret must never be on a command line the host's users can read
            # (ps, /proc): the supervised path sends the script on stdin instead
            run_id = f"{ADHOC}/{uuid.uuid4().hex}"
        self._lull.busy()
        try:
            if run_id is not None:
                return await self._supervised(
                    host, command, timeout=timeout, become=become, on_line=on_line, run_id=run_id
                )
            return await self._plain(host, command, timeout=timeout, become=become, on_line=on_line)
        finally:
            self._lull.busy()

    async def _plain(
        self,
        host: str,
        command: str,
        *,
        timeout: float | None,
        become: bool,
        on_line: Callable[[str], None] | None,
    ) -> CommandResult:
        """The command itself as the exec: health checks, probes, reads."""
        target = self.target(host)
        async with self._lease(target) as conn:
            return await self._exec(
                conn, target, command, timeout=timeout, become=become, on_line=on_line
            )

    async def _exec(
        self,
        conn: asyncssh.SSHClientConnection,
        target: HostTarget,
        command: str,
        *,
        timeout: float | None,
        become: bool,
        on_line: Callable[[str], None] | None,
    ) -> CommandResult:
        host = target.name
        shown, sent = command, self._secrets.substitute(command)
        limit = target.command_timeout if timeout is None else timeout
        log = _log.bind(host=host)
        watchdog = _needs_watchdog(conn)
        if watchdog:
            sent = _watchdog(sent)
        if become and target.become == "sudo":
            # the watchdog runs inside sudo: a root command is out of the login user's reach
            shown, sent = _sudo(shown), _sudo(sent)
        log.info("command started", command=shown, timeout=limit)
        started = time.monotonic()
        try:
            process = await conn.create_process(
                sent,
                stdin=asyncssh.PIPE if watchdog else asyncssh.DEVNULL,
                stderr=asyncssh.STDOUT,
                encoding="utf-8",
                errors="replace",
            )
        except asyncssh.ChannelOpenError as exc:
            raise self._error(
                host, f"could not start {shown!r}: {_describe(exc)}; it did not run"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(host, shown, exc, command=True) from None

        tail = _Tail(on_line, self._secrets.redact)
        timed_out = ended = False
        try:
            deadline = asyncio.timeout(limit)
            try:
                async with deadline:
                    while chunk := await process.stdout.read(READ_CHUNK):
                        tail.feed(chunk)
                    await process.wait_closed()
                    ended = True
            except TimeoutError:
                if not deadline.expired():
                    raise
                timed_out = ended = True
                await _kill(process, watchdog)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(host, shown, exc, command=True) from None
        finally:
            if not ended:  # cancelled, or on_line raised: the command must not run on
                _interrupt(process, watchdog)
            process.close()

        status = process.exit_status
        if process.exit_signal is not None or timed_out:
            status = None
        if status is None and not timed_out and conn.is_closed():
            lost = asyncssh.ConnectionLost("connection closed")
            raise self._lost(host, shown, lost, command=True)
        result = CommandResult(
            exit_status=status,
            output=tail.finish(),
            duration=time.monotonic() - started,
            timed_out=timed_out,
        )
        log.info(
            "command finished",
            command=shown,
            exit_status=status,
            signal=process.exit_signal[0] if process.exit_signal else None,
            timed_out=timed_out,
            duration=round(result.duration, 3),
        )
        return result

    async def forget_runs(self, host: str, upgrade_id: str) -> int:
        """Remove the records of an upgrade's supervised runs on `host`.

        Records of commands that still run are kept; returns how many. A host
        this pool already cleaned of the upgrade, and ran nothing of it on
        since, is not asked again.
        """
        return await self._records.forget(self.target(host), upgrade_id)

    async def read_file(self, host: str, path: str) -> str | None:
        """The text of a remote file, or None if it does not exist."""
        async with self._lease(self.target(host)) as conn:
            try:
                async with conn.start_sftp_client() as sftp:
                    try:
                        async with sftp.open(path, "r", encoding="utf-8") as file:
                            data = await file.read()
                    except asyncssh.SFTPNoSuchFile:
                        return None
            except UnicodeDecodeError:
                # replacing bad bytes would corrupt the file when it is written back
                raise self._error(host, f"sftp: {path} is not UTF-8 text") from None
            except asyncssh.SFTPError as exc:
                raise self._error(host, f"sftp: cannot read {path}: {_describe(exc)}") from None
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(host, f"read {path}", exc) from None
        return data if isinstance(data, str) else data.decode("utf-8", "replace")

    async def write_file(self, host: str, path: str, text: str) -> None:
        """Replace a remote file atomically (temporary file, then posix-rename).

        Parent directories are created; an existing file keeps its permissions.
        """
        if self.gate is not None:
            self.gate()
        async with self._lease(self.target(host)) as conn:
            parent, name = posixpath.split(path)
            temporary = posixpath.join(parent, f".{name}.{token.token_hex(4)}.tmp")
            try:
                async with conn.start_sftp_client() as sftp:
                    if parent:
                        await sftp.makedirs(parent, exist_ok=True)
                    mode: int | None = None
                    with suppress(asyncssh.SFTPNoSuchFile):
                        mode = (await sftp.stat(path)).permissions
                    try:
                        async with sftp.open(temporary, "w", encoding="utf-8") as file:
                            await file.write(text)
                        if mode is not None:
                            await sftp.chmod(temporary, mode & 0o7777)
                        await sftp.posix_rename(temporary, path)
                    except asyncssh.SFTPError:
                        with suppress(asyncssh.SFTPError):
                            await sftp.remove(temporary)
                        raise
            except asyncssh.SFTPError as exc:
                raise self._error(host, f"sftp: cannot write {path}: {_describe(exc)}") from None
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(host, f"write {path}", exc) from None
        _log.info("file written", host=host, path=path, chars=len(text))

    async def remove_file(self, host: str, path: str) -> None:
        """Remove a remote file; one that is already gone is fine."""
        if self.gate is not None:
            self.gate()
        async with self._lease(self.target(host)) as conn:
            try:
                async with conn.start_sftp_client() as sftp:
                    with suppress(asyncssh.SFTPNoSuchFile):
                        await sftp.remove(path)
            except asyncssh.SFTPError as exc:
                raise self._error(host, f"sftp: cannot remove {path}: {_describe(exc)}") from None
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(host, f"remove {path}", exc) from None
        _log.info("file removed", host=host, path=path)

    async def unix_request(
        self,
        host: str,
        path: str,
        request: str,
        *,
        timeout: float | None = None,
    ) -> str:
        """Send one request to a UNIX socket on the host and return the whole reply.

        The HAProxy runtime API way (``echo "show stat" | socat stdio SOCKET``):
        one line out, end of input, read until the server closes.
        """
        target = self.target(host)
        limit = target.command_timeout if timeout is None else timeout
        async with self._lease(target) as conn:
            try:
                reader, writer = await conn.open_unix_connection(path, encoding="utf-8")
            except asyncssh.ChannelOpenError as exc:
                raise self._error(host, f"cannot open socket {path}: {_describe(exc)}") from None
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(host, f"open {path}", exc) from None
            try:
                async with asyncio.timeout(limit):
                    writer.write(request.rstrip("\n") + "\n")
                    writer.write_eof()
                    reply: str = await reader.read()
            except TimeoutError:
                raise self._error(host, f"socket {path}: no reply within {limit:g} s") from None
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(host, f"request to {path}", exc) from None
            finally:
                writer.close()
        _log.info("socket request", host=host, path=path, request=self._secrets.redact(request))
        return self._secrets.redact(reply)

    async def close(self) -> None:
        await self._follower.close()
        await self._records.close()
        await self._conns.close()

    # --- supervised commands ---------------------------------------------------

    async def _supervised(
        self,
        host: str,
        command: str,
        *,
        timeout: float | None,
        become: bool,
        on_line: Callable[[str], None] | None,
        run_id: str,
    ) -> CommandResult:
        target = self.target(host)
        record = supervise.record_path(run_id)
        shown, script = command, self._secrets.substitute(command)
        sudo = become and target.become == "sudo"
        if sudo:
            shown = _sudo(shown)
        limit = target.command_timeout if timeout is None else timeout
        run = Run(record, shown, script, sudo)
        await self._records.settle(host, run_id)
        forget = self._records.starting(host, run_id)
        run.command = supervise.start_command(record, run.size, sudo=sudo, forget=forget)
        run.forget = forget
        log = _log.bind(host=host, run_id=run_id)
        log.info("command started", command=shown, timeout=limit, supervised=True)
        started = time.monotonic()
        try:
            deadline = asyncio.timeout(limit)
            try:
                async with deadline:
                    ending, output = await self._follower.follow(target, run)
            except TimeoutError:
                if not deadline.expired():
                    raise
                ending, output = await self._follower.stop(target, run)
        except asyncio.CancelledError:
            if run.sent:
                await self._follower.kill_cancelled(target, run)
            raise
        if ending.kind == "refused":
            raise self._error(host, f"could not start {shown!r}: {ending.detail}; it did not run")
        self._records.returned(host, run_id, record)
        result = self._result(host, ending, output, on_line, time.monotonic() - started)
        log.info(
            "command finished",
            command=shown,
            exit_status=result.exit_status,
            ending=f"{ending.kind} {ending.detail}",
            timed_out=result.timed_out,
            reattached=run.attempts - 1,
            duration=round(result.duration, 3),
        )
        return result

    def _result(
        self,
        host: str,
        ending: Ending,
        output: str,
        on_line: Callable[[str], None] | None,
        duration: float,
    ) -> CommandResult:
        tail = _Tail(on_line, self._secrets.redact)
        tail.feed(output)
        status: int | None = None
        timed_out = False
        reason: str | None = None
        if ending.kind == "exit" and ending.detail.isdigit():
            status = int(ending.detail)
        elif ending.kind == "killed":
            timed_out = ending.detail == "timeout"
            if not timed_out:
                reason = "killed: its run was cancelled"
        elif ending.kind == "died":
            reason = f"the supervisor on {host} died: {ending.detail} (it was not run again)"
        elif ending.kind != "signal":
            reason = f"the supervisor on {host} said {ending.kind} {ending.detail}"
        return CommandResult(
            exit_status=status,
            output=tail.finish(),
            duration=duration,
            timed_out=timed_out,
            reason=self._secrets.redact(reason) if reason else None,
        )

    def _lost(
        self, host: str, what: str, exc: BaseException, *, command: bool = False
    ) -> TransportError:
        """A fault on a channel; the connection is replaced next time if it is closed.

        `command`: a command was running, and may still be (OpenSSH does not
        stop a command whose connection drops).
        """
        _log.warning("connection lost", host=host, during=what, error=_describe(exc))
        return self._error(
            host,
            f"connection lost during {what!r}: {_describe(exc)}; it may have run on the host",
            may_still_run=command,
        )

    def _error(self, host: str, reason: str, *, may_still_run: bool = False) -> TransportError:
        return TransportError(host, self._secrets.redact(reason), may_still_run=may_still_run)


def _interrupt(process: asyncssh.SSHClientProcess[str], watchdog: bool) -> None:
    """Ask the server to kill a command: its watchdog's line, and the SSH signal."""
    if watchdog:
        with suppress(OSError, asyncssh.Error):
            process.stdin.write(KILL_LINE)
    with suppress(OSError, asyncssh.Error):
        process.send_signal("KILL")


async def _kill(process: asyncssh.SSHClientProcess[str], watchdog: bool) -> None:
    """Stop a command that ran out of time, then close its channel."""
    _interrupt(process, watchdog)
    process.close()
    with suppress(TimeoutError):
        async with asyncio.timeout(KILL_GRACE):
            await process.wait_closed()
