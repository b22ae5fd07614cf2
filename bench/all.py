"""`make bench`: run every bench, each in its own process, and print one table
of the figures they report (their ``figure`` lines, see bench/figures.py).

    .venv/bin/python -m bench.all [--only NAME ...] [--keep DIR]

Each bench's whole output goes to DIR/NAME.log (a temporary directory unless
`--keep` names one). A bench that fails is a row saying so and makes the exit
status 1; a figure that misses its target is marked, and is not a failure: the
table is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.figures import Figure, parse

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Bench:
    name: str
    args: tuple[str, ...] = ()


# each with the arguments its issue's figures are stated for
BENCHES = (
    Bench("plan_scale", ("--hosts", "10000")),
    Bench("status_latency", ("--hosts", "2000")),
    Bench("overhead", ("--hosts", "200")),
    Bench("journal"),
    Bench("takeover", ("--runs", "3")),
    Bench("cli_start", ("--runs", "10")),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    bench: Bench
    seconds: float
    exit_code: int
    figures: list[Figure]
    log: Path


def run(bench: Bench, logs: Path) -> Outcome:
    log = logs / f"{bench.name}.log"
    argv = [sys.executable, "-m", f"bench.{bench.name}", *bench.args]
    print(f"running {' '.join(argv[1:])} ...", flush=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    return Outcome(bench, seconds, done.returncode, parse(log.read_text(errors="replace")), log)


def table(outcomes: Sequence[Outcome]) -> str:
    rows = [("bench", "figure", "value", "unit", "target", "meets")]
    for outcome in outcomes:
        if outcome.exit_code != 0:
            rows.append((outcome.bench.name, f"FAILED (exit {outcome.exit_code})", "", "", "", ""))
            continue
        if not outcome.figures:
            rows.append((outcome.bench.name, "no figures printed", "", "", "", ""))
        for found in outcome.figures:
            meets = {True: "yes", False: "NO", None: "-"}[found.meets()]
            rows.append(
                (
                    outcome.bench.name,
                    found.name,
                    f"{found.value:.4g}",
                    found.unit,
                    found.target,
                    meets,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [b.name for b in BENCHES]
    parser.add_argument("--only", action="append", choices=names, help="run only this bench")
    parser.add_argument("--keep", type=Path, help="write the benches' logs here")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        logs = args.keep or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        outcomes = [run(bench, logs) for bench in chosen]
        print()
        print(table(outcomes))
        for outcome in outcomes:
            if outcome.exit_code != 0:
                tail = outcome.log.read_text(errors="replace").splitlines()[-15:]
                print(f"\n{outcome.bench.name} failed; the end of its output:")
                print("\n".join(f"  {line}" for line in tail))
        total = sum(o.seconds for o in outcomes)
        print(f"\n{len(outcomes)} benches in {total:.0f} s")
    return 0 if all(o.exit_code == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
