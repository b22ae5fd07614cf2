"""Engine overhead: 200 hosts, 5 steps per host each sleeping 0.2 s, batches of
25%, against in-process asyncssh servers (run in a separate process so they
do not share the engine's event loop and core). The servers run `sleep N`,
and the removal of run records where there are none, without forking a
shell (each real host has its own CPU for that; 200 simulated hosts on two
cores do not: 50 removals' shells at an upgrade's end took 80 ms, against
25 ms without them), so the figure is the orchestrator's
own overhead: SSH sessions, journal writes, state, scheduling. The pool
runs each host's supervised steps through one agent exec per connection
(docs/transport.md); `--exec-per-step` gives each step its own exec. Both the
upgrade and the bare loop run on the daemon's own event loop
(`orchestrator.eventloop.new_loop`) under the daemon's schedule of full
garbage collections (`orchestrator.collector`: what is loaded at the start
frozen, a full pass at most every 30 s). Under CPython's own schedule a full
pass came every 5 s or so, each stopping the loop for up to 50 ms: one in a
round moved its ratio by 1 to 2 %.

In the same run, against the same hosts, it runs a bare asyncssh loop of the
same shape: the plan's batches one after the other, in each batch every host
at once (`asyncio.gather`), one connection per host with the pool's
connection options (`Dialer.options`: key exchange, ciphers, and the
keepalives with which the pool finds a half-open connection within 15 s;
`--bare-without-keepalives` leaves those out), the same `sleep` commands
one after the other. Its wall time is what the transport itself costs on
this machine today. The upgrade runs
`--rounds` times (default 3), each between two bare loops; each is compared
with the mean of the two around it (on a shared machine the load drifts), and
the round with the median ratio is the one reported.

Prints the wall time of the upgrade, the bare loop's, their ratio
(`ratio_to_transport`, target <= 1.05 at 200 hosts), the ideal (critical
path of the sleeps: batches x steps x 0.2 s) and the ratio to it, and the
engine process's CPU time per host-step (the CPU time of the process during
the upgrade over hosts x steps; the bare loop's beside it: the difference is
the orchestrator's own). Figures also as `figure NAME VALUE UNIT TARGET`
lines for `make bench` (bench/figures.py).

    .venv/bin/python -m bench.overhead [--hosts 200] [--steps 5] [--sleep 0.2]
        [--rounds 3] [--server-processes 1] [--no-ssh] [--exec-per-step]
        [--bare-without-keepalives] [--profile FILE]

It also breaks the time down from the journal's timestamps: per step, the
time beyond the sleep (SSH session, exit, journal commit) and the gap
between a host's steps (journal commit, checkpoint, next record).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import math
import pstats
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import yaml

from bench.figures import figure
from orchestrator import eventloop, logs
from orchestrator.collector import Collector
from orchestrator.engine.manager import UpgradeManager
from orchestrator.engine.view import UpgradeView
from orchestrator.inventory import parse_inventory_text
from orchestrator.minicloud.loadgen import percentile
from orchestrator.model import Plan
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import parse_playbook_text
from orchestrator.secrets import SecretStore
from orchestrator.store.journal import Event, Journal
from orchestrator.transport.dial import Dialer
from orchestrator.transport.ssh import CommandResult, SSHPool
from tests.farm import Farm, ssh_farm


class NoSSH(SSHPool):
    """--no-ssh: the engine and the journal alone; `sleep N` is an asyncio sleep."""

    async def connect(self, host: str) -> None:
        self.target(host)

    async def run(self, host: str, command: str, **_: object) -> CommandResult:
        started = time.monotonic()
        await asyncio.sleep(float(command.split()[1]) if command.startswith("sleep ") else 0)
        return CommandResult(0, "", time.monotonic() - started, False)

    async def forget_runs(self, host: str, upgrade_id: str) -> int:
        return 0  # nothing reached a host


def no_ssh(plan: Plan, store: SecretStore) -> SSHPool:
    return NoSSH(plan.hosts, store)


def exec_per_step(plan: Plan, store: SecretStore) -> SSHPool:
    """--exec-per-step: no agents, each supervised run execs its wrapper."""
    return SSHPool(plan.hosts, store, agents=False)


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


def inventory(farms: Sequence[Farm]) -> str:
    hosts: dict[str, object] = {}
    for farm in farms:
        hosts.update(farm.inventory_hosts())
    data = {"ssh": {"user": farms[0].user}, "vars": {"from_version": "1.0"}, "hosts": hosts}
    return yaml.safe_dump(data, sort_keys=False)


@dataclass(frozen=True, slots=True)
class Timing:
    wall: float
    cpu: float  # this process's CPU time meanwhile
    beyond: tuple[float, ...] = ()  # per command, the time beyond its sleep


async def bare_loop(plan: Plan, steps: int, sleep: float, *, keepalives: bool = True) -> Timing:
    """The transport alone, in the upgrade's shape: batch after batch, every host
    of a batch at once on its own connection, its `sleep` commands in turn.
    Each connection has the pool's options (`Dialer.options`: its key
    exchange, ciphers and keepalives); without `keepalives`, none."""
    dialer = Dialer()
    options: dict[str, asyncssh.SSHClientConnectionOptions] = {}
    for target in plan.hosts:
        options[target.name] = dialer.options(target, f"{target.address}:{target.port}")
        if not keepalives:
            options[target.name] = asyncssh.SSHClientConnectionOptions(
                options[target.name], keepalive_interval=0
            )
    targets = {target.name: target for target in plan.hosts}
    beyond: list[float] = []

    async def host(name: str) -> None:
        target = targets[name]
        async with asyncssh.connect(target.address, target.port, options=options[name]) as conn:
            for _ in range(steps):
                began = time.perf_counter()
                await conn.run(f"sleep {sleep}", check=True)
                beyond.append(time.perf_counter() - began - sleep)

    started, cpu = time.perf_counter(), time.process_time()
    for batch in plan.phases[0].batches:
        await asyncio.gather(*(host(hp.host) for hp in batch.hosts))
    return Timing(time.perf_counter() - started, time.process_time() - cpu, tuple(beyond))


async def start_servers(args: argparse.Namespace, tmp: Path, stack: AsyncExitStack) -> Plan:
    """The simulated hosts, spread over `--server-processes` processes, and the plan."""
    share = math.ceil(args.hosts / args.server_processes)
    farms = [
        await stack.enter_async_context(
            ssh_farm(tmp / f"hosts-{first}", min(share, args.hosts - first + 1), first=first)
        )
        for first in range(1, args.hosts + 1, share)
    ]
    inv, inv_doc = parse_inventory_text(inventory(farms), "bench-inventory.yaml")
    pb, pb_doc = parse_playbook_text(playbook(args.steps, args.sleep), "bench-playbook.yaml")
    return compile_plan(inv, inv_doc, pb, pb_doc, Options(to_version="2.0"))


@dataclass(slots=True)
class Upgrade:
    timing: Timing
    state: str
    view: UpgradeView
    journaled: list[Event]


async def upgrade(
    args: argparse.Namespace, plan: Plan, journal: Journal, profile: cProfile.Profile | None
) -> Upgrade:
    factory = no_ssh if args.no_ssh else exec_per_step if args.exec_per_step else None
    manager = UpgradeManager(journal, remote_factory=factory)
    await manager.start()
    profiling: AbstractContextManager[object] = profile if profile is not None else nullcontext()
    with profiling:
        started, cpu = time.perf_counter(), time.process_time()
        up, _ = await manager.submit(plan)
        state = await manager.wait(up.id, timeout=600)
        timing = Timing(time.perf_counter() - started, time.process_time() - cpu)
    journaled = await journal.events(up.id)
    await manager.close()
    return Upgrade(timing, state.label, up.view, journaled)


def report(args: argparse.Namespace, plan: Plan, runs: list[Upgrade], bare: list[Timing]) -> None:
    # each upgrade against the mean of the bare loops just before and after it:
    # the machine's load drifts less within one round than across the run
    ratios = (
        [
            r.timing.wall / ((a.wall + b.wall) / 2)
            for r, a, b in zip(runs, bare[:-1], bare[1:], strict=True)
        ]
        if bare
        else [r.timing.wall for r in runs]
    )
    middle = sorted(range(len(runs)), key=lambda i: ratios[i])[(len(runs) - 1) // 2]
    run = runs[middle]  # the median round
    view = run.view
    batches = len(plan.phases[0].batches)
    host_steps = args.hosts * args.steps
    preflight_end = min((p.started_at for p in view.phases.values() if p.started_at), default=None)
    ideal = batches * args.steps * args.sleep
    wall = run.timing.wall
    print(f"hosts                 {args.hosts}")
    print(f"batches               {batches} (25% = {math.ceil(args.hosts / 4)} hosts)")
    print(f"steps per host        {args.steps} x sleep {args.sleep}s")
    print(f"final states          {', '.join(r.state for r in runs)}")
    print(f"journal events        {len(run.journaled)}")
    walls = ", ".join(f"{r.timing.wall:.2f}" for r in runs)
    print(f"upgrade wall time     {wall:.2f} s (the median round; all: {walls})")
    if preflight_end and view.created_at:
        print(f"  preflight           {preflight_end - view.created_at:.2f} s")
        print(f"  phases              {(view.updated_at or 0) - preflight_end:.2f} s")
        tail = run.timing.wall - ((view.updated_at or 0) - view.created_at)
        print(f"  submit, end cleanup {tail:.2f} s  (the run records removed from the hosts)")
    print(f"engine process CPU    {run.timing.cpu:.2f} s")
    print(f"ideal (critical path) {ideal:.2f} s")
    print(f"ratio to the ideal    {wall / ideal:.3f}")
    breakdown(run.journaled, args.sleep)
    if not bare:
        return
    around = bare[middle : middle + 2]
    reference = statistics.fmean(t.wall for t in around)
    bare_cpu = statistics.fmean(t.cpu for t in around)
    walls = ", ".join(f"{t.wall:.2f}" for t in bare)
    print(f"bare asyncssh loop    {reference:.2f} s (before and after it; all: {walls})")
    print(f"  its process CPU     {bare_cpu:.2f} s")
    commands = [value for timing in around for value in timing.beyond]
    print(f"  per command, beyond the sleep  {_figures(commands)}")
    every = ", ".join(f"{ratio:.3f}" for ratio in ratios)
    print(f"ratio_to_transport    {wall / reference:.3f}  (target <= 1.05; rounds: {every})")
    engine_ms = 1000 * run.timing.cpu / host_steps
    bare_ms = 1000 * bare_cpu / host_steps
    print(f"CPU per host-step     engine {engine_ms:.2f} ms, bare loop {bare_ms:.2f} ms")
    figure("overhead_ratio_to_transport", wall / reference, "x", "<=1.05")
    figure("overhead_upgrade_wall", wall, "s")
    figure("overhead_transport_wall", reference, "s")
    figure("overhead_ratio_to_ideal", wall / ideal, "x")
    figure("engine_cpu_per_host_step", engine_ms, "ms")
    figure("transport_cpu_per_host_step", bare_ms, "ms")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="upgrades, each between two bare loops; the round with the median ratio "
        "is shown (on a shared machine the load comes and goes)",
    )
    parser.add_argument(
        "--no-ssh",
        action="store_true",
        help="commands never leave the process: the engine's and the journal's share alone",
    )
    parser.add_argument(
        "--exec-per-step",
        action="store_true",
        help="the pool runs no agents: each supervised step execs its wrapper (as the bare "
        "loop execs its command)",
    )
    parser.add_argument(
        "--server-processes",
        type=int,
        default=1,
        help="processes the simulated SSH hosts are spread over (real hosts each have their own)",
    )
    parser.add_argument(
        "--profile", type=Path, help="write a cProfile of the first upgrade here (pstats format)"
    )
    parser.add_argument(
        "--bare-without-keepalives",
        action="store_true",
        help="the bare loop's connections send no keepalives (the pool's do: it must find "
        "a half-open connection within 15 s)",
    )
    args = parser.parse_args()
    keep = not args.bare_without_keepalives

    logs.configure("json", level="error")
    profile = cProfile.Profile() if args.profile else None
    bare: list[Timing] = []
    runs: list[Upgrade] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            plan = await start_servers(args, Path(tmp), stack)
            journal = await Journal.open(Path(tmp) / "journal.db")
            collector = Collector()  # as `orchestrator serve` runs it
            collector.start()
            try:
                for index in range(args.rounds):
                    if not args.no_ssh:
                        bare.append(await bare_loop(plan, args.steps, args.sleep, keepalives=keep))
                    runs.append(await upgrade(args, plan, journal, profile if index == 0 else None))
                if not args.no_ssh:
                    bare.append(await bare_loop(plan, args.steps, args.sleep, keepalives=keep))
            finally:
                await collector.stop()
                await journal.close()
    server_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    report(args, plan, runs, bare)
    print(f"full GC passes        {collector.full_passes} (the daemon's schedule, whole run)")
    print(f"SSH servers CPU       {server_cpu.ru_utime + server_cpu.ru_stime:.2f} s (whole run)")
    if profile is not None:
        profile.dump_stats(args.profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


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
    # the daemon's own loop (`orchestrator serve`): the upgrade and the bare
    # loop both run on it, as the daemon's engines do
    with asyncio.Runner(loop_factory=eventloop.new_loop) as runner:
        runner.run(main())
