"""Journal throughput: concurrent appends (group commit) against sequential ones.

    .venv/bin/python -m bench.journal [--events 5000] [--tasks 50] [--dir DIR]

Also reports the worst event-loop lag seen while appending: the journal must
not stall the loop that runs fifty hosts' SSH sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from orchestrator.store.journal import Journal


async def lag_monitor(stop: asyncio.Event, worst: list[float]) -> None:
    """Record how late a 1 ms sleep wakes up: the loop's responsiveness."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], loop.time() - before - 0.001)


async def run(directory: Path, events: int, tasks: int, sequential: int) -> None:
    journal = await Journal.open(directory / "bench.db")
    try:
        upgrades = [f"u{i}" for i in range(3)]
        for uid in upgrades:
            await journal.create(uid, "{}", inventory="bench", digest="d", meta={})
        data = {"phase": "upgrade-computes", "host": "cmp-17", "step": "s3", "state": "done"}

        async def worker(w: int) -> None:
            for n in range(events // tasks):
                await journal.append(upgrades[w % 3], "step", {**data, "n": n})

        stop, worst = asyncio.Event(), [0.0]
        monitor = asyncio.create_task(lag_monitor(stop, worst))
        commits = journal.stats.commits
        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(tasks)))
        elapsed = time.perf_counter() - started
        commits = journal.stats.commits - commits
        stop.set()
        await monitor
        done = tasks * (events // tasks)
        print(
            f"concurrent: {done} appends from {tasks} tasks in {elapsed:.2f} s = "
            f"{done / elapsed:,.0f} events/s; {commits} commits "
            f"({done / commits:.1f} events each); worst loop lag {worst[0] * 1000:.1f} ms"
        )

        commits = journal.stats.commits
        started = time.perf_counter()
        for n in range(sequential):
            await journal.append(upgrades[0], "step", {**data, "n": n})
        elapsed = time.perf_counter() - started
        commits = journal.stats.commits - commits
        print(
            f"sequential: {sequential} appends in {elapsed:.2f} s = "
            f"{sequential / elapsed:,.0f} events/s; {commits} commits "
            f"({elapsed / sequential * 1000:.2f} ms per durable append)"
        )
    finally:
        await journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--dir", type=Path, help="where to put the database (default: a temp dir)")
    args = parser.parse_args()
    if args.dir is not None:
        asyncio.run(run(args.dir, args.events, args.tasks, args.sequential))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp), args.events, args.tasks, args.sequential))


if __name__ == "__main__":
    main()
