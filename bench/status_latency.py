"""Latency of GET /v1/upgrades/{id} while an upgrade of 500 hosts runs.

Three processes, as in production: the in-process SSH hosts (tests.sshhosts,
500 servers on loopback, `sleep` served without a shell), the real daemon
(`orchestrator serve`), and this client. The upgrade rolls the 500 hosts in
batches of 10%, each host running three short steps, so the daemon is busy
journaling and folding events the whole time the status is read. In a cloud
the hosts are other machines; here their process runs at niceness 10
(`--hosts-nice`), so that serving 2,000 SSH servers takes the cores from the
daemon only when the daemon leaves them idle.

The client asks for the status document back to back on one kept-alive
connection (one request in flight, as an operator's `watch` or a dashboard
would), with the standard library's HTTP client as `orchestrator status`
does, and prints p50, p90, p99 and max, the number of requests, and the
document size; the same again for the requests made while the hosts were
probed (preflight: every host's first SSH connection) and while they were
rolled (running). Then it reads the finished upgrade's document, to show what
moving it over loopback costs with an idle daemon, with a new connection each
time (`idle_daemon`) and with aiohttp's client (`idle_daemon_aiohttp`). The
load average at the end says how busy the machine was with other work
meanwhile.

For `make bench` it prints `figure status_p50_<hosts> ... ms <2` and
`figure status_p99_<hosts> ... ms <20` (bench/figures.py).

    .venv/bin/python bench/status_latency.py [--hosts 500] [--steps 3] [--sleep 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from bench.figures import figure
from orchestrator.minicloud.loadgen import percentile
from tests.farm import Farm, daemon, ssh_farm


def playbook(steps: int, sleep: float) -> str:
    lines = [
        "name: latency",
        "phases:",
        "  - name: roll",
        "    rolling: app",
        '    batch: "10%"',
        "    health: false",
        "    verify_version: false",
        "    steps:",
    ]
    lines += [f'      - {{run: "sleep {sleep}", idempotent: true}}' for _ in range(steps)]
    return "\n".join(lines) + "\n"


def inventory(farm: Farm) -> str:
    data = {
        "name": "latency-bench",
        "ssh": {"user": farm.user},
        "vars": {"from_version": "1.0"},
        "hosts": farm.inventory_hosts(),
    }
    return yaml.safe_dump(data, sort_keys=False)


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    samples: list[float] = []
    sizes: list[int] = []
    by_state: dict[str, list[float]] = {}
    idle: list[float] = []
    idle_aiohttp: list[float] = []
    # in a cloud the hosts are other machines: here they yield the cores
    async with (
        ssh_farm(tmp / "hosts", args.hosts, nice=args.hosts_nice) as farm,
        daemon(tmp / "state") as running,
    ):
        headers = {"Authorization": f"Bearer {running.endpoint.token}"}
        async with aiohttp.ClientSession(running.endpoint.url, headers=headers) as session:
            body = {
                "inventory": inventory(farm),
                "playbook": playbook(args.steps, args.sleep),
                "to_version": "2.0",
            }
            started = time.perf_counter()
            async with session.post("/v1/upgrades", json=body) as resp:
                created = await resp.json()
                assert resp.status == 201, created
            path = f"/v1/upgrades/{created['id']}"
            doc = await asyncio.to_thread(
                read_until_done,
                running.endpoint.url,
                headers,
                path,
                samples=samples,
                sizes=sizes,
                by_state=by_state,
            )
            wall = time.perf_counter() - started
            for _ in range(args.idle):
                idle.append(read(running.endpoint.url, headers, path)[0])
            for _ in range(args.idle):  # aiohttp's client, for comparison
                t0 = time.perf_counter()
                async with session.get(path) as resp:
                    await resp.read()
                idle_aiohttp.append(time.perf_counter() - t0)
    result: dict[str, Any] = {
        "hosts": args.hosts,
        # the machine's load while it ran: other work on the same cores shows here
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "final_state": doc["state"],
        "upgrade_wall_s": round(wall, 2),
        "requests": len(samples),
        "requests_by_state": {state: len(taken) for state, taken in by_state.items()},
        "status_bytes": max(sizes),
        **spread(samples),
    }
    for state in ("preflight", "running"):
        if by_state.get(state):
            result[f"while_{state}"] = line(spread(by_state[state]))
    if idle:
        result["idle_daemon"] = line(spread(idle))
        result["idle_daemon_aiohttp"] = line(spread(idle_aiohttp))
    return result


def connect(url: str) -> http.client.HTTPConnection:
    split = urlsplit(url)
    return http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port)


def read(
    url: str, headers: dict[str, str], path: str, conn: http.client.HTTPConnection | None = None
) -> tuple[float, bytes]:
    """One GET of `path` (on `conn`, kept alive, or a new connection): how
    long it took, and the body."""
    own = conn is None
    if conn is None:
        conn = connect(url)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        took = time.perf_counter() - t0
        assert resp.status == 200, raw[:200]
        return took, raw
    finally:
        if own:
            conn.close()


def read_until_done(
    url: str,
    headers: dict[str, str],
    path: str,
    *,
    samples: list[float],
    sizes: list[int],
    by_state: dict[str, list[float]],
) -> dict[str, Any]:
    """Read the status back to back on one kept-alive connection until the
    upgrade is over; its last document.

    The standard library's client, as `orchestrator status` uses: aiohttp's
    adds about 1 ms of its own to reading a megabyte (`idle_daemon_aiohttp`).
    Each document parsed here is a megabyte of young objects: the client's own
    full collections (75-150 ms each, one every seven reads at 2,000 hosts)
    would be timed as the daemon's latency, so the client collects between
    reads, never during one.
    """
    conn = connect(url)
    gc.freeze()
    gc.disable()
    try:
        while True:
            took, raw = read(url, headers, path, conn)
            samples.append(took)
            sizes.append(len(raw))
            doc: dict[str, Any] = json.loads(raw)
            by_state.setdefault(doc["state"], []).append(took)
            if doc["terminal"]:
                return doc
            del doc
            gc.collect(1)
    finally:
        gc.enable()
        gc.unfreeze()
        conn.close()


def line(figures: dict[str, float]) -> str:
    return "  ".join(f"{k} {v}" for k, v in figures.items())


def spread(samples: list[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of `samples` (seconds), in milliseconds."""
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p90_ms": round(percentile(ms, 0.90), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.3)
    parser.add_argument(
        "--idle", type=int, default=200, help="reads of the finished upgrade's document"
    )
    parser.add_argument(
        "--hosts-nice",
        type=int,
        default=10,
        help="niceness of the simulated hosts' process (0: they compete with the daemon)",
    )
    args = parser.parse_args()
    if args.hosts < 1 or args.steps < 1 or args.sleep < 0 or args.idle < 0:
        parser.error("--hosts and --steps must be at least 1, --sleep and --idle not negative")
    with tempfile.TemporaryDirectory() as tmp:
        result = await measure(args, Path(tmp))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    figure(f"status_p50_{args.hosts}", result["p50_ms"], "ms", "<2")
    figure(f"status_p99_{args.hosts}", result["p99_ms"], "ms", "<20")


if __name__ == "__main__":
    asyncio.run(main())
