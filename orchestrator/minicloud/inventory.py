"""An orchestrator inventory for a minicloud: its hosts, roles, checks and load balancer.

Every host is 127.0.0.1 with its service port as the host variable `port`.
APIs drain through the minicloud load balancer's runtime API (TCP); every
role reports its version over `GET /` and its health over `/healthcheck`.
SSH settings are the caller's: the per-host SSH ports of whatever serves the
hosts (every host is 127.0.0.1, so each needs its own port) and optionally
the inventory's `ssh:` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from orchestrator.minicloud.layout import LOOPBACK, Cloud

LB_NAME = "minicloud-lb"


def inventory_data(
    cloud: Cloud,
    *,
    ssh_ports: Mapping[str, int],
    ssh: Mapping[str, Any] | None = None,
    from_version: str = "1.0",
    health_passes: int = 2,
    health_deadline: str = "30s",
    name: str = "minicloud",
) -> dict[str, Any]:
    def http(path: str) -> str:
        return f"http://{{{{ host.address }}}}:{{{{ port }}}}{path}"

    def role(drain: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "version": {"http": http("/"), "json_path": "version"},
            "health": [{"http": http("/healthcheck"), "expect_status": 200}],
            "health_policy": {
                "passes": health_passes,
                "interval": "200ms",
                "deadline": health_deadline,
            },
        }
        if drain:
            spec["drain"] = {
                "load_balancer": LB_NAME,
                "server": "{{ host.name }}",
                "timeout": "30s",
            }
        return spec

    hosts: dict[str, Any] = {}
    for host in cloud.hosts:
        (service,) = host.roles
        entry: dict[str, Any] = {
            "address": LOOPBACK,
            "roles": list(host.roles),
            "vars": {"port": host.ports[service]},
        }
        hosts[host.name] = {**entry, "ssh": {"port": ssh_ports[host.name]}}
    data: dict[str, Any] = {
        "name": name,
        "vars": {"from_version": from_version},
        "load_balancers": {
            LB_NAME: {
                "driver": "haproxy",
                "address": f"{LOOPBACK}:{cloud.lb_api_port}",
                "backend": "api",
            }
        },
        "roles": {
            "conductor": role(drain=False),
            "api": role(drain=True),
            "compute": role(drain=False),
        },
        "hosts": hosts,
    }
    if ssh is not None:
        data = {"ssh": dict(ssh), **data}
    return data


def inventory_yaml(cloud: Cloud, **options: Any) -> str:
    """`inventory_data` as YAML text, for a file `orchestrator plan -i` reads."""
    return yaml.safe_dump(inventory_data(cloud, **options), sort_keys=False)
