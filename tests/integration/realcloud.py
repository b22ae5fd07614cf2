"""A whole minicloud behind real servers: the twin of `orchestrator.minicloud.embedded`.

Each minicloud host is served by its own real sshd; one more host, `lb-1`,
is the load balancer's machine: the orchestrator reaches HAProxy's runtime
API socket through SSH stream-local forwarding from it, as it would in
production. A real HAProxy fronts the API hosts; the load generator sends
its traffic through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.minicloud.control import start_cloud, stop_cloud
from orchestrator.minicloud.embedded import INVENTORY_FILE, host_env, inject_faults
from orchestrator.minicloud.inventory import LB_NAME, inventory_data
from orchestrator.minicloud.layout import Cloud, create_cloud
from tests.integration.realhaproxy import RealHAProxy
from tests.integration.realsshd import RealSSHHosts
from tests.integration.servers import Servers
from tests.loadrun import UpgradeRun, run_under_load

LB_HOST = "lb-1"


@dataclass(frozen=True, slots=True)
class RealCloud:
    cloud: Cloud
    hosts: RealSSHHosts
    haproxy: RealHAProxy
    inventory_path: Path

    @property
    def inventory_text(self) -> str:
        return self.inventory_path.read_text(encoding="utf-8")


def real_inventory(
    cloud: Cloud,
    hosts: RealSSHHosts,
    haproxy: RealHAProxy,
    *,
    health_passes: int,
    health_deadline: str = "30s",
) -> dict[str, Any]:
    """minicloud's inventory, with the load balancer reached over SSH on `lb-1`."""
    data = inventory_data(
        cloud,
        ssh_ports={name: hosts.port(name) for name in hosts.names},
        ssh={
            "user": hosts.user,
            "key": str(hosts.client_key_path),
            "known_hosts": str(hosts.known_hosts_path),
            "verify_host_keys": True,
            "connect_timeout": "10s",
            "command_timeout": "60s",
        },
        health_passes=health_passes,
        health_deadline=health_deadline,
    )
    data["load_balancers"][LB_NAME] = {
        "driver": "haproxy",
        "host": LB_HOST,
        "socket": str(haproxy.socket),
        "backend": haproxy.backend,
    }
    data["hosts"][LB_HOST] = {
        "address": "127.0.0.1",
        "roles": [],
        "ssh": {"port": hosts.port(LB_HOST)},
    }
    return data


@contextlib.asynccontextmanager
async def real_cloud(
    servers: Servers,
    directory: Path,
    *,
    conductors: int = 2,
    apis: int = 2,
    computes: int = 3,
    faults: Mapping[str, list[str]] | None = None,
    health_passes: int = 2,
    health_deadline: str = "30s",
) -> AsyncIterator[RealCloud]:
    """A fresh cloud at release 1.0, every service running, each host behind its
    own sshd, the APIs behind HAProxy; everything stopped on exit."""
    cloud = create_cloud(directory, conductors=conductors, apis=apis, computes=computes)
    inject_faults(cloud, faults or {})
    host_dirs = {h.name: h.directory for h in cloud.hosts}
    host_dirs[LB_HOST] = directory / LB_HOST
    hosts = RealSSHHosts(
        servers, directory / "sshd", list(host_dirs), host_dirs=host_dirs, env=host_env(cloud)
    )
    try:
        await hosts.start()
        await start_cloud(cloud)
        haproxy = RealHAProxy(
            servers,
            directory / "haproxy",
            {h.name: h.ports["api"] for h in cloud.by_role("api")},
            port=cloud.lb_port,
        )
        try:
            await haproxy.start()
            text = yaml.safe_dump(
                real_inventory(
                    cloud,
                    hosts,
                    haproxy,
                    health_passes=health_passes,
                    health_deadline=health_deadline,
                ),
                sort_keys=False,
            )
            inventory_path = directory / INVENTORY_FILE
            inventory_path.write_text(text, encoding="utf-8")
            yield RealCloud(cloud, hosts, haproxy, inventory_path)
        finally:
            await haproxy.close()
    finally:
        try:
            await stop_cloud(cloud)
        finally:
            await hosts.close()


async def run_upgrade(rc: RealCloud, journal_path: Path, **options: Any) -> UpgradeRun:
    """`tests.loadrun.run_under_load` with the load sent through the real HAProxy."""
    return await run_under_load(rc.inventory_text, rc.haproxy.url, journal_path, **options)
