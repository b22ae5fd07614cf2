"""Takeover time: two daemons on one PostgreSQL, the leader SIGKILLed while a
minicloud upgrade is mid-phase; how long until the standby leads, and until
it has journaled its first event of the resumed upgrade.

    .venv/bin/python -m bench.takeover [--runs 5] [--lease 10] [--renew 2]

A standby can take the lease only once it has expired (by the database's
clock), and it looks every `renew` seconds: expect between lease - renew and
lease + renew, plus what resuming costs. Prints every run, then
min / median / max.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bench.figures import figure
from orchestrator.minicloud.embedded import embedded_cloud
from tests.hakit import Peers, counted_playbook, epochs, running_in, wait_status
from tests.pgserver import PostgresServer, find_bin_dir


async def one_run(root: Path, url: str, lease: float, renew: float) -> tuple[float, float]:
    async with embedded_cloud(root / "cloud", computes=3) as ec:
        peers = Peers(root / "peers", url, lease, renew)
        try:
            await peers.start(2)
            leader = await peers.leader()
            body = {
                "inventory": ec.inventory_text,
                "playbook": counted_playbook(),
                "to_version": "2.0",
            }
            async with leader.client() as client:
                upgrade_id = str((await client.submit(body))["id"])
            await wait_status(peers, upgrade_id, running_in("upgrade-conductors"))
            leader.signal(signal.SIGKILL)
            killed = time.monotonic()
            await leader.wait()
            await peers.leader(timeout=lease * 3 + 30)
            led = time.monotonic() - killed
            while not any(e == 2 for _, e in epochs(url, upgrade_id)):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            resumed = time.monotonic() - killed
            return led, resumed
        finally:
            await peers.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--renew", type=float, default=2.0)
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL here: apt-get install postgresql")
    leads: list[float] = []
    resumes: list[float] = []
    with PostgresServer.started(bin_dir, durable=True) as server:
        for n in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory() as tmp:
                led, resumed = asyncio.run(
                    one_run(Path(tmp), server.new_database("takeover"), args.lease, args.renew)
                )
            leads.append(led)
            resumes.append(resumed)
            print(f"run {n}: leader after {led:.2f} s, first resumed event after {resumed:.2f} s")
    print(f"lease {args.lease:g} s, renew {args.renew:g} s, {args.runs} runs:")
    for label, values in (("takeover", leads), ("first event", resumes)):
        print(
            f"  {label}: min {min(values):.2f} s, median {statistics.median(values):.2f} s, "
            f"max {max(values):.2f} s (bound: lease + 5 = {args.lease + 5:g} s)"
        )
    figure("takeover_median", statistics.median(leads), "s", f"<={args.lease + 5:g}")
    figure("takeover_first_event_median", statistics.median(resumes), "s")


if __name__ == "__main__":
    main()
