"""Real OpenSSH sshd hosts on loopback: one sshd process per host, each on its own port.

Each host gets its own sshd_config, an ed25519 host key made by ssh-keygen,
an authorized_keys file with the one generated client key, and a log.
Authentication is by key only (no passwords, no keyboard-interactive); the
client verifies host keys against a known_hosts file written from the
generated keys (``[127.0.0.1]:PORT``).

A host is a directory, as a minicloud host is: sshd runs with nss_wrapper
(``LD_PRELOAD``) and a passwd file of its own in which the login user (same
uid as this process, so root in CI) has the host directory as home and
``/bin/sh`` as shell. sshd then does what it does on any machine: chdir to
the home, run ``$SHELL -c COMMAND``, serve SFTP relative to it. No forced
command stands in between, so the SSH ``signal`` request is handled exactly
as in production. ``SetEnv`` puts the cloud's ``bin/`` on PATH and sets
``HOST_DIR``/``HOST_NAME``.

The fixture files live in ``root/NAME/``, outside the host directories.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.minicloud.layout import free_ports
from orchestrator.minicloud.sshd import ADDRESS, loopback_target
from orchestrator.model import HostTarget
from tests.integration.servers import Servers, stop_process

USER = "stack"
START_DEADLINE = 10.0
STOP_DEADLINE = 5.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# sshd running as root checks for its privilege separation directory
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(eq=False)
class _Host:
    name: str
    directory: Path
    files: Path
    port: int
    address: str = ADDRESS
    process: asyncio.subprocess.Process | None = None

    @property
    def key(self) -> Path:
        return self.files / "ssh_host_ed25519_key"

    @property
    def log(self) -> Path:
        return self.files / "sshd.log"


class RealSSHHosts:
    """N real sshd hosts; ``await start()``, then ``await close()``."""

    def __init__(
        self,
        servers: Servers,
        root: Path,
        hosts: Sequence[str],
        *,
        host_dirs: Mapping[str, Path] | None = None,
        env: Mapping[str, str] | None = None,
        addresses: Mapping[str, str] | None = None,
    ) -> None:
        """`addresses`: a loopback address per host to listen on (default
        127.0.0.1 for all), so that hosts can be machines of their own."""
        self.servers = servers
        self.root = root
        self.user = USER
        self.client_key_path = root / "client_key"
        self.known_hosts_path = root / "known_hosts"
        self._env = dict(env or {})
        ports = iter(free_ports(len(hosts)))
        self._hosts = {
            name: _Host(
                name,
                (host_dirs or {}).get(name, root / name),
                root / f"{name}.sshd",
                next(ports),
                (addresses or {}).get(name, ADDRESS),
            )
            for name in hosts
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._hosts)

    def port(self, name: str) -> int:
        return self._hosts[name].port

    def address(self, name: str) -> str:
        return self._hosts[name].address

    def host_dir(self, name: str) -> Path:
        return self._hosts[name].directory

    def log(self, name: str) -> str:
        """What this host's sshd logged (LogLevel VERBOSE: logins, sessions, forwards)."""
        path = self._hosts[name].log
        return path.read_text(errors="replace") if path.exists() else ""

    def sessions(self, name: str) -> list[str]:
        """The log lines of every command or subsystem this host started."""
        return [line for line in self.log(name).splitlines() if "Starting session:" in line]

    def logins(self, name: str) -> int:
        """How many connections this host has authenticated so far."""
        return self.log(name).count("Accepted publickey")

    def session_pids(self, name: str) -> list[int]:
        """The sshd processes serving this host's open connections: every sshd
        below the listener (the privileged monitor and the user's process of
        each connection), not the listener itself and not the commands."""
        process = self._hosts[name].process
        assert process is not None, f"{name} is not running"
        children: dict[int, list[int]] = {}
        names: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            head, _, rest = stat.rpartition(")")
            pid, ppid = int(entry.name), int(rest.split()[1])
            names[pid] = head.partition("(")[2]
            children.setdefault(ppid, []).append(pid)
        found: list[int] = []
        stack = list(children.get(process.pid, []))
        while stack:
            pid = stack.pop()
            if names.get(pid) == "sshd":
                found.append(pid)
                stack.extend(children.get(pid, []))
        return sorted(found)

    def target(self, name: str, **changes: object) -> HostTarget:
        target = loopback_target(
            name,
            self._hosts[name].port,
            user=self.user,
            key=self.client_key_path,
            known_hosts=self.known_hosts_path,
            become="none",
        )
        changes = {"address": self._hosts[name].address, **changes}
        return dataclasses.replace(target, **changes)  # type: ignore[arg-type]

    def targets(self, **changes: object) -> tuple[HostTarget, ...]:
        return tuple(self.target(name, **changes) for name in self._hosts)

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._make_directories()
        await self._keygen(self.client_key_path, "orchestrator-client")
        for host in self._hosts.values():
            await self._keygen(host.key, host.name)
            self._configure(host)
        self.write_known_hosts()
        await asyncio.gather(*(self._start(host) for host in self._hosts.values()))

    async def close(self) -> None:
        await asyncio.gather(*(self._stop(host) for host in self._hosts.values()))

    def write_known_hosts(self) -> None:
        """known_hosts with the key files on disk now (a changed key is not in it until this)."""
        lines = []
        for host in self._hosts.values():
            kind, blob = (host.key.with_suffix(".pub")).read_text().split()[:2]
            lines.append(f"[{host.address}]:{host.port} {kind} {blob}")
        self.known_hosts_path.write_text("\n".join(lines) + "\n")

    async def change_host_key(self, name: str) -> None:
        """The host comes back (same port) with a new host key; known_hosts keeps the old one."""
        host = self._hosts[name]
        await self._stop(host)
        host.key.unlink()
        host.key.with_suffix(".pub").unlink()
        await self._keygen(host.key, host.name)
        await self._start(host)

    # --- the server side --------------------------------------------------------

    def _make_directories(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        for host in self._hosts.values():
            host.directory.mkdir(parents=True, exist_ok=True)
            host.files.mkdir(parents=True, exist_ok=True)

    async def _keygen(self, path: Path, comment: str) -> None:
        process = await asyncio.create_subprocess_exec(
            self.servers.ssh_keygen,
            *("-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"ssh-keygen {path} failed: {out.decode(errors='replace')}")

    def _configure(self, host: _Host) -> None:
        me = pwd.getpwuid(os.getuid())
        passwd = [
            line
            for line in Path("/etc/passwd").read_text().splitlines()
            if line and not line.startswith(f"{self.user}:")
        ]
        # the login user: this process's uid, the host directory as home
        passwd.append(
            f"{self.user}:x:{me.pw_uid}:{me.pw_gid}:host {host.name}:{host.directory}:/bin/sh"
        )
        (host.files / "passwd").write_text("\n".join(passwd) + "\n")
        (host.files / "group").write_text(Path("/etc/group").read_text())
        authorized = self.client_key_path.with_suffix(".pub").read_text()
        (host.files / "authorized_keys").write_text(authorized)
        env = {
            "PATH": DEFAULT_PATH,
            "LANG": "C.UTF-8",
            **self._env,
            "HOST_DIR": str(host.directory),
            "HOST_NAME": host.name,
        }
        setenv = " ".join(f'"{k}={v}"' for k, v in env.items())  # sshd_config quoting
        config = f"""\
Port {host.port}
ListenAddress {host.address}
AddressFamily inet
HostKey {host.key}
PidFile {host.files / "sshd.pid"}
AuthorizedKeysFile {host.files / "authorized_keys"}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PermitEmptyPasswords no
PermitRootLogin prohibit-password
AllowUsers {self.user}
UsePAM no
StrictModes no
AllowStreamLocalForwarding local
AllowTcpForwarding local
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
PrintLastLog no
UseDNS no
MaxSessions 64
MaxStartups 64:30:128
SetEnv {setenv}
Subsystem sftp {self.servers.sftp_server}
LogLevel VERBOSE
"""
        (host.files / "sshd_config").write_text(config)

    async def _start(self, host: _Host) -> None:
        env = {
            "PATH": DEFAULT_PATH,
            "LD_PRELOAD": self.servers.nss_wrapper,
            "NSS_WRAPPER_PASSWD": str(host.files / "passwd"),
            "NSS_WRAPPER_GROUP": str(host.files / "group"),
        }
        with host.log.open("ab") as log:
            host.process = await asyncio.create_subprocess_exec(
                self.servers.sshd,
                *("-D", "-f", str(host.files / "sshd_config"), "-E", str(host.log)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_DEADLINE
        while True:
            if host.process.returncode is not None:
                raise RuntimeError(
                    f"sshd for {host.name} exited {host.process.returncode}:\n{self.log(host.name)}"
                )
            try:
                _, writer = await asyncio.open_connection(host.address, host.port)
            except OSError:
                if loop.time() > deadline:
                    raise RuntimeError(
                        f"sshd for {host.name} not listening on {host.port}:\n{self.log(host.name)}"
                    ) from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return

    async def _stop(self, host: _Host) -> None:
        """Stop the listener; sessions still open end with their connections."""
        process, host.process = host.process, None
        await stop_process(process, STOP_DEADLINE)
