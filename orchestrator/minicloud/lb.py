"""A small TCP load balancer with the part of HAProxy's runtime API a drain needs.

Round robin over the servers in state `ready`. `drain`: no new connections,
established ones finish; `maint`: no new connections either (established
ones still finish, as in HAProxy). `scur` counts the proxied connections
open right now, which is what `orchestrator.actions.drain` waits on.

The runtime API listens on its own TCP port, non-interactive like HAProxy's
`stats socket` without `prompt`: read one line (commands may be joined with
`;`), answer, close.

```
show stat                                   CSV: "# pxname,svname,qcur,qmax,scur,..."
set server BACKEND/SERVER state ready|drain|maint      empty answer on success
disable server BACKEND/SERVER / enable server ...      = state maint / state ready
```

Run in-process (`async with LoadBalancer(...)`) or as a process:
`python -m orchestrator.minicloud.lb CLOUD_DIR` fronts that cloud's API hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from orchestrator.minicloud.layout import LOOPBACK, Cloud, load_cloud

STATES = ("ready", "drain", "maint")
STATUS = {"ready": "UP", "drain": "DRAIN", "maint": "MAINT"}
# the leading columns of HAProxy's `show stat`, in its order
FIELDS = (
    *("pxname", "svname", "qcur", "qmax", "scur", "smax", "slim", "stot", "bin", "bout"),
    *("dreq", "dresp", "ereq", "econ", "eresp", "wretr", "wredis", "status", "weight"),
    *("act", "bck", "chkfail", "chkdown", "lastchg", "downtime", "qlimit", "pid", "iid"),
    *("sid", "throttle", "lbtot", "tracked", "type"),
)
CHUNK = 65536


@dataclass(slots=True)
class Server:
    """A backend server and its counters (mutable: the proxy updates them)."""

    name: str
    host: str
    port: int
    state: str = "ready"
    scur: int = 0
    smax: int = 0
    stot: int = 0
    econ: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class LoadBalancer:
    def __init__(
        self,
        servers: Sequence[tuple[str, str, int]],
        backend: str = "api",
        host: str = LOOPBACK,
        port: int = 0,
        api_port: int = 0,
    ) -> None:
        self.backend = backend
        self.servers = {name: Server(name, h, p) for name, h, p in servers}
        self._order = list(self.servers)
        self._next = 0
        self._bind = (host, port, api_port)
        self._frontend: asyncio.Server | None = None
        self._api: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @classmethod
    def for_cloud(cls, cloud: Cloud, *, fixed_ports: bool = True) -> LoadBalancer:
        """Fronts every API host of `cloud`, on the ports create_cloud reserved."""
        servers = [(h.name, LOOPBACK, h.ports["api"]) for h in cloud.by_role("api")]
        if not fixed_ports:
            return cls(servers)
        return cls(servers, port=cloud.lb_port, api_port=cloud.lb_api_port)

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        host, port, api_port = self._bind
        self._frontend = await asyncio.start_server(self._proxy, host, port)
        self._api = await asyncio.start_server(self._runtime_api, host, api_port)

    async def close(self) -> None:
        for server in (self._frontend, self._api):
            if server is not None:
                server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in (self._frontend, self._api):
            if server is not None:
                await server.wait_closed()

    async def __aenter__(self) -> LoadBalancer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @staticmethod
    def _address(server: asyncio.Server | None) -> tuple[str, int]:
        if server is None:
            raise RuntimeError("the load balancer is not started")
        host, port = server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self._address(self._frontend)
        return f"http://{host}:{port}"

    @property
    def api_address(self) -> str:
        """`host:port` of the runtime API, as `tcp_runtime_api` takes it."""
        host, port = self._address(self._api)
        return f"{host}:{port}"

    # --- proxy -------------------------------------------------------------

    def _pick(self) -> Server | None:
        for _ in range(len(self._order)):
            server = self.servers[self._order[self._next % len(self._order)]]
            self._next += 1
            if server.state == "ready":
                return server
        return None

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        server = self._pick()
        try:
            if server is None:
                return  # no server: close, like HAProxy's 503 in TCP mode
            server.scur += 1
            server.stot += 1
            server.smax = max(server.smax, server.scur)
            try:
                up_reader, up_writer = await asyncio.open_connection(server.host, server.port)
            except OSError:
                server.econ += 1
                return
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer, server, "bytes_in"),
                    self._pipe(up_reader, writer, server, "bytes_out"),
                )
            finally:
                up_writer.close()
                with contextlib.suppress(OSError):
                    await up_writer.wait_closed()
        finally:
            if server is not None:
                server.scur -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._connections.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server, count: str
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                setattr(server, count, getattr(server, count) + len(data))
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.close()  # a reset on one side ends both directions

    # --- runtime API -------------------------------------------------------

    async def _runtime_api(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5.0)
            answers = [self.command(c) for c in line.decode(errors="replace").split(";")]
            writer.write("".join(answers).encode())
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def command(self, line: str) -> str:
        """One runtime API command; the answer as HAProxy would write it."""
        words = line.split()
        if words[:2] == ["show", "stat"]:
            return self.show_stat()
        if len(words) == 5 and words[:2] == ["set", "server"] and words[3] == "state":
            return self._set(words[2], words[4])
        if len(words) == 3 and words[0] in ("enable", "disable") and words[1] == "server":
            return self._set(words[2], "ready" if words[0] == "enable" else "maint")
        if not words:
            return ""
        return (
            "Unknown command. Please enter one of the following commands only :\n"
            "  show stat : report counters for each proxy and server\n"
            "  set server <bk>/<srv> state [ready|drain|maint] : change a server's state\n"
            "  enable server / disable server <bk>/<srv> : state ready / maint\n\n"
        )

    def _set(self, target: str, state: str) -> str:
        backend, _, name = target.partition("/")
        if not name:
            return "Require 'backend/server'.\n"
        if backend != self.backend:
            return "No such backend.\n"
        server = self.servers.get(name)
        if server is None:
            return "No such server.\n"
        if state not in STATES:
            return "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n"
        server.state = state
        return "\n"

    def show_stat(self) -> str:
        def row(**values: object) -> str:
            return ",".join(str(values.get(f, "")) for f in FIELDS)

        servers = list(self.servers.values())
        up = [s for s in servers if s.state != "maint"]
        lines = [
            "# " + ",".join(FIELDS),
            row(
                pxname=self.backend,
                svname="FRONTEND",
                scur=sum(s.scur for s in servers),
                stot=sum(s.stot for s in servers),
                status="OPEN",
                type=0,
            ),
        ]
        for i, s in enumerate(servers, start=1):
            lines.append(
                row(
                    pxname=self.backend,
                    svname=s.name,
                    qcur=0,
                    qmax=0,
                    scur=s.scur,
                    smax=s.smax,
                    stot=s.stot,
                    bin=s.bytes_in,
                    bout=s.bytes_out,
                    econ=s.econ,
                    status=STATUS[s.state],
                    weight=1 if s.state == "ready" else 0,
                    act=1,
                    bck=0,
                    sid=i,
                    type=2,
                )
            )
        lines.append(
            row(
                pxname=self.backend,
                svname="BACKEND",
                qcur=0,
                scur=sum(s.scur for s in servers),
                stot=sum(s.stot for s in servers),
                econ=sum(s.econ for s in servers),
                status="UP" if up else "DOWN",
                weight=sum(1 for s in servers if s.state == "ready"),
                act=len(up),
                type=1,
            )
        )
        return "\n".join(lines) + "\n\n"


async def serve(cloud_dir: Path) -> None:
    async with LoadBalancer.for_cloud(load_cloud(cloud_dir)) as lb:
        print(f"frontend {lb.url}, runtime API {lb.api_address}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.minicloud.lb")
    parser.add_argument("cloud_dir", type=Path, help="a directory made by create_cloud")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    asyncio.run(serve(args.cloud_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
