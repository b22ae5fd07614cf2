"""How `orchestrator plan` scales: a 10,000-host cloud, the shipped nova playbook.

Writes the inventory to a temporary directory, runs the real CLI as a child
process (JSON output, then the tree) `--runs` times each, and reports each
run's wall time, CPU time (user + system), peak RSS and output size, and the
median of the runs as the figures (`figure` lines, bench/figures.py):

    figure plan_json_wall S s <2         plan --json, median wall time
    figure plan_json_peak_rss MIB MiB <200
    figure plan_tree_wall S s <1.5       plan (the tree), median wall time

then times the in-process phases (load, compile, JSON, digest, tree) once.

    .venv/bin/python bench/plan_scale.py [--hosts 10000] [--runs 3] [--round-trip] [--profile]

`--round-trip` also times from_json (what resuming from the journal costs);
`--profile` adds a cProfile of the whole `plan --json` in-process (load,
compile, JSON written to /dev/null) and of the compile alone, hottest first.
The machine's other load shows in wall time, not in CPU time: read both.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.figures import figure
from orchestrator import model, pipeline
from orchestrator.cli import main as cli_main
from orchestrator.inventory import load_inventory
from orchestrator.pipeline import Source
from orchestrator.plan import Options, compile_plan
from orchestrator.planview import render_tree
from orchestrator.playbook import load_playbook

ZONES = ("az1", "az2", "az3", "az4")
CONTROLLERS = 3
PLAYBOOK = "nova"
FROM, TO = "2025.2", "2026.1"
T = TypeVar("T")

ROLES = """\
roles:
  placement:
    version:
      run: "/openstack/current/placement-api/bin/placement-manage --version"
      releases: {"2025.2": ">=14,<15", "2026.1": ">=15,<16"}
    health:
      - {http: "http://{{ host.address }}:8778/", expect_status: 200}
    drain: {load_balancer: placement, server: "{{ host.name }}", timeout: 2m}
  api:
    version: {http: "http://{{ host.address }}:8774/", json_path: version}
    health:
      - {http: "http://{{ host.address }}:8774/healthcheck", expect_status: 200}
    drain: {load_balancer: public, server: "{{ host.name }}", timeout: 2m}
  conductor:
    version: {run: "nova-manage --version"}
    health:
      - {run: "systemctl is-active nova-conductor"}
  compute:
    version: {run: "nova-compute --version"}
    health:
      - {run: "systemctl is-active nova-compute"}
      - {tcp: "{{ host.address }}:16509"}
    drain:
      run: "openstack compute service set --disable {{ host.name }} nova-compute"
      undo: "openstack compute service set --enable {{ host.name }} nova-compute"
      wait_until: >-
        test "$(openstack server list --all-projects --host {{ host.name }} -f value | wc -l)" = 0
"""


def inventory_text(hosts: int) -> str:
    """`hosts` hosts: 3 controllers (conductor, api and placement behind the load balancer),
    the rest computes spread over 4 zones, zone by zone."""
    computes = hosts - CONTROLLERS
    lines = [
        "name: scale",
        "ssh: {user: stack, key: ~/.ssh/id_ed25519, become: sudo}",
        f'vars: {{from_version: "{FROM}"}}',
        "load_balancers:",
        "  public: {address: '127.0.0.1:9999', backend: nova_api}",
        "  placement: {address: '127.0.0.1:9999', backend: placement_api}",
        ROLES.rstrip("\n"),
        "hosts:",
    ]
    for c in range(1, CONTROLLERS + 1):
        lines.append(f"  ctl-{c}: {{address: 10.0.0.{10 + c}, roles: [conductor, api, placement]}}")
    per_zone = -(-computes // len(ZONES))
    for n in range(computes):
        zone = ZONES[n // per_zone]
        address = f"10.{1 + n // 65000}.{n // 250 % 256}.{n % 250 + 1}"
        lines.append(f"  cmp-{n + 1:05d}: {{address: {address}, roles: [compute], zone: {zone}}}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class ChildRun:
    wall: float
    cpu: float
    max_rss_kib: int
    out_bytes: int
    exit_code: int
    stderr: str


def run_child(argv: Sequence[str], workdir: Path) -> ChildRun:
    """Run `python -m orchestrator ARGV`; the child's own peak RSS comes from wait4."""
    out_path, err_path = workdir / "out", workdir / "err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *argv], stdout=out, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        max_rss_kib=usage.ru_maxrss,
        out_bytes=out_path.stat().st_size,
        exit_code=proc.returncode,
        stderr=err_path.read_text(errors="replace"),
    )


def timed(label: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = fn()
    print(f"in-process {label}: {time.perf_counter() - start:.3f} s")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000, help="hosts in the inventory")
    parser.add_argument("--runs", type=int, default=3, help="child runs of each command")
    parser.add_argument("--round-trip", action="store_true", help="also time from_json")
    parser.add_argument("--profile", action="store_true", help="cProfile plan --json, compile")
    args = parser.parse_args(argv)
    if args.hosts < CONTROLLERS + len(ZONES):
        parser.error(f"--hosts must be at least {CONTROLLERS + len(ZONES)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        workdir = Path(tmp)
        inventory = workdir / "inventory.yaml"
        inventory.write_text(inventory_text(args.hosts), encoding="utf-8")
        print(f"hosts: {args.hosts} ({CONTROLLERS} controllers, computes in {len(ZONES)} zones)")
        print(f"inventory: {inventory.stat().st_size} bytes")

        base = ["plan", "-i", str(inventory), "-p", PLAYBOOK, "--to", TO]
        medians = {}
        for label, extra in (("json", ["--json"]), ("tree", [])):
            found = children(label, [*base, *extra], workdir, args.runs)
            if found is None:
                return 1
            medians[label] = found
        children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"children peak RSS (RUSAGE_CHILDREN): {children_rss} KiB")
        figure("plan_json_wall", medians["json"][0], "s", "<2")
        figure("plan_json_peak_rss", medians["json"][1], "MiB", "<200")
        figure("plan_tree_wall", medians["tree"][0], "s", "<1.5")
        in_process(inventory, base, round_trip=args.round_trip, with_profile=args.profile)
    return 0


def children(label: str, argv: list[str], workdir: Path, runs: int) -> tuple[float, float] | None:
    """Median wall time and peak RSS (MiB) of `runs` child runs; None if one fails."""
    done = []
    for n in range(1, runs + 1):
        run = run_child(argv, workdir)
        if run.exit_code != 0:
            print(f"child {label} failed with exit {run.exit_code}:\n{run.stderr}")
            return None
        done.append(run)
        print(
            f"child {label} run {n}: wall {run.wall:.3f} s, cpu {run.cpu:.3f} s, "
            f"peak RSS {run.max_rss_kib / 1024:.1f} MiB, "
            f"output {run.out_bytes} bytes ({run.out_bytes / 2**20:.1f} MiB)"
        )
    wall = statistics.median(r.wall for r in done)
    cpu = statistics.median(r.cpu for r in done)
    rss = statistics.median(r.max_rss_kib for r in done) / 1024
    print(f"child {label} median: wall {wall:.3f} s, cpu {cpu:.3f} s, peak RSS {rss:.1f} MiB")
    return wall, rss


def in_process(inventory: Path, base: list[str], *, round_trip: bool, with_profile: bool) -> None:
    """Each phase timed once, with the collector paused as the CLI runs them."""
    options = Options(to_version=TO)
    sources = Source.of_file(inventory), Source.of_playbook_ref(PLAYBOOK)
    timed("pipeline (load, check, compile)", lambda: pipeline.build(*sources, options))
    with pipeline.paused_gc():
        inv, inv_doc = timed("load inventory", lambda: load_inventory(inventory))
        pb, pb_doc = timed("load playbook", lambda: load_playbook(PLAYBOOK))
        plan = timed("compile", lambda: compile_plan(inv, inv_doc, pb, pb_doc, options))
        timed("digest", lambda: plan.digest)
        text = timed("to_json (digest kept)", lambda: model.to_json(plan))
        if round_trip:
            timed("from_json", lambda: model.from_json(text))
        timed("render tree (digest kept)", lambda: render_tree(plan))
    host_plans = sum(p.host_count for p in plan.phases)
    batches = sum(len(p.batches) for p in plan.phases)
    print(f"plan: {len(plan.phases)} phases, {batches} batches, {host_plans} host plans")
    if with_profile:
        with open(os.devnull, "w", encoding="utf-8") as sink:
            profile("plan --json, in-process", lambda: cli_main([*base, "--json"], sink, sink))
        with pipeline.paused_gc():
            profile("compile", lambda: compile_plan(inv, inv_doc, pb, pb_doc, options))


def profile(label: str, fn: Callable[[], object]) -> None:
    gc.collect()
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    report = io.StringIO()
    pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(20)
    print(f"--- cProfile of {label}, by own time")
    print(report.getvalue().strip())


if __name__ == "__main__":
    sys.exit(main())
