"""`orchestrator minicloud up | status`: run a minicloud by hand and look at it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any, TextIO

from orchestrator.minicloud import db
from orchestrator.minicloud.control import run as run_on_host
from orchestrator.minicloud.embedded import embedded_cloud
from orchestrator.minicloud.layout import (
    load_cloud,
    read_host_config,
    read_release,
    staged_releases,
)


async def up(directory: Path, *, conductors: int, apis: int, computes: int, out: TextIO) -> int:
    """Start a cloud, print its inventory path, run until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with embedded_cloud(
            directory, conductors=conductors, apis=apis, computes=computes
        ) as ec:
            out.write(f"{ec.inventory_path}\n")
            out.write(
                f"# minicloud is up: API through the load balancer at {ec.lb.url}, "
                f"runtime API at {ec.lb.api_address}\n"
                f"# plan it:    orchestrator plan -i {ec.inventory_path} -p minicloud --to 2.0\n"
                f"# look at it: orchestrator minicloud status --dir {directory}\n"
                "# Ctrl-C stops it.\n"
            )
            out.flush()
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


async def status_data(directory: Path) -> dict[str, Any]:
    cloud = load_cloud(directory)
    hosts: dict[str, Any] = {}

    async def one(name: str) -> None:
        host = cloud.host(name)
        config = read_host_config(host.directory)
        entry: dict[str, Any] = {
            "roles": list(host.roles),
            "installed": read_release(host.directory),  # what its services point at
            "staged": list(staged_releases(host.directory)),  # the code on the host
            "pin": config.pin,
        }
        result = await run_on_host(cloud, host, "minicloud-ctl status --json")
        with contextlib.suppress(ValueError):
            entry["services"] = json.loads(result.output or "null")
        hosts[name] = entry

    await asyncio.gather(*(one(h.name) for h in cloud.hosts))
    with db.connection(cloud.db) as conn:
        contracted = not db.has_column(conn, "instances", "host")
    rows = db.services(cloud.db)
    return {
        "directory": str(cloud.directory),
        "hosts": {name: hosts[name] for name in sorted(hosts)},
        "services": [
            {"binary": r.binary, "host": r.host, "version": r.version, "pin": r.pin} for r in rows
        ],
        "schema": {"contracted": contracted, **db.counts(cloud.db)},
    }


async def status(directory: Path, *, as_json: bool, out: TextIO) -> int:
    data = await status_data(directory)
    if as_json:
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    out.write(f"minicloud at {data['directory']}\n")
    for name, host in data["hosts"].items():
        pin = host["pin"] or "-"
        staged = ",".join(host["staged"])
        out.write(
            f"  {name:8} {','.join(host['roles']):10} installed {host['installed']} "
            f"(staged {staged})  pin {pin}\n"
        )
    for name, host in data["hosts"].items():
        for row in host.get("services") or []:
            # what runs against what the host's files say: a difference is a
            # change (or an undo) that no restart has made real yet
            stale = row["running"] and (
                row["pin_running"] != row["pin_configured"]
                or row["release_running"] != row["release_installed"]
            )
            out.write(
                f"  service {row['service']:9} on {name:8} "
                f"{'running' if row['running'] else 'stopped':7} "
                f"release {row['release_running'] or '-'} (installed {row['release_installed']}) "
                f"pin running {row['pin_running'] or '-'} configured "
                f"{row['pin_configured'] or '-'}{'  (restart to apply)' if stale else ''}\n"
            )
    schema = data["schema"]
    out.write(f"  schema: {'contracted' if schema['contracted'] else 'not contracted'}; ")
    out.write(", ".join(f"{k} {v}" for k, v in schema.items() if k != "contracted") + "\n")
    return 0
