"""The PostgreSQL journal: the SQLite journal's guarantees, held by the
database itself, plus fencing by epoch and following another daemon's
commits. Every test has a database of its own on one real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from orchestrator.errors import ConflictError, FencedError, NotLeaderError, StoreError
from orchestrator.store import pgschema
from orchestrator.store.postgres import PostgresJournal, redact

pytestmark = pytest.mark.integration

PLAN = '{"plan": 1}'


def set_epoch(url: str, epoch: int) -> None:
    """What a takeover does to the leadership row (the only part fencing reads)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE leadership SET epoch = %s", (epoch,))


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())


@pytest.fixture
async def journal(pg_url: str) -> AsyncIterator[PostgresJournal]:
    opened = await PostgresJournal.open(pg_url)
    set_epoch(pg_url, 1)
    await opened.lead(1)
    yield opened
    await opened.close()


async def create(
    journal: PostgresJournal, uid: str, endpoints: dict[str, str] | None = None
) -> None:
    await journal.create(
        uid, PLAN, inventory="inv.yaml", digest="d1", meta={"via": "test"}, endpoints=endpoints
    )


async def test_round_trip_and_group_commit(journal: PostgresJournal) -> None:
    await create(journal, "u1", {"10.0.0.1:22": "cmp-1"})
    appended = await asyncio.gather(
        *(journal.append("u1", "step", {"n": n, "text": "ünïcode"}) for n in range(200))
    )
    assert sorted(e.seq for e in appended) == list(range(1, 201))
    assert journal.stats.events == 200
    assert journal.stats.commits < 200, "concurrent appends share commits"
    read = await journal.events("u1")
    assert [e.seq for e in read] == list(range(1, 201))
    assert read[0].data == appended[0].data  # exactly what the append returned
    assert [e.seq for e in await journal.events("u1", after=190, limit=5)] == [
        191,
        192,
        193,
        194,
        195,
    ]
    record = await journal.get("u1")
    assert (record.last_seq, record.last_kind, record.meta) == (200, "step", {"via": "test"})
    assert [r.id for r in await journal.upgrades()] == ["u1"]
    assert await journal.plan_json("u1") == PLAN
    assert await journal.leases() == {"10.0.0.1:22": ("u1", "cmp-1")}
    assert await journal.remember_key("k", "u1") == "u1"
    assert await journal.remember_key("k", "u2") == "u1"
    assert await journal.lookup_key("k") == "u1"


async def test_append_all_is_one_commit_in_order(journal: PostgresJournal) -> None:
    await create(journal, "u1")
    commits = journal.stats.commits
    ended, started = await journal.append_all(
        "u1", [("step", {"state": "done"}), ("step", {"state": "running"})]
    )
    assert journal.stats.commits == commits + 1
    assert (ended.seq, started.seq) == (1, 2)
    assert await journal.events("u1") == [ended, started]
    with pytest.raises(ValueError, match="JSON"):
        await journal.append_all("u1", [("x", {}), ("x", {"bad": float("nan")})])
    assert [e.seq for e in await journal.events("u1")] == [1, 2]


async def test_the_database_refuses_edits_gaps_and_stale_epochs(
    journal: PostgresJournal, pg_url: str
) -> None:
    await create(journal, "u1", {"10.0.0.1:22": "cmp-1"})
    await journal.append("u1", "step", {})
    refused = {
        "UPDATE events SET kind = 'x'": pgschema.APPEND_ONLY,
        "DELETE FROM events": pgschema.APPEND_ONLY,
        "TRUNCATE events CASCADE": pgschema.APPEND_ONLY,
        "UPDATE upgrades SET plan = '{}'": pgschema.APPEND_ONLY,
        "DELETE FROM upgrades": pgschema.APPEND_ONLY,
        "INSERT INTO events VALUES ('u1', 3, 0, 'k', '{}', 1)": pgschema.GAPLESS,
        "INSERT INTO events VALUES ('u1', 2, 0, 'k', '{}', 0)": pgschema.FENCED,
        "INSERT INTO leases VALUES ('e:22', 'h', 'u1', 0, 0)": pgschema.FENCED,
        "DELETE FROM leases": pgschema.FENCED,  # no epoch in the transaction
        "UPDATE leadership SET epoch = 0": pgschema.FENCED,  # the epoch only grows
        "DELETE FROM leadership": pgschema.FENCED,
    }
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for sql, sqlstate in refused.items():
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(sql)
            assert caught.value.sqlstate == sqlstate, sql
    assert [e.seq for e in await journal.events("u1")] == [1]
    assert await journal.leases() == {"10.0.0.1:22": ("u1", "cmp-1")}


async def test_a_standby_writes_nothing(pg_url: str) -> None:
    standby = await PostgresJournal.open(pg_url)
    try:
        with pytest.raises(NotLeaderError, match="standby"):
            await standby.create("u1", PLAN, inventory="i", digest="d", meta={})
        with pytest.raises(NotLeaderError):
            await standby.remember_key("k", "u1")
    finally:
        await standby.close()
    assert rows(pg_url, "SELECT count(*) FROM upgrades") == [(0,)]


async def test_a_stale_leader_is_fenced_and_writes_nothing_more(
    journal: PostgresJournal, pg_url: str
) -> None:
    await create(journal, "u1", {"10.0.0.1:22": "cmp-1"})
    await journal.append("u1", "step", {"n": 1})
    told: list[str] = []
    journal.on_fenced = told.append

    set_epoch(pg_url, 2)  # another daemon took over
    batch = [journal.append("u1", "step", {"n": n}, release=True) for n in range(5)]
    outcomes = await asyncio.gather(*batch, return_exceptions=True)
    assert all(isinstance(o, FencedError) for o in outcomes), outcomes
    assert told == ["stale leader epoch 1: the store is at epoch 2, a newer leader took over"]
    with pytest.raises(FencedError, match="no longer leads"):
        await journal.lease("u1", {"10.0.0.2:22": "cmp-2"})  # refused before the database
    assert told == told[:1], "told once"
    # nothing of the stale batch: no event, and the release did not drop the lease
    assert [e.seq for e in await journal.events("u1")] == [1]
    assert await journal.leases() == {"10.0.0.1:22": ("u1", "cmp-1")}

    await journal.lead(2)  # elected again, later: writes go on after the last seq
    assert (await journal.append("u1", "step", {})).seq == 2
    assert rows(pg_url, "SELECT seq, epoch FROM events ORDER BY seq") == [(1, 1), (2, 2)]


async def test_a_held_host_refuses_the_second_upgrade_and_release_frees_it(
    journal: PostgresJournal,
) -> None:
    await create(journal, "u1", {"10.0.0.1:22": "cmp-1"})
    with pytest.raises(ConflictError, match=r"cmp-1b \(10.0.0.1:22\) is held by upgrade u1"):
        await create(journal, "u2", {"10.0.0.1:22": "cmp-1b", "10.0.0.9:22": "x"})
    assert [r.id for r in await journal.upgrades()] == ["u1"]
    assert set(await journal.leases()) == {"10.0.0.1:22"}
    await journal.append("u1", "upgrade", {"state": "succeeded"}, release=True)
    assert await journal.leases() == {}
    await create(journal, "u2", {"10.0.0.1:22": "cmp-1b"})
    assert await journal.leases() == {"10.0.0.1:22": ("u2", "cmp-1b")}


async def test_a_standby_follows_the_leaders_commits(journal: PostgresJournal, pg_url: str) -> None:
    standby = await PostgresJournal.open(pg_url)
    heard: list[tuple[str, int]] = []
    standby.on_change = lambda uid, seq: heard.append((uid, seq))
    try:
        await create(journal, "u1")
        waiting = asyncio.create_task(standby.wait_for("u1", 0, timeout=30))
        await journal.append("u1", "step", {"n": 1})
        found = await waiting
        assert [(e.seq, e.data) for e in found] == [(1, {"n": 1})]
        for n in range(2, 5):
            await journal.append("u1", "step", {"n": n})
        found = await standby.wait_for("u1", 1, timeout=30)
        while found[-1].seq < 4:  # NOTIFYs may come one commit at a time
            found += await standby.wait_for("u1", found[-1].seq, timeout=30)
        assert [e.seq for e in found] == [2, 3, 4]
        assert ("u1", 0) in heard or ("u1", 1) in heard  # it learned of the new upgrade
        assert heard[-1] == ("u1", 4)
        assert await standby.wait_for("u1", 4, timeout=0.05) == []
    finally:
        await standby.close()


async def test_schema_from_a_newer_release_is_refused(pg_url: str) -> None:
    first = await PostgresJournal.open(pg_url)
    await first.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE orchestrator_schema SET version = 99")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await PostgresJournal.open(pg_url)


async def test_daemons_starting_together_migrate_once(pg_url: str) -> None:
    opened = await asyncio.gather(*(PostgresJournal.open(pg_url) for _ in range(4)))
    for journal in opened:
        await journal.close()
    assert rows(pg_url, "SELECT version FROM orchestrator_schema") == [(pgschema.SCHEMA_VERSION,)]
    assert rows(pg_url, "SELECT epoch FROM leadership") == [(0,)]


async def test_an_unreachable_store_is_a_clear_error() -> None:
    url = "postgresql://nobody:s3cret@127.0.0.1:1/none"
    with pytest.raises(StoreError) as caught:
        await PostgresJournal.open(url)
    assert "postgresql://nobody@127.0.0.1:1/none: cannot connect" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert redact(url) == "postgresql://nobody@127.0.0.1:1/none"
