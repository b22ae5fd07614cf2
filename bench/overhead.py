"""Engine overhead: 200 hosts, 5 steps per host each sleeping 0.2 s, batches of
25%, against in-process asyncssh servers (run in a separate process so they
do not share the engine's event loop and core). The servers run `sleep N`
without forking a shell (each real host has its own CPU for that; 200
simulated hosts on two cores do not), so the figure is the orchestrator's
own overhead: SSH sessions, journal writes, state, scheduling.

Prints the wall time of the upgrade, the ideal (critical path of the sleeps:
batches x steps x 0.2 s) and their ratio. Target: ratio <= 1.10.

    .venv/bin/python bench/overhead.py [--hosts 200] [--steps 5] [--sleep 0.2]
        [--server-processes 1] [--no-ssh]

It also breaks the time down from the journal's timestamps: per step, the
time beyond the sleep (SSH session, exit, journal commit) and the gap
between a host's steps (journal commit, checkpoint, next record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

from orchestrator import logs
from orchestrator.engine.manager import UpgradeManager
from orchestrator.engine.view import UpgradeView
from orchestrator.inventory import parse_inventory_text
from orchestrator.minicloud.loadgen import percentile
from orchestrator.model import Plan
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import parse_playbook_text
from orchestrator.secrets import SecretStore
from orchestrator.store.journal import Event, Journal
from orchestrator.transport.ssh import CommandResult, SSHPool

REPO = Path(__file__).resolve().parent.parent

SERVER = """
import asyncio, json, sys
from pathlib import Path
from tests.sshhosts import SSHHosts

async def main() -> None:
    first, count = int(sys.argv[2]), int(sys.argv[3])
    names = [f"host-{i}" for i in range(first, first + count)]
    hosts = SSHHosts(Path(sys.argv[1]), names, builtin_sleep=True)
    await hosts.start()
    t = hosts.target(hosts.names[0])
    print(json.dumps({"user": t.user, "key": t.key, "known_hosts": t.known_hosts,
                      "ports": {n: hosts.port(n) for n in hosts.names}}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await hosts.close()

asyncio.run(main())
"""


class NoSSH(SSHPool):
    """--no-ssh: the engine and the journal alone; `sleep N` is an asyncio sleep."""

    async def connect(self, host: str) -> None:
        self.target(host)

    async def run(self, host: str, command: str, **_: object) -> CommandResult:
        started = time.monotonic()
        await asyncio.sleep(float(command.split()[1]) if command.startswith("sleep ") else 0)
        return CommandResult(0, "", time.monotonic() - started, False)


def no_ssh(plan: Plan, store: SecretStore) -> SSHPool:
    return NoSSH(plan.hosts, store)


def playbook(steps: int, sleep: float) -> str:
    lines = [
        "name: overhead",
        "phases:",
        "  - name: roll",
        "    rolling: app",
        '    batch: "25%"',
        "    health: false",
        "    verify_version: false",
        "    steps:",
    ]
    lines += [f'      - {{run: "sleep {sleep}", idempotent: true}}' for _ in range(steps)]
    return "\n".join(lines) + "\n"


def inventory(servers: list[dict[str, object]]) -> str:
    lines = [f"ssh: {{user: {servers[0]['user']}}}", "vars: {from_version: '1.0'}", "hosts:"]
    for info in servers:
        ports = info["ports"]
        assert isinstance(ports, dict)
        lines += [
            f"  {name}: {{address: 127.0.0.1, roles: [app], ssh: {{port: {port}, "
            f"key: {info['key']}, known_hosts: {info['known_hosts']}}}}}"
            for name, port in ports.items()
        ]
    return "\n".join(lines) + "\n"


def report(
    args: argparse.Namespace,
    *,
    batches: int,
    state: str,
    events: int,
    wall: float,
    view: UpgradeView,
    engine_cpu: float,
    server_cpu: resource.struct_rusage,
) -> None:
    preflight_end = min((p.started_at for p in view.phases.values() if p.started_at), default=None)
    ideal = batches * args.steps * args.sleep
    print(f"hosts                 {args.hosts}")
    print(f"batches               {batches} (25% = {math.ceil(args.hosts / 4)} hosts)")
    print(f"steps per host        {args.steps} x sleep {args.sleep}s")
    print(f"final state           {state}")
    print(f"journal events        {events}")
    print(f"wall time             {wall:.2f} s")
    if preflight_end and view.created_at:
        print(f"  preflight           {preflight_end - view.created_at:.2f} s")
        print(f"  phases              {(view.updated_at or 0) - preflight_end:.2f} s")
    print(f"engine process CPU    {engine_cpu:.2f} s")
    print(f"SSH servers CPU       {server_cpu.ru_utime + server_cpu.ru_stime:.2f} s (whole run)")
    print(f"ideal (critical path) {ideal:.2f} s")
    print(f"ratio                 {wall / ideal:.3f}  (target <= 1.10)")
    if preflight_end:
        phases = (view.updated_at or 0) - preflight_end
        print(f"ratio, phases only    {phases / ideal:.3f}  (without preflight's handshakes)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument(
        "--no-ssh",
        action="store_true",
        help="commands never leave the process: the engine's and the journal's share alone",
    )
    parser.add_argument(
        "--server-processes",
        type=int,
        default=1,
        help="processes the simulated SSH hosts are spread over (real hosts each have their own)",
    )
    args = parser.parse_args()

    logs.configure("json", level="error")
    with tempfile.TemporaryDirectory() as tmp:
        share = math.ceil(args.hosts / args.server_processes)
        servers, infos = [], []
        for first in range(1, args.hosts + 1, share):
            server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                SERVER,
                str(Path(tmp) / f"hosts-{first}"),
                str(first),
                str(min(share, args.hosts - first + 1)),
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert server.stdout is not None
            servers.append(server)
            infos.append(json.loads(await server.stdout.readline()))
        inv, inv_doc = parse_inventory_text(inventory(infos), "bench-inventory.yaml")
        pb, pb_doc = parse_playbook_text(playbook(args.steps, args.sleep), "bench-playbook.yaml")
        plan = compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2.0"))
        batches = len(plan.phases[0].batches)
        journal = await Journal.open(Path(tmp) / "journal.db")
        manager = UpgradeManager(journal, remote_factory=no_ssh if args.no_ssh else None)
        await manager.start()
        started = time.perf_counter()
        cpu_started = time.process_time()
        up, _ = await manager.submit(plan)
        state = await manager.wait(up.id, timeout=600)
        wall = time.perf_counter() - started
        engine_cpu = time.process_time() - cpu_started
        view = up.view
        journaled = await journal.events(up.id)
        events = len(journaled)
        await manager.close()
        await journal.close()
        for server in servers:
            assert server.stdin is not None
            server.stdin.close()
            await server.wait()
        server_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)

    report(
        args,
        batches=batches,
        state=state.label,
        events=events,
        wall=wall,
        view=view,
        engine_cpu=engine_cpu,
        server_cpu=server_cpu,
    )
    breakdown(journaled, args.sleep)


def _figures(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return (
        f"mean {1000 * mean:6.1f} ms, p90 {1000 * percentile(values, 0.90):6.1f} ms, "
        f"max {1000 * max(values):6.1f} ms"
    )


def breakdown(journaled: list[Event], sleep: float) -> None:
    """Where the time above the ideal goes, from the journal's timestamps."""
    started: dict[str, float] = {}  # step -> when it was journaled running
    last_done: dict[str, float] = {}  # host -> when its latest step was journaled done
    in_step, between = [], []
    for event in journaled:  # in journal order
        if event.kind != "step":
            continue
        step, host, state = event.data["step"], event.data["host"], event.data["state"]
        if state == "running":
            if host in last_done:
                between.append(event.at - last_done[host])
            started[step] = event.at
        elif state == "done" and step in started:
            in_step.append(event.at - started[step] - sleep)
            last_done[host] = event.at
    print(f"per step, beyond the sleep  {_figures(in_step)}  (journaled running -> done)")
    print(f"between a host's steps      {_figures(between)}  (journaled done -> next running)")


if __name__ == "__main__":
    asyncio.run(main())
