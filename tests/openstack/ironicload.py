"""Checked Ironic API traffic through the load balancer for the whole upgrade.

An iteration is what an operator's tooling does to a new node, each answer
checked:

1. ``POST /v1/nodes`` (fake-hardware): 201, the node named as asked
   (the API hands the creation to a conductor over JSON-RPC);
2. ``GET /v1/nodes/NAME``: 200, the same uuid;
3. ``PUT /v1/nodes/NAME/states/power`` ``{"target": "power on"}``: 202
   (an RPC to the node's conductor, which powers it on in the background);
4. ``GET /v1/nodes/NAME`` until it reads ``power on`` with no target left,
   naming the conductor that did it (a bounded number of reads).

Failures are counted by kind (`connection`, `timeout`, `status NNN`,
`bad json`, `mismatch`, `power`), latencies per request; the report has
requests, failures by kind, p50 and p99 (`LoadReport`).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from orchestrator.minicloud.loadgen import LoadFailure, LoadGenerator

MICROVERSION = "1.80"  # served by both releases (2026.1 serves up to 1.111)
POWER_READS = 40
POWER_READ_INTERVAL = 0.25
_runs = itertools.count(1)


class IronicLoad(LoadGenerator):
    def __init__(self, url: str, *, timeout: float = 45.0, **options: Any) -> None:
        # an API call may wait out a conductor restart ([json_rpc] connect_retries)
        super().__init__(
            url,
            headers={"X-OpenStack-Ironic-API-Version": MICROVERSION},
            timeout=timeout,
            **options,
        )
        self._prefix = f"load{next(_runs)}"
        self.powered = 0  # nodes seen powered on, the RPC round trip done

    async def _iteration(self) -> None:
        self.iterations += 1
        name = f"{self._prefix}-{self.iterations}"
        try:
            created = await self._request(
                "POST", "/v1/nodes", 201, {"name": name, "driver": "fake-hardware"}
            )
            if not isinstance(created, dict) or created.get("name") != name:
                raise LoadFailure("mismatch", f"POST /v1/nodes {name}: answered {created!r:.200}")
            uuid = created.get("uuid")
            read = await self._request("GET", f"/v1/nodes/{name}", 200, None)
            if not isinstance(read, dict) or read.get("uuid") != uuid or uuid is None:
                raise LoadFailure("mismatch", f"node {name}: created {uuid}, read {read!r:.200}")
            await self._request(
                "PUT", f"/v1/nodes/{name}/states/power", 202, {"target": "power on"}
            )
            await self._powered_on(name)
        except LoadFailure as failure:
            self._fail(failure)

    async def _powered_on(self, name: str) -> None:
        node: Any = None
        for _ in range(POWER_READS):
            node = await self._request("GET", f"/v1/nodes/{name}", 200, None)
            if not isinstance(node, dict):
                raise LoadFailure("bad json", f"GET /v1/nodes/{name}: {node!r:.200}")
            if node.get("power_state") == "power on" and node.get("target_power_state") is None:
                if not node.get("conductor"):
                    raise LoadFailure("mismatch", f"node {name} powered on by no conductor")
                self.powered += 1
                return
            if node.get("last_error"):
                raise LoadFailure("power", f"node {name}: {node['last_error']}")
            await asyncio.sleep(POWER_READ_INTERVAL)
        state = (node or {}).get("power_state"), (node or {}).get("target_power_state")
        raise LoadFailure("power", f"node {name} not powered on after {POWER_READS} reads: {state}")
