"""Engine overhead: 200 hosts, 5 steps per host each sleeping 0.2 s, batches of
25%, against in-process asyncssh servers (run in a separate process so they
do not share the engine's event loop and core). The servers run `sleep N`
without forking a shell (each real host has its own CPU for that; 200
simulated hosts on two cores do not), so the figure is the orchestrator's
own overhead: SSH sessions, journal writes, state, scheduling.

Prints the wall time of the upgrade, the ideal (critical path of the sleeps:
batches x steps x 0.2 s) and their ratio. Target: ratio <= 1.10.

    .venv/bin/python bench/overhead.py [--hosts 200] [--steps 5] [--sleep 0.2]
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
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import parse_playbook_text
from orchestrator.store.journal import Journal

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


def inventory(info: dict[str, object]) -> str:
    ports = info["ports"]
    assert isinstance(ports, dict)
    hosts = "\n".join(
        f"  {name}: {{address: 127.0.0.1, roles: [app], ssh: {{port: {port}}}}}"
        for name, port in ports.items()
    )
    return (
        f"ssh: {{user: {info['user']}, key: {info['key']}, known_hosts: {info['known_hosts']}}}\n"
        "vars: {from_version: '1.0'}\n"
        f"hosts:\n{hosts}\n"
    )


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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.2)
    args = parser.parse_args()

    logs.configure("json", level="error")
    with tempfile.TemporaryDirectory() as tmp:
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVER,
            str(Path(tmp) / "hosts"),
            str(args.hosts),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert server.stdout is not None and server.stdin is not None
        info = json.loads(await server.stdout.readline())
        inv, inv_doc = parse_inventory_text(inventory(info), "bench-inventory.yaml")
        pb, pb_doc = parse_playbook_text(playbook(args.steps, args.sleep), "bench-playbook.yaml")
        plan = compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2.0"))
        batches = len(plan.phases[0].batches)
        journal = await Journal.open(Path(tmp) / "journal.db")
        manager = UpgradeManager(journal)
        await manager.start()
        started = time.perf_counter()
        cpu_started = time.process_time()
        up, _ = await manager.submit(plan)
        state = await manager.wait(up.id, timeout=600)
        wall = time.perf_counter() - started
        engine_cpu = time.process_time() - cpu_started
        view = up.view
        events = len(await journal.events(up.id))
        await manager.close()
        await journal.close()
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


if __name__ == "__main__":
    asyncio.run(main())
