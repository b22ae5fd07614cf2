"""Highly available daemons, end to end: real `orchestrator serve` processes
on one real PostgreSQL, upgrading a minicloud under checked load, while the
leader is killed, paused, or killed again.

Every run ends the same way as an undisturbed one: succeeded, every service
at 2.0, 0 failed requests, no host left drained, and no non-idempotent step
(the package installs) run twice on any host: those steps write a
line to the host's ran-once.log first (`hakit.counted_playbook`).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.minicloud.control import versions
from orchestrator.minicloud.embedded import EmbeddedCloud, embedded_cloud
from orchestrator.minicloud.loadgen import LoadGenerator
from tests.hakit import (
    Peer,
    Peers,
    counted_playbook,
    drained,
    epochs,
    ran_once,
    run_twice,
    running_in,
    wait_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE, RENEW = 3.0, 0.5


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[EmbeddedCloud]:
    async with embedded_cloud(tmp_path / "cloud", computes=3) as ec:
        yield ec


@pytest.fixture
async def peers(tmp_path: Path, pg_url: str) -> AsyncIterator[Peers]:
    group = Peers(tmp_path / "peers", pg_url, LEASE, RENEW)
    yield group
    await group.close()


async def submit(peer: Peer, ec: EmbeddedCloud) -> str:
    body = {"inventory": ec.inventory_text, "playbook": counted_playbook(), "to_version": "2.0"}
    async with peer.client() as client:
        answer = await client.submit(body)
    return str(answer["id"])


async def finish(peers: Peers, upgrade_id: str) -> dict[str, Any]:
    """Approve the point of no return (through any peer) and wait for the end."""
    await wait_status(peers, upgrade_id, lambda d: d["state"] == "waiting_approval")
    leader = await peers.leader()
    async with peers.standby(leader).client() as client:
        await client.control(upgrade_id, "approve")  # a standby redirects it to the leader
    return await wait_status(peers, upgrade_id, lambda d: d["state"] in TERMINAL)


TERMINAL = ("succeeded", "failed", "rolled_back", "aborted")


async def collect(peer: Peer, upgrade_id: str) -> list[int]:
    """The seq of every event a peer's stream sends, until the upgrade's end."""
    async with peer.client() as client:
        return [int(event["seq"]) async for event in client.events(upgrade_id)]


def assert_clean_end(doc: dict[str, Any], ec: EmbeddedCloud) -> None:
    assert doc["state"] == "succeeded", doc.get("reason")
    assert set(versions(ec.cloud).values()) == {"2.0"}
    assert drained(ec) == [], "no host left drained"
    assert run_twice(ec) == {}, "no non-idempotent step ran twice"
    ran = ran_once(ec)
    # and the count has teeth: every host installed 2.0, exactly once
    assert all(lines == ["minicloud-ctl install 2.0"] for lines in ran.values()), ran


@pytest.mark.timeout(300)
async def test_the_standby_takes_over_a_killed_leaders_upgrade(
    peers: Peers, cloud: EmbeddedCloud
) -> None:
    await peers.start(2)
    leader = await peers.leader()
    standby = peers.standby(leader)
    loop = asyncio.get_running_loop()
    async with LoadGenerator(cloud.lb.url, rate=30, workers=4, max_duration=280) as load:
        await load.wait(10)
        upgrade_id = await submit(standby, cloud)  # 307 to the leader, followed
        await wait_status(peers, upgrade_id, running_in("upgrade-computes"))
        leader.signal(signal.SIGKILL)
        killed = loop.time()
        assert await leader.wait() == -signal.SIGKILL
        taken = await peers.leader(timeout=LEASE + 30)
        took = loop.time() - killed
        doc = await finish(peers, upgrade_id)
    report = load.report()
    assert taken is standby
    assert took <= LEASE + 5, f"took over after {took:.1f} s"
    assert_clean_end(doc, cloud)
    assert report.failed == 0, report.summary()
    assert report.requests > 100, report.summary()
    health = await standby.health()
    assert health is not None and (health["role"], health["epoch"]) == ("leader", 2)
    assert "resuming upgrade" in standby.log.read_text()
    assert {epoch for _, epoch in epochs(peers.store, upgrade_id)} == {1, 2}


@pytest.mark.timeout(300)
async def test_a_paused_leader_is_fenced_when_it_wakes(peers: Peers, cloud: EmbeddedCloud) -> None:
    await peers.start(2)
    old = await peers.leader()
    new = peers.standby(old)
    upgrade_id = await submit(old, cloud)
    await wait_status(peers, upgrade_id, running_in("upgrade-conductors"))
    # a viewer of the standby's event stream, from the first event, across all of it
    stream = asyncio.create_task(collect(new, upgrade_id))
    old.signal(signal.SIGSTOP)
    assert await peers.leader(timeout=LEASE + 30) is new
    # the new leader advances the upgrade as far as the approval gate
    await wait_status(peers, upgrade_id, lambda d: d["state"] == "waiting_approval")
    before = epochs(peers.store, upgrade_id)
    assert {e for _, e in before} == {1, 2}

    old.signal(signal.SIGCONT)
    async with asyncio.timeout(30):  # it notices, steps down and says why
        while "stepping down" not in old.log.read_text():  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.1)
        while (await old.health() or {}).get("role") != "standby":  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    log = old.log.read_text()
    assert "no longer the leader" in log
    doc = await finish(peers, upgrade_id)
    assert_clean_end(doc, cloud)
    seen = await asyncio.wait_for(stream, 60)
    assert seen == list(range(1, len(seen) + 1)), "every event once, in order, across the takeover"
    assert seen[-1] == epochs(peers.store, upgrade_id)[-1][0]
    # nothing the old leader tried after the takeover reached the journal: its
    # epoch's events all come before the first of the new leader's
    journal = epochs(peers.store, upgrade_id)
    first_new = min(seq for seq, e in journal if e == 2)
    assert all(e == 1 for seq, e in journal if seq < first_new)
    assert all(e == 2 for seq, e in journal if seq >= first_new)
    assert [x for x in journal if x[1] == 1] == [x for x in before if x[1] == 1]


@pytest.mark.timeout(400)
async def test_three_daemons_and_the_leader_killed_three_times(
    peers: Peers, cloud: EmbeddedCloud
) -> None:
    await peers.start(3)
    leader = await peers.leader()
    upgrade_id = await submit(leader, cloud)
    for phase in ("upgrade-conductors", "upgrade-apis", "upgrade-computes"):
        await wait_status(peers, upgrade_id, running_in(phase))
        leader.signal(signal.SIGKILL)
        await leader.wait()
        killed = leader
        leader = await peers.leader(timeout=LEASE + 30)
        assert leader is not killed
        await killed.start()  # restarted (as systemd would): a standby now
    doc = await finish(peers, upgrade_id)
    assert_clean_end(doc, cloud)
    assert {e for _, e in epochs(peers.store, upgrade_id)} == {1, 2, 3, 4}
