"""Journal throughput: concurrent appends (group commit) against sequential ones,
on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.journal [--events 5000] [--tasks 50] [--dir DIR]
        [--store sqlite|postgresql|both] [--url postgresql://...]

Also reports the worst event-loop lag seen while appending: the journal must
not stall the loop that runs fifty hosts' SSH sessions. PostgreSQL is a
server of its own started for the run (durable: fsync on, as in production)
unless --url names one; its appends carry a leader epoch, fenced by the
database like a daemon's.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.figures import figure
from orchestrator.store.base import Store
from orchestrator.store.journal import Journal


async def lag_monitor(stop: asyncio.Event, worst: list[float]) -> None:
    """Record how late a 1 ms sleep wakes up: the loop's responsiveness."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], loop.time() - before - 0.001)


async def open_postgres(url: str) -> Store:
    import psycopg  # noqa: PLC0415 - only this store needs the driver

    from orchestrator.store.postgres import PostgresJournal  # noqa: PLC0415

    journal = await PostgresJournal.open(url)
    with psycopg.connect(url, autocommit=True) as conn:  # what an election does
        conn.execute("UPDATE leadership SET epoch = epoch + 1")
        row = conn.execute("SELECT epoch FROM leadership").fetchone()
    assert row is not None
    await journal.lead(int(row[0]))
    return journal


async def run(journal: Store, label: str, events: int, tasks: int, sequential: int) -> None:
    print(f"{label} ({journal.where}):")
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
            f"  concurrent: {done} appends from {tasks} tasks in {elapsed:.2f} s = "
            f"{done / elapsed:,.0f} events/s; {commits} commits "
            f"({done / commits:.1f} events each); worst loop lag {worst[0] * 1000:.1f} ms"
        )
        figure(f"journal_{label}_concurrent", done / elapsed, "events/s")

        commits = journal.stats.commits
        started = time.perf_counter()
        for n in range(sequential):
            await journal.append(upgrades[0], "step", {**data, "n": n})
        elapsed = time.perf_counter() - started
        commits = journal.stats.commits - commits
        print(
            f"  sequential: {sequential} appends in {elapsed:.2f} s = "
            f"{sequential / elapsed:,.0f} events/s; {commits} commits "
            f"({elapsed / sequential * 1000:.2f} ms per durable append)"
        )
        figure(f"journal_{label}_durable_append", elapsed / sequential * 1000, "ms")
    finally:
        await journal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument(
        "--dir", type=Path, help="where to put the SQLite file (default: a temp dir)"
    )
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--url", help="a PostgreSQL database to use (default: start a server)")
    args = parser.parse_args()
    figures = (args.events, args.tasks, args.sequential)
    if args.store in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            directory = args.dir or Path(tmp)

            async def sqlite() -> None:
                await run(await Journal.open(directory / "bench.db"), "sqlite", *figures)

            asyncio.run(sqlite())
    if args.store in ("postgresql", "both"):
        if args.url is not None:
            asyncio.run(postgres(args.url, figures))
            return
        from tests.pgserver import PostgresServer, find_bin_dir  # noqa: PLC0415

        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise SystemExit("no PostgreSQL here: apt-get install postgresql, or give --url")
        with PostgresServer.started(bin_dir, durable=True) as server:
            asyncio.run(postgres(server.new_database("bench"), figures))


async def postgres(url: str, figures: tuple[int, int, int]) -> None:
    await run(await open_postgres(url), "postgresql", *figures)


if __name__ == "__main__":
    main()
