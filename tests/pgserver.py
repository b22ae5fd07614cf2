"""A real PostgreSQL server for the tests and benches, on a private data
directory, socket directory and port.

Debian's ``postgresql`` package, never its system service: `initdb` into a
temporary directory, then `postgres` on loopback with every setting given on
its command line. PostgreSQL refuses to run as root; as root the server runs
as the package's ``postgres`` user, which owns the temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from orchestrator.minicloud.layout import free_ports

PACKAGES = "postgresql"
INSTALL_HINT = f"install with: sudo apt-get install -y {PACKAGES} (what .ci/run does)"
START_DEADLINE = 60.0
ADDRESS = "127.0.0.1"
SUPERUSER = "orchestrator"


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian keeps them off PATH)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    for directory in reversed(candidates):
        if all(os.access(Path(directory) / name, os.X_OK) for name in ("initdb", "postgres")):
            return Path(directory)
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(os.path.realpath(initdb)).parent
    return None


class PostgresServer:
    """`with PostgresServer.started() as pg: url = pg.new_database()`."""

    def __init__(self, bin_dir: Path, *, durable: bool) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        self.port = free_ports(1)[0]
        # short: the socket's path must fit in 108 bytes
        self.directory = Path(tempfile.mkdtemp(prefix="pg-"))
        self.datadir = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.directory.chmod(0o700)

    @classmethod
    @contextlib.contextmanager
    def started(cls, bin_dir: Path, *, durable: bool = False) -> Iterator[PostgresServer]:
        server = cls(bin_dir, durable=durable)
        try:
            server.start()
            yield server
        finally:
            server.stop()

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            argv,
            user=self._user,
            group=self._user,
            extra_groups=[] if self._user else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            cwd=self.directory,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(argv[0]).name} failed (exit {done.returncode}): "
                f"{done.stderr.decode(errors='replace')[-2000:]}"
            )

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            "--auth=trust",  # loopback and a 0700 socket directory, for one test run
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = {
            "listen_addresses": ADDRESS,
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "max_connections": "200",
            "shared_buffers": "32MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        if not self.durable:  # tests: the server is never killed, only the daemons
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.datadir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        log = self.log.open("ab")
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.log, entry.pw_uid, entry.pw_gid)
        self._process = subprocess.Popen(
            argv,
            user=self._user,
            group=self._user,
            extra_groups=[] if self._user else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=self.directory,
        )
        log.close()
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited {self._process.returncode}:\n{self.errors()}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not come up:\n{self.errors()}") from None
                time.sleep(0.1)

    def errors(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)  # fast shutdown
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{ADDRESS}:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database: its URL."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
