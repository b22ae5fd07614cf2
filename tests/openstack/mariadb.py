"""A real MariaDB server for the tier, on a private datadir, socket and port.

Debian's ``mariadb-server`` package, never its system service: the tier runs
``mariadb-install-db`` into a temporary directory and starts ``mariadbd``
on loopback with ``--no-defaults`` (no file of the machine's is read), then
creates one database and user per service, as a deployment does.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from orchestrator.minicloud.layout import free_ports
from tests.integration.servers import stop_process
from tests.openstack.tier import Programs

ADDRESS = "127.0.0.1"
START_DEADLINE = 60.0


class MariaDB:
    def __init__(self, programs: Programs, directory: Path) -> None:
        self.programs = programs
        self.directory = directory
        self.datadir = directory / "data"
        self.port = free_ports(1)[0]
        # a UNIX socket path must fit in 108 bytes; pytest's tmp paths may not
        self._socket_dir = Path(tempfile.mkdtemp(prefix="mariadb-"))
        self.socket = self._socket_dir / "mysqld.sock"
        self.log = directory / "mariadb.err"
        self._process: asyncio.subprocess.Process | None = None

    def _user(self) -> tuple[str, ...]:
        # mariadbd refuses to run as root unless told to
        return ("--user=root",) if os.geteuid() == 0 else ()

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await self._exec(
            self.programs.mariadb_install_db,
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            *self._user(),
        )
        self._process = await asyncio.create_subprocess_exec(
            self.programs.mariadbd,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            f"--bind-address={ADDRESS}",
            f"--pid-file={self.directory / 'mariadb.pid'}",
            f"--log-error={self.log}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            # a test database: durability per second is enough, and much faster
            "--innodb-flush-log-at-trx-commit=2",
            "--max-connections=500",
            *self._user(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_DEADLINE
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(f"mariadbd exited {self._process.returncode}:\n{self.errors()}")
            try:
                await self.sql("SELECT 1")
                return
            except RuntimeError:
                if loop.time() > deadline:
                    raise RuntimeError(f"mariadbd did not come up:\n{self.errors()}") from None
                await asyncio.sleep(0.1)

    def errors(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    async def close(self) -> None:
        process, self._process = self._process, None
        try:
            await stop_process(process, 30)
        finally:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def create_database(self, name: str) -> str:
        """A database and a user of that name with a fresh password: its SQLAlchemy URL."""
        password = secrets.token_hex(12)
        await self.sql(
            f"CREATE DATABASE {name} CHARACTER SET utf8mb4; "
            f"CREATE USER '{name}'@'{ADDRESS}' IDENTIFIED BY '{password}'; "
            f"GRANT ALL PRIVILEGES ON {name}.* TO '{name}'@'{ADDRESS}';"
        )
        return f"mysql+pymysql://{name}:{password}@{ADDRESS}:{self.port}/{name}?charset=utf8mb4"

    async def sql(self, statements: str, database: str | None = None) -> str:
        """Run SQL as root over the socket; tab-separated rows, no header."""
        args = ["--no-defaults", f"--socket={self.socket}", "-u", "root", "-N", "-B"]
        if database:
            args.append(database)
        return await self._exec(self.programs.mariadb, *args, "-e", statements)

    async def _exec(self, program: str, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(
                f"{Path(program).name} failed (exit {process.returncode}): "
                f"{err.decode(errors='replace')[-2000:]}"
            )
        return out.decode(errors="replace")
