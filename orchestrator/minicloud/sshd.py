"""Real SSH hosts in this process: asyncssh servers on 127.0.0.1.

minicloud's embedded hosts, and the tests' SSH hosts. Each host has its own
directory (``root/NAME/`` unless `host_dirs` says otherwise), its own generated ed25519
host key and its own port. Exec requests run as real shell commands
(``/bin/sh -c COMMAND`` with the host directory as working directory,
``HOST_DIR``/``HOST_NAME`` set and the channel's input as stdin; a command
is killed, with its process group, when its channel closes first, so only
what starts a session of its own outlives a dropped connection, as the
supervisor of `SSHPool.run(run_id=...)` does); SFTP and UNIX socket forwarding
(``SSHPool.unix_request``) are chrooted to the host directory. One
generated client key is authorized on every host and a known_hosts file
lists every host key, so `SSHPool` connects exactly as it would in
production, host key check included.

Faults on demand: `drop` (cut every connection), `refuse`/`accept` (stop and
restart the listener on the same port), `change_host_key`.

``sudo`` does not exist here: ``root/bin/sudo`` is a stand-in on the hosts'
PATH that exports ``FAKE_SUDO=1`` and runs its arguments, and `commands`
records every command text that reached a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import os
import posixpath
import re
import shlex
import signal
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

import asyncssh

from orchestrator.model import HostTarget
from orchestrator.transport import supervise
from orchestrator.transport.supervise import (
    AGENT_MARK,
    AGENT_NAME,
    FORGETTER_NAME,
    MARK,
    WRAPPER_NAME,
)

ADDRESS = "127.0.0.1"
_FAKE_SUDO = """#!/bin/sh
# test stand-in for sudo: marks the environment, then runs its arguments
if [ "$1" = "-n" ]; then shift; fi
FAKE_SUDO=1
export FAKE_SUDO
exec "$@"
"""


_SLEEP = re.compile(r"^sleep (\d+(?:\.\d+)?)$")


class MakeSSHHosts(Protocol):
    """The type of the ``make_ssh_hosts`` fixture (tests/conftest_ssh.py)."""

    async def __call__(
        self, hosts: int | Sequence[str] = 1, *, env: Mapping[str, str] | None = None
    ) -> SSHHosts: ...


@dataclass(eq=False)
class _Host:
    """Mutable server-side state of one test host."""

    name: str
    directory: Path
    key: asyncssh.SSHKey
    port: int = 0
    acceptor: asyncssh.SSHAcceptor | None = None
    connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    accepted: int = 0
    commands: list[str] = field(default_factory=list)
    command_arrived: asyncio.Event = field(default_factory=asyncio.Event)


class _Server(asyncssh.SSHServer):
    """Counts and remembers the connections of one host, for `drop` and assertions."""

    def __init__(self, host: _Host) -> None:
        self._host = host
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._host.connections.add(conn)
        self._host.accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._host.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # any user name, but only with the authorized client key

    def unix_connection_requested(  # type: ignore[override]  # a coroutine is allowed too
        self, dest_path: str
    ) -> Awaitable[asyncssh.SSHForwarder]:
        """Forward to a UNIX socket, mapped into the host directory like SFTP paths."""
        assert self._conn is not None
        local = self._host.directory / posixpath.normpath("/" + dest_path).lstrip("/")
        return self._conn.forward_unix_connection(str(local))


def loopback_target(
    name: str,
    port: int,
    *,
    user: str,
    key: Path,
    known_hosts: Path,
    become: Literal["sudo", "none"],
) -> HostTarget:
    """A test host's SSH target on loopback: key login, host key verified."""
    return HostTarget(
        name=name,
        address=ADDRESS,
        port=port,
        user=user,
        key=str(key),
        known_hosts=str(known_hosts),
        verify_host_keys=True,
        become=become,
        roles=(),
        zone=None,
        connect_timeout=5.0,
        command_timeout=30.0,
        keepalive_interval=5.0,
    )


class SSHHosts:
    """N in-process SSH hosts; use ``async with SSHHosts(root, 3) as hosts:``."""

    def __init__(
        self,
        root: Path,
        hosts: int | Sequence[str] = 1,
        *,
        env: Mapping[str, str] | None = None,
        builtin_sleep: bool = False,
        host_dirs: Mapping[str, Path] | None = None,
    ) -> None:
        names = [f"host-{i}" for i in range(1, hosts + 1)] if isinstance(hosts, int) else hosts
        self.root = root
        self.client_key_path = root / "client_key"
        self.known_hosts_path = root / "known_hosts"
        self.bin = root / "bin"
        self._env = dict(env or {})
        # benchmarks simulate hundreds of hosts on two cores: `sleep N`, plain
        # or supervised, then costs no fork, as if each host had its own CPU
        # for its own shells (a supervised one leaves no record); nor does a
        # record removal where there is no record (the script's first line)
        self._builtin_sleep = builtin_sleep
        self._client_key = asyncssh.generate_private_key("ssh-ed25519")
        self._authorized = asyncssh.import_authorized_keys(
            self._client_key.export_public_key().decode()
        )
        self._hosts = {
            name: _Host(
                name,
                (host_dirs or {}).get(name, root / name),
                asyncssh.generate_private_key("ssh-ed25519"),
            )
            for name in names
        }
        self._retired: list[asyncssh.SSHAcceptor] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._hosts)

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(exist_ok=True)
        sudo = self.bin / "sudo"
        sudo.write_text(_FAKE_SUDO)
        sudo.chmod(0o755)
        self._client_key.write_private_key(str(self.client_key_path))
        self.client_key_path.chmod(0o600)
        for host in self._hosts.values():
            host.directory.mkdir(parents=True, exist_ok=True)
            await self._listen(host)
        self.write_known_hosts()

    async def close(self) -> None:
        """Cut every connection, stop every listener, wait for every command to end."""
        for host in self._hosts.values():
            self._abort(host)
            if host.acceptor is not None:
                self._retired.append(host.acceptor)
                host.acceptor = None
        for acceptor in self._retired:
            acceptor.close()
        for acceptor in self._retired:
            await acceptor.wait_closed()
        self._retired.clear()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    # --- what tests read ------------------------------------------------------

    def targets(self, **changes: object) -> tuple[HostTarget, ...]:
        """HostTarget values for every host; `changes` override fields on all of them."""
        return tuple(self.target(name, **changes) for name in self._hosts)

    def target(self, name: str, **changes: object) -> HostTarget:
        target = loopback_target(
            name,
            self._hosts[name].port,
            user=getpass.getuser(),
            key=self.client_key_path,
            known_hosts=self.known_hosts_path,
            become="sudo",
        )
        return dataclasses.replace(target, **changes)  # type: ignore[arg-type]

    def host_dir(self, name: str) -> Path:
        return self._hosts[name].directory

    def port(self, name: str) -> int:
        return self._hosts[name].port

    def accepted(self, name: str) -> int:
        """How many connections this host has accepted so far."""
        return self._hosts[name].accepted

    def open_connections(self, name: str) -> int:
        return len(self._hosts[name].connections)

    def commands(self, name: str) -> list[str]:
        """Every command text that reached this host, in order."""
        return list(self._hosts[name].commands)

    async def wait_for_commands(self, name: str, count: int = 1) -> list[str]:
        """Wait until `count` commands have reached this host; returns them all."""
        host = self._hosts[name]
        while len(host.commands) < count:
            host.command_arrived.clear()
            await host.command_arrived.wait()
        return list(host.commands)

    def write_known_hosts(self) -> None:
        """(Re)write known_hosts with the keys the hosts present now."""
        lines = [
            f"[{ADDRESS}]:{host.port} {host.key.export_public_key().decode().strip()}"
            for host in self._hosts.values()
        ]
        self.known_hosts_path.write_text("\n".join(lines) + "\n")

    # --- faults -------------------------------------------------------------------

    def drop(self, name: str) -> None:
        """Cut every connection of a host, as a network failure would."""
        self._abort(self._hosts[name])

    def refuse(self, name: str) -> None:
        """Stop listening: new connections are refused; existing ones stay."""
        host = self._hosts[name]
        if host.acceptor is not None:
            host.acceptor.close()  # closes the listening socket now
            self._retired.append(host.acceptor)
            host.acceptor = None

    async def accept(self, name: str) -> None:
        """Listen again, on the same port."""
        host = self._hosts[name]
        if host.acceptor is None:
            await self._listen(host)

    def change_host_key(self, name: str) -> None:
        """Present a new host key from now on (known_hosts keeps the old one)."""
        host = self._hosts[name]
        host.key = asyncssh.generate_private_key("ssh-ed25519")
        if host.acceptor is not None:
            host.acceptor.update(server_host_keys=[host.key])

    # --- the server side ----------------------------------------------------

    async def _listen(self, host: _Host) -> None:
        def sftp(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
            return asyncssh.SFTPServer(chan, chroot=os.fsencode(host.directory))

        async def process(proc: asyncssh.SSHServerProcess[bytes]) -> None:
            await self._exec(host, proc)

        host.acceptor = await asyncssh.create_server(
            lambda: _Server(host),
            ADDRESS,
            host.port,
            server_host_keys=[host.key],
            authorized_client_keys=self._authorized,
            process_factory=process,
            sftp_factory=sftp,
            encoding=None,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
        )
        host.port = host.acceptor.get_port()

    def _abort(self, host: _Host) -> None:
        for conn in list(host.connections):
            conn.abort()

    async def _exec(self, host: _Host, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Run one exec request as ``/bin/sh -c``; kill it if the channel closes first."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            command = process.command
            if command is None:
                process.stderr.write(b"test hosts run commands only, no shell\n")
                process.exit(1)
                return
            host.commands.append(command)
            host.command_arrived.set()
            if self._builtin_sleep and (m := _SLEEP.match(command)):
                await asyncio.sleep(float(m.group(1)))
                process.exit(0)
                return
            if self._builtin_sleep and f" {AGENT_NAME} " in command:
                await self._agent(host, process)
                return
            preread = b""
            if self._builtin_sleep and f" {WRAPPER_NAME} " in command:
                # a supervised `sleep N`: the wrapper's protocol, without its shells
                preread = await process.stdin.read()
                if m := _SLEEP.match(preread.decode(errors="replace")):
                    await asyncio.sleep(float(m.group(1)))
                    process.stderr.write(f"{MARK} exit 0\n".encode())
                    process.exit(0)
                    return
            if self._builtin_sleep and self._nothing_to_forget(host, command):
                process.stdout.write(b"0\n")
                process.exit(0)
                return
            await self._run(host, command, process, preread)
        finally:
            self._tasks.discard(task)

    async def _agent(self, host: _Host, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """The agent's protocol (`supervise.agent_command`) without its shell: a
        supervised `sleep N` sleeps; any other script runs the real wrapper. Each
        request is listed in `commands` as the wrapper's exec it stands for."""
        buffer = b""
        while True:
            parsed = supervise.parse_request(buffer)
            if parsed is None or len(buffer) < parsed[4] + parsed[1]:
                chunk = await process.stdin.read(65536)
                if not chunk:
                    break
                buffer += chunk
                continue
            record, size, sudo, forget, start = parsed
            script, buffer = buffer[start : start + size], buffer[start + size :]
            command = supervise.start_command(record, size, sudo=sudo, forget=forget)
            host.commands.append(command)
            host.command_arrived.set()
            if m := _SLEEP.match(script.decode(errors="replace")):
                await asyncio.sleep(float(m.group(1)))
                out, err = b"", f"{MARK} exit 0\n".encode()
            else:
                out, err = await self._shell(host, command, script)
            process.stdout.write(f"{AGENT_MARK} {len(out)} {len(err)}\n".encode() + out + err)
        process.exit(0)

    async def _shell(self, host: _Host, command: str, stdin: bytes) -> tuple[bytes, bytes]:
        """`command` in a shell of the host: its stdout and stderr."""
        child = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            cwd=host.directory,
            env=self._environment(host),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return await child.communicate(stdin)

    def _environment(self, host: _Host) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(host.directory),
            "LANG": "C.UTF-8",
            "HOST_DIR": str(host.directory),
            "HOST_NAME": host.name,
            **self._env,
        }

    @staticmethod
    def _nothing_to_forget(host: _Host, command: str) -> bool:
        """A record removal (`supervise.forget_command`) of an upgrade that left
        no records here: the script would only print 0."""
        if f" {FORGETTER_NAME} " not in command:
            return False
        upgrade_dir = shlex.split(command)[-1]
        return not (host.directory / upgrade_dir).exists()

    async def _run(
        self,
        host: _Host,
        command: str,
        process: asyncssh.SSHServerProcess[bytes],
        preread: bytes = b"",
    ) -> None:
        env = self._environment(host)
        child = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            cwd=host.directory,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so a kill takes its children too
        )
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        feed = asyncio.ensure_future(_feed(process.stdin, child.stdin, preread))
        work = asyncio.ensure_future(
            asyncio.gather(
                _pump(child.stdout, process.stdout),
                _pump(child.stderr, process.stderr),
                child.wait(),
            )
        )
        closed = asyncio.ensure_future(process.channel.wait_closed())
        either: list[asyncio.Future[Any]] = [work, closed]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            feed.cancel()
            if not work.done():  # the client went away (timeout, drop): kill the command
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
            await asyncio.wait({work}, timeout=10)
            await asyncio.wait({closed, feed})
        returncode = child.returncode
        if process.channel.is_closing() or returncode is None:
            return
        if returncode >= 0:
            process.exit(returncode)
        else:
            process.exit_with_signal(signal.Signals(-returncode).name.removeprefix("SIG"))


async def _feed(
    source: asyncssh.SSHReader[bytes], sink: asyncio.StreamWriter, preread: bytes
) -> None:
    """Copy the channel's input to the child's stdin; its end is the child's end of input."""
    try:
        if preread:
            sink.write(preread)
        else:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
    except (OSError, asyncssh.Error):
        pass  # the child stopped reading, or the channel broke
    finally:
        sink.close()


async def _pump(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
    """Copy a child's output to the channel; after the channel breaks, drain and discard."""
    broken = False
    while data := await source.read(65536):
        if broken:
            continue
        try:
            sink.write(data)
            await sink.drain()
        except (OSError, asyncssh.Error):
            broken = True
