"""A whole minicloud on this machine: services, load balancer and one SSH
endpoint per host, plus the inventory that describes it.

Used by `orchestrator minicloud up`, `orchestrator demo`, end-to-end tests
and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.minicloud.control import start_cloud, stop_cloud
from orchestrator.minicloud.inventory import inventory_yaml
from orchestrator.minicloud.layout import FAULT_FILE, Cloud, create_cloud
from orchestrator.minicloud.lb import LoadBalancer
from orchestrator.minicloud.sshd import SSHHosts

INVENTORY_FILE = "inventory.yaml"


@dataclass(frozen=True, slots=True)
class EmbeddedCloud:
    cloud: Cloud
    hosts: SSHHosts
    lb: LoadBalancer
    inventory_path: Path

    @property
    def inventory_text(self) -> str:
        return self.inventory_path.read_text(encoding="utf-8")


def inject_faults(cloud: Cloud, faults: Mapping[str, list[str]]) -> None:
    """Write fault lines (e.g. `unhealthy-2.0`) into hosts' etc/fault."""
    for name, lines in faults.items():
        path = cloud.host(name).directory / FAULT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def host_env(cloud: Cloud) -> dict[str, str]:
    """What a host's shell needs: the cloud's commands (minicloud-ctl, ...) on PATH."""
    return {"PATH": f"{cloud.bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}


@contextlib.asynccontextmanager
async def embedded_cloud(
    directory: Path,
    *,
    conductors: int = 2,
    apis: int = 2,
    computes: int = 3,
    faults: Mapping[str, list[str]] | None = None,
    health_passes: int = 2,
    health_deadline: str = "30s",
) -> AsyncIterator[EmbeddedCloud]:
    """A fresh cloud at release 1.0, every service running, reachable over SSH;
    everything stopped on exit."""
    cloud = create_cloud(directory, conductors=conductors, apis=apis, computes=computes)
    inject_faults(cloud, faults or {})
    hosts = SSHHosts(
        directory / "ssh",
        [h.name for h in cloud.hosts],
        env=host_env(cloud),
        host_dirs={h.name: h.directory for h in cloud.hosts},
    )
    await hosts.start()
    try:
        await start_cloud(cloud)
        async with LoadBalancer.for_cloud(cloud) as lb:
            target = hosts.target(cloud.hosts[0].name)
            text = inventory_yaml(
                cloud,
                ssh_ports={h.name: hosts.port(h.name) for h in cloud.hosts},
                ssh={
                    "user": target.user,
                    "key": target.key,
                    "known_hosts": target.known_hosts,
                    "connect_timeout": "10s",
                    "command_timeout": "60s",
                },
                health_passes=health_passes,
                health_deadline=health_deadline,
            )
            inventory_path = directory / INVENTORY_FILE
            inventory_path.write_text(text, encoding="utf-8")
            yield EmbeddedCloud(cloud, hosts, lb, inventory_path)
    finally:
        try:
            await stop_cloud(cloud)
        finally:
            await hosts.close()
