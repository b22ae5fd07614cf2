"""A real HAProxy on loopback: an HTTP frontend, `backend api` round robin, and its
runtime API on a UNIX socket (``stats socket ... level admin``).

The orchestrator reaches the socket the production way, through SSH
stream-local forwarding from the load balancer host; the tests also read it
directly (`command`, `admin_state`, `stat`) to check what the orchestrator did.

No `retries`/`option redispatch` tuning: a request sent to a server that is
going away must fail visibly, or "0 failed" would prove nothing. Servers have
no health checks: taking a server out is the drain driver's job here.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from orchestrator.minicloud.layout import free_ports
from tests.integration.servers import Servers, stop_process

ADDRESS = "127.0.0.1"
START_DEADLINE = 10.0
# `show servers state`: srv_admin_state bits (HAProxy's SRV_ADMF_*)
FORCED_MAINT = 0x01
FORCED_DRAIN = 0x08


class RealHAProxy:
    def __init__(
        self,
        servers: Servers,
        directory: Path,
        backends: Mapping[str, int | tuple[str, int]],
        *,
        backend: str = "api",
        port: int | None = None,
    ) -> None:
        """`backends`: server name -> port on 127.0.0.1, or (address, port)."""
        self.servers = servers
        self.directory = directory
        self.backends = {
            name: (ADDRESS, spec) if isinstance(spec, int) else spec
            for name, spec in backends.items()
        }
        self.backend = backend
        self.port = port if port is not None else free_ports(1)[0]
        # a UNIX socket path must fit in 108 bytes; pytest's tmp paths may not
        self._socket_dir = Path(tempfile.mkdtemp(prefix="haproxy-"))
        self.socket = self._socket_dir / "admin.sock"
        self.config = directory / "haproxy.cfg"
        self.log = directory / "haproxy.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{ADDRESS}:{self.port}"

    def config_text(self) -> str:
        servers = "\n".join(
            f"    server {name} {address}:{port}" for name, (address, port) in self.backends.items()
        )
        return f"""\
global
    stats socket {self.socket} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # one request per server connection: a drained server's sessions really end
    option http-server-close
    http-reuse never

frontend public
    bind {ADDRESS}:{self.port}
    default_backend {self.backend}

backend {self.backend}
    balance roundrobin
{servers}
"""

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.config_text())
        with self.log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                self.servers.haproxy,
                *("-f", str(self.config), "-db"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_DEADLINE
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(
                    f"haproxy exited {self._process.returncode}:\n{self.log.read_text()}"
                )
            try:
                if "\n" in await self.command("show info"):
                    _, writer = await asyncio.open_connection(ADDRESS, self.port)
                    writer.close()
                    await writer.wait_closed()
                    return
            except OSError:
                pass
            if loop.time() > deadline:
                raise RuntimeError(f"haproxy did not come up:\n{self.log.read_text()}")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        process, self._process = self._process, None
        try:
            await stop_process(process, 5)
        finally:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    # --- the runtime API, read directly by the tests ---------------------------------

    async def command(self, line: str) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode(errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stat(self) -> dict[str, dict[str, str]]:
        """`show stat` rows of the backend, by server name (and FRONTEND/BACKEND)."""
        text = (await self.command("show stat")).lstrip("# ")
        return {
            row["svname"]: row
            for row in csv.DictReader(io.StringIO(text))
            if row.get("pxname") == self.backend
        }

    async def admin_state(self, server: str) -> str:
        """`ready`, `drain` or `maint`, from `show servers state`."""
        text = await self.command(f"show servers state {self.backend}")
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 6 and not line.startswith("#") and fields[3] == server:
                admin = int(fields[6])
                if admin & FORCED_MAINT:
                    return "maint"
                if admin & FORCED_DRAIN:
                    return "drain"
                return "ready"
        raise KeyError(f"haproxy has no server {self.backend}/{server}:\n{text}")
