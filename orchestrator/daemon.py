"""`orchestrator serve`: the long-running daemon.

Wiring, in this order: the listening socket is bound (a port that is taken
starts nothing), then the state directory's lock is taken, then the token
file, the journal, the manager and the HTTP app; starting the app resumes
every unfinished upgrade from the journal. SIGTERM
or SIGINT stop in two stages (uvicorn's `handle_exit`): the first lets the
running steps finish and be journaled while nothing new starts; a second
cancels them. Either way the journal lets the next daemon continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from orchestrator import eventloop, model, sdnotify, statedir
from orchestrator.api import keys
from orchestrator.api.app import AccessLogger, make_app
from orchestrator.api.endpoint import ADDRESS_FILE, DEFAULT_LISTEN, JOURNAL_FILE, TOKEN_FILE
from orchestrator.api.limits import Guard
from orchestrator.api.metrics import Metrics
from orchestrator.collector import Collector
from orchestrator.daemonconfig import load_config
from orchestrator.engine.manager import RemoteFactory, UpgradeManager
from orchestrator.errors import UsageError
from orchestrator.secrets import SecretStore
from orchestrator.store.base import Store
from orchestrator.store.journal import Journal
from orchestrator.store.role import LeaseSettings
from orchestrator.transport.slots import ConnectionLimit, check_max_connections
from orchestrator.transport.ssh import SSHPool

if TYPE_CHECKING:
    from orchestrator.peers import Peer

log = structlog.get_logger("orchestrator.daemon")

SHUTDOWN_GRACE = 5.0  # seconds open requests (event streams) get once the app stops
BACKLOG = 128  # aiohttp's own default for the sockets it binds
STORE_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    state_dir: Path
    listen: str = DEFAULT_LISTEN
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_body: int = 8 * 1024 * 1024
    config_file: Path | None = None
    # serve plain HTTP beyond loopback anyway (the token then travels in clear text)
    insecure_no_tls: bool = False
    # postgresql://...: a store shared with other daemons, one of which leads
    store: str | None = None
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    # the URL peers send clients to while this daemon leads (default: the listen address)
    advertise: str | None = None
    # SSH connections open at once (default: the config file's ssh.max_connections)
    ssh_max_connections: int | None = None

    @property
    def token_path(self) -> Path:
        return self.token_file or self.state_dir / TOKEN_FILE


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:8750``, ``[::1]:8750``, ``localhost:0`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, like {DEFAULT_LISTEN}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


def _url(address: object, tls: bool) -> str:
    assert isinstance(address, tuple)
    host, port = str(address[0]), int(address[1])
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def _write_address(state_dir: Path, url: str) -> None:
    tmp = state_dir / (ADDRESS_FILE + ".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n", encoding="utf-8")
    tmp.replace(state_dir / ADDRESS_FILE)


async def serve(config: ServeConfig) -> int:
    host, _ = parse_listen(config.listen)  # a bad address fails before anything is touched
    context = tls_context(config.tls_cert, config.tls_key)
    if context is None and not is_loopback(host) and not config.insecure_no_tls:
        raise UsageError(
            f"--listen {config.listen} reaches beyond loopback: give --tls-cert and --tls-key "
            "(bearer tokens must not travel in clear text), or --insecure-no-tls"
        )
    if config.store is not None and not config.store.startswith(STORE_SCHEMES):
        raise UsageError(
            f"--store {_scheme(config.store)}...: expected a PostgreSQL URL "
            "(postgresql://USER@HOST:PORT/DB); without --store the journal is SQLite in the "
            "state directory"
        )
    settings = load_config(config.config_file)
    ssh_limit = ConnectionLimit(
        settings.ssh.max_connections
        if config.ssh_max_connections is None
        else check_max_connections(config.ssh_max_connections, "--ssh-max-connections")
    )
    statedir.prepare(config.state_dir)
    with bound_socket(config.listen) as sock, statedir.lock(config.state_dir):
        token = statedir.load_or_create_token(config.token_path)
        metrics = Metrics()
        address = config.advertise or _url(sock.getsockname(), context is not None)
        async with _store(config, address) as (journal, peer):
            manager = UpgradeManager(
                journal,
                remote_factory=ssh_pools(ssh_limit),
                on_event=metrics.observe,
                gate=peer.gate if peer else None,
            )
            if peer is not None:
                peer.attach(manager)
            app = make_app(
                manager,
                settings.tokens_with(token),
                role=peer.leadership if peer is not None else None,
                metrics=metrics,
                max_body=config.max_body,
                secret_sources=settings.secrets,
                streams_per_token=settings.limits.streams_per_token,
            )
            limits = settings.limits
            guard = Guard(limits.max_connections, limits.header_timeout, limits.body_timeout)
            await _run(app, manager, config, context=context, sock=sock, guard=guard, peer=peer)
    log.info("stopped")
    return 0


def ssh_pools(limit: ConnectionLimit) -> RemoteFactory:
    """An SSH pool per upgrade, every one within the daemon's one connection limit."""

    def pool(plan: model.Plan, secrets: SecretStore) -> SSHPool:
        return SSHPool(plan.hosts, secrets, limit=limit)

    return pool


def _scheme(url: str) -> str:
    return url.split(":", 1)[0] + ":" if ":" in url else url[:20]


@contextlib.asynccontextmanager
async def _store(config: ServeConfig, address: str) -> AsyncIterator[tuple[Store, Peer | None]]:
    """The journal: SQLite in the state directory, or a shared PostgreSQL one
    (then with this daemon's peer: its leadership among the others)."""
    if config.store is None:
        path = config.state_dir / JOURNAL_FILE
        for suffix in ("", "-wal", "-shm"):  # written 0644 by releases before this one
            statedir.tighten(path.with_name(path.name + suffix))
        journal = await Journal.open(path)
        try:
            yield journal, None
        finally:
            await journal.close()
        return
    # only this daemon's second kind of store needs the driver
    from orchestrator.peers import Peer  # noqa: PLC0415
    from orchestrator.store.postgres import PostgresJournal  # noqa: PLC0415

    shared = await PostgresJournal.open(config.store)
    try:
        yield shared, Peer(shared, config.store, address, config.lease)
    finally:
        await shared.close()


@contextlib.contextmanager
def bound_socket(listen: str) -> Iterator[socket.socket]:
    """The listening socket, bound before anything else happens: a daemon that
    cannot serve its API must not resume an upgrade that nobody could stop."""
    host, port = parse_listen(listen)
    try:
        sock = socket.create_server(
            (host, port),
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            backlog=BACKLOG,
        )
    except OSError as exc:
        raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    try:
        yield sock
    finally:
        sock.close()


async def _run(
    app: web.Application,
    manager: UpgradeManager,
    config: ServeConfig,
    *,
    context: ssl.SSLContext | None,
    sock: socket.socket,
    guard: Guard,
    peer: Peer | None = None,
) -> None:
    host, _ = parse_listen(config.listen)
    runner = web.AppRunner(
        app, access_log_class=AccessLogger, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
    )
    await runner.setup()  # starts the manager: unfinished upgrades resume here
    server: asyncio.Server | None = None
    try:
        assert runner.server is not None
        # aiohttp's protocol behind the connection cap and the request deadlines
        server = await asyncio.get_running_loop().create_server(
            guard.wrap(runner.server), sock=sock, ssl=context, backlog=BACKLOG
        )
        eventloop.prefer_fd(sock.fileno())  # new API connections first too
        url = _url(sock.getsockname(), context is not None)
        _write_address(config.state_dir, url)
        if not is_loopback(host) and context is None:
            log.warning("--insecure-no-tls: listening beyond loopback, tokens travel in clear text")
        log.info(
            "listening",
            url=url,
            token_file=str(config.token_path),
            state_dir=str(config.state_dir),
            upgrades=len(manager.upgrades),
            store=manager.journal.where,
        )
        if peer is not None:
            peer.start()  # a standby until it takes the lease
        # what is loaded by now is frozen out of the full passes, and they run
        # at most every 30 s (see orchestrator.collector)
        collector = Collector()
        collector.start()
        sdnotify.notify(f"READY=1\nSTATUS=listening on {url}")
        pinging = asyncio.create_task(sdnotify.watchdog(), name="watchdog")
        try:
            await _until_stopped(app, manager)
        finally:
            pinging.cancel()
            await asyncio.gather(pinging, return_exceptions=True)
            await collector.stop()
    finally:
        if peer is not None:
            await peer.stop()
        with contextlib.suppress(FileNotFoundError):
            (config.state_dir / ADDRESS_FILE).unlink()
        if server is not None:
            server.close()
        await runner.cleanup()


async def _until_stopped(app: web.Application, manager: UpgradeManager) -> None:
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[signal.Signals] = asyncio.Queue()
    watched = (signal.SIGTERM, signal.SIGINT)
    for sig in watched:
        loop.add_signal_handler(sig, received.put_nowait, sig)
    try:
        first = await received.get()
        sdnotify.notify("STOPPING=1")
        log.info(
            "stopping: running steps finish and are journaled; signal again to cancel them",
            signal=first.name,
        )
        app[keys.STOPPING].set()
        graceful = asyncio.create_task(manager.stop(), name="stop-graceful")
        second = asyncio.create_task(received.get(), name="second-signal")
        done, _ = await asyncio.wait({graceful, second}, return_when=asyncio.FIRST_COMPLETED)
        if second in done:
            log.warning("second signal: cancelling running steps", signal=second.result().name)
            await manager.stop(cancel=True)
            await graceful
        else:
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)
            graceful.result()
    finally:
        for sig in watched:
            loop.remove_signal_handler(sig)
