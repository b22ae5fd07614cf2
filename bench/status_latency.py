"""Latency of GET /v1/upgrades/{id} while an upgrade of 500 hosts runs.

Three processes, as in production: the in-process SSH hosts (tests.sshhosts,
500 servers on loopback, `sleep` served without a shell), the real daemon
(`orchestrator serve`), and this client. The upgrade rolls the 500 hosts in
batches of 10%, each host running three short steps, so the daemon is busy
journaling and folding events the whole time the status is read. In a cloud
the hosts are other machines; here their process runs at niceness 10
(`--hosts-nice`), so that serving 2,000 SSH servers takes the cores from the
daemon only when the daemon leaves them idle.

The client asks for the status document back to back (one request in
flight, as an operator's `watch` or a dashboard would) and prints p50, p90,
p99 and max, the number of requests, and the document size; the same again
for the requests made while the hosts were probed (preflight: every host's
first SSH connection) and while they were rolled (running). Then the same
client reads the finished upgrade's document, to show what moving it over
loopback costs with an idle daemon. The load average at the end says how
busy the machine was with other work meanwhile.

For `make bench` it prints `figure status_p50_<hosts> ... ms <2` and
`figure status_p99_<hosts> ... ms <20` (bench/figures.py).

    .venv/bin/python bench/status_latency.py [--hosts 500] [--steps 3] [--sleep 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.figures import figure
from orchestrator.minicloud.loadgen import percentile

REPO = Path(__file__).resolve().parent.parent

SERVER = """
import asyncio, json, sys
from pathlib import Path
from tests.sshhosts import SSHHosts

async def main() -> None:
    hosts = SSHHosts(Path(sys.argv[1]), int(sys.argv[2]), builtin_sleep=True)
    await hosts.start()
    t = hosts.target(hosts.names[0])
    print(json.dumps({"user": t.user, "key": t.key, "known_hosts": t.known_hosts,
                      "ports": {n: hosts.port(n) for n in hosts.names}}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await hosts.close()

asyncio.run(main())
"""


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


def inventory(info: dict[str, Any]) -> str:
    hosts = "\n".join(
        f"  {name}: {{address: 127.0.0.1, roles: [app], ssh: {{port: {port}}}}}"
        for name, port in info["ports"].items()
    )
    return (
        "name: latency-bench\n"
        f"ssh: {{user: {info['user']}, key: {info['key']}, known_hosts: {info['known_hosts']}}}\n"
        "vars: {from_version: '1.0'}\n"
        f"hosts:\n{hosts}\n"
    )


async def start_daemon(state: Path, log: Path) -> tuple[asyncio.subprocess.Process, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    with log.open("wb") as out:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state),
            "--log-level",
            "warning",
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
    async with asyncio.timeout(30):
        while (address := _listening(state)) is None:
            if daemon.returncode is not None:
                raise SystemExit(f"the daemon exited; see {log}")
            await asyncio.sleep(0.05)
    return daemon, address[0], address[1]


def _listening(state: Path) -> tuple[str, str] | None:
    """(url, token) once the daemon has written where it listens."""
    try:
        url = json.loads((state / "daemon.json").read_text())["url"]
    except (OSError, ValueError):
        return None
    return str(url), (state / "token").read_text().strip()


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER,
        str(tmp / "hosts"),
        str(args.hosts),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        # in a cloud the hosts are other machines: here they yield the cores
        preexec_fn=lambda: os.nice(args.hosts_nice),
    )
    assert server.stdout is not None and server.stdin is not None
    info = json.loads(await server.stdout.readline())
    daemon, url, token = await start_daemon(tmp / "state", tmp / "daemon.log")
    samples: list[float] = []
    sizes: list[int] = []
    by_state: dict[str, list[float]] = {}
    idle: list[float] = []
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(url, headers=headers) as session:
            body = {
                "inventory": inventory(info),
                "playbook": playbook(args.steps, args.sleep),
                "to_version": "2.0",
            }
            started = time.perf_counter()
            async with session.post("/v1/upgrades", json=body) as resp:
                created = await resp.json()
                assert resp.status == 201, created
            path = f"/v1/upgrades/{created['id']}"
            while True:
                t0 = time.perf_counter()
                async with session.get(path) as resp:
                    raw = await resp.read()
                took = time.perf_counter() - t0
                samples.append(took)
                sizes.append(len(raw))
                doc = json.loads(raw)
                by_state.setdefault(doc["state"], []).append(took)
                if doc["terminal"]:
                    break
            wall = time.perf_counter() - started
            for _ in range(args.idle):
                t0 = time.perf_counter()
                async with session.get(path) as resp:
                    await resp.read()
                idle.append(time.perf_counter() - t0)
    finally:
        daemon.terminate()
        await daemon.wait()
        server.stdin.close()
        await server.wait()
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
    return result


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
