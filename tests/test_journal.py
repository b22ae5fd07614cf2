"""The journal against a real SQLite file: ordering, durability, group commit."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.errors import ConflictError, NotFoundError, StoreError
from orchestrator.store.journal import Event, Journal
from orchestrator.store.sqlite import MIGRATIONS

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "journal.db")
    yield j
    await j.close()


async def make(journal: Journal, upgrade_id: str, **meta: str) -> None:
    await journal.create(
        upgrade_id, '{"plan": true}', inventory="lab", digest="d-" + upgrade_id, meta=meta
    )


async def test_round_trip(journal: Journal) -> None:
    await make(journal, "u1", submitted_by="ops")
    first = await journal.append("u1", "upgrade.state", {"state": "running"})
    second = await journal.append("u1", "step", {"host": "cmp-1", "exit": 0, "ok": True})

    assert (first.upgrade_id, first.seq, first.kind) == ("u1", 1, "upgrade.state")
    assert second.seq == 2
    assert first.at <= second.at <= time.time()
    assert await journal.events("u1") == [first, second]
    assert await journal.events("u1", after=1) == [second]
    assert await journal.events("u1", limit=1) == [first]
    assert await journal.plan_json("u1") == '{"plan": true}'

    record = await journal.get("u1")
    assert (record.id, record.inventory, record.digest) == ("u1", "lab", "d-u1")
    assert record.meta == {"submitted_by": "ops"}
    assert (record.last_seq, record.last_kind) == (2, "step")
    assert [r.id for r in await journal.upgrades()] == ["u1"]


async def test_returned_event_is_what_a_reread_gives(journal: Journal) -> None:
    await make(journal, "u1")
    # a tuple goes in; JSON has no tuples, so both the ack and the reread hold a list
    event = await journal.append("u1", "gate", {"ok": False, "hosts": ("a", "b")})
    assert event.data == {"ok": False, "hosts": ["a", "b"]}
    assert await journal.events("u1") == [event]


async def test_new_upgrade_has_no_events(journal: Journal) -> None:
    await make(journal, "u1")
    record = await journal.get("u1")
    assert (record.last_seq, record.last_kind) == (0, None)
    assert await journal.events("u1") == []


async def test_unknown_and_duplicate_upgrades(journal: Journal) -> None:
    await make(journal, "u1")
    with pytest.raises(ConflictError, match="u1"):
        await make(journal, "u1")
    with pytest.raises(NotFoundError, match="nope"):
        await journal.append("nope", "x", {})
    for read in (journal.get, journal.plan_json, journal.events):
        with pytest.raises(NotFoundError):
            await read("nope")
    with pytest.raises(NotFoundError):
        await journal.wait_for("nope", 0, 0.1)
    # the failures did not disturb the sequence of the real upgrade
    assert (await journal.append("u1", "x", {})).seq == 1


async def test_non_json_data_is_refused_before_queueing(journal: Journal) -> None:
    await make(journal, "u1")
    with pytest.raises(TypeError):
        await journal.append("u1", "x", {"when": object()})
    with pytest.raises(ValueError, match="JSON"):
        await journal.append("u1", "x", {"ratio": float("nan")})
    assert (await journal.append("u1", "x", {})).seq == 1


async def test_append_all_writes_events_in_order_in_one_commit_or_none(
    journal: Journal,
) -> None:
    """A host's step that ends and the next that starts go as one commit."""
    await make(journal, "u1")
    await journal.append("u1", "x", {})
    commits = journal.stats.commits
    ended, started = await journal.append_all(
        "u1", [("step", {"state": "done"}), ("step", {"state": "running"})]
    )
    assert journal.stats.commits == commits + 1
    assert (ended.seq, ended.data, started.seq, started.data) == (
        2,
        {"state": "done"},
        3,
        {"state": "running"},
    )
    assert await journal.events("u1", after=1) == [ended, started]
    # one bad event: none of them is queued
    with pytest.raises(ValueError, match="JSON"):
        await journal.append_all("u1", [("x", {"ok": 1}), ("x", {"bad": float("nan")})])
    with pytest.raises(NotFoundError):
        await journal.append_all("nope", [("x", {}), ("x", {})])
    assert [e.seq for e in await journal.events("u1")] == [1, 2, 3]


async def test_seq_gapless_under_concurrency_and_commits_grouped(journal: Journal) -> None:
    ids = ["a", "b", "c"]
    for uid in ids:
        await make(journal, uid)
    commits_before = journal.stats.commits

    acked = await asyncio.gather(
        *(journal.append(ids[i % 3], "tick", {"i": i}) for i in range(200))
    )

    for uid in ids:
        mine = [e for e in acked if e.upgrade_id == uid]
        assert sorted(e.seq for e in mine) == list(range(1, len(mine) + 1))
        stored = await journal.events(uid)
        assert [e.seq for e in stored] == list(range(1, len(mine) + 1))
        assert sorted(stored, key=lambda e: e.data["i"]) == sorted(mine, key=lambda e: e.data["i"])
        # seq follows `at`: the writer stamps events in the order it sequences them
        assert [e.at for e in stored] == sorted(e.at for e in stored)
    commits = journal.stats.commits - commits_before
    assert 1 <= commits < 200, f"200 concurrent appends took {commits} commits"
    assert journal.stats.largest_batch > 1


async def test_events_cannot_be_updated_or_deleted(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with await Journal.open(path) as journal:
        await make(journal, "u1")
        await journal.append("u1", "x", {"v": 1})
    raw = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("UPDATE events SET kind = 'forged'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute("DELETE FROM events")
        with pytest.raises(sqlite3.IntegrityError, match="gapless"):
            raw.execute("INSERT INTO events VALUES ('u1', 5, 0, 'x', '{}')")
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            raw.execute("UPDATE upgrades SET plan = '{}'")
        raw.rollback()
        assert raw.execute("SELECT seq, kind, data FROM events").fetchall() == [(1, "x", '{"v":1}')]
    finally:
        raw.close()


async def test_reopen_keeps_everything_and_continues_seq(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = await Journal.open(path)
    await make(journal, "u1", who="ops")
    await make(journal, "u2")
    written = [await journal.append("u1", "x", {"n": n}) for n in range(5)]
    assert await journal.remember_key("key-1", "u1") == "u1"
    await journal.close()

    journal = await Journal.open(path)
    try:
        assert await journal.events("u1") == written
        assert [(r.id, r.last_seq) for r in await journal.upgrades()] == [("u1", 5), ("u2", 0)]
        assert (await journal.get("u1")).meta == {"who": "ops"}
        assert (await journal.append("u1", "x", {})).seq == 6
        assert (await journal.append("u2", "x", {})).seq == 1
        assert await journal.remember_key("key-1", "u2") == "u1"
        assert await journal.lookup_key("key-1") == "u1"
    finally:
        await journal.close()


async def test_close_flushes_pending_appends(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = await Journal.open(path)
    await make(journal, "u1")
    pending = [asyncio.ensure_future(journal.append("u1", "x", {"n": n})) for n in range(50)]
    await asyncio.sleep(0)  # every append is queued, none necessarily committed
    await journal.close()
    assert all(task.done() and task.exception() is None for task in pending)
    with pytest.raises(StoreError, match="closed"):
        await journal.append("u1", "x", {})
    with pytest.raises(StoreError, match="closed"):
        await journal.events("u1")

    async with await Journal.open(path) as again:
        assert [e.seq for e in await again.events("u1")] == list(range(1, 51))


async def test_create_and_append_in_one_batch(journal: Journal) -> None:
    # queued back to back they share a transaction: the append sees the new upgrade
    _, event = await asyncio.gather(make(journal, "n"), journal.append("n", "x", {}))
    assert event.seq == 1
    assert await journal.events("n") == [event]


async def test_remember_key(journal: Journal) -> None:
    assert await journal.lookup_key("k") is None
    assert await journal.remember_key("k", "first") == "first"
    assert await journal.remember_key("k", "second") == "first"
    both = await asyncio.gather(journal.remember_key("j", "x"), journal.remember_key("j", "y"))
    assert list(both) == ["x", "x"]


async def test_wait_for_wakes_on_append_and_times_out_empty(journal: Journal) -> None:
    await make(journal, "u1")
    await make(journal, "u2")
    loop = asyncio.get_running_loop()

    started = loop.time()
    assert await journal.wait_for("u1", 0, 0.2) == []
    assert loop.time() - started >= 0.19

    waiter = asyncio.ensure_future(journal.wait_for("u1", 0, 30))
    await asyncio.sleep(0.05)
    await journal.append("u2", "other", {})  # another upgrade does not satisfy it
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = loop.time()
    event = await journal.append("u1", "x", {})
    assert await asyncio.wait_for(waiter, 5) == [event]
    assert loop.time() - started < 5

    # events already there are returned at once, without waiting
    second = await journal.append("u1", "y", {})
    assert await journal.wait_for("u1", 0, 30) == [event, second]
    assert await journal.wait_for("u1", 1, 30) == [second]


async def test_after_commit_sees_every_event_in_seq_order(tmp_path: Path) -> None:
    seen: list[Event] = []
    journal = await Journal.open(tmp_path / "journal.db", after_commit=seen.append)
    try:
        await make(journal, "a")
        await make(journal, "b")
        # the callback has run by the time append returns
        first = await journal.append("a", "x", {})
        assert seen == [first]
        acked = await asyncio.gather(
            *(journal.append("ab"[i % 2], "x", {"i": i}) for i in range(100))
        )
    finally:
        await journal.close()
    assert sorted(seen, key=lambda e: e.data.get("i", -1)) == [first, *acked]
    assert [e.seq for e in seen if e.upgrade_id == "a"] == list(range(1, 52))
    assert [e.seq for e in seen if e.upgrade_id == "b"] == list(range(1, 51))


async def test_after_commit_failure_does_not_break_the_journal(journal: Journal) -> None:
    def explode(event: Event) -> None:
        raise RuntimeError("callback bug")

    journal._after_commit = explode
    await make(journal, "u1")
    assert (await journal.append("u1", "x", {})).seq == 1
    assert (await journal.append("u1", "x", {})).seq == 2


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with await Journal.open(path):
        pass
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        await Journal.open(path)


async def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        await Journal.open(tmp_path / "missing-dir" / "journal.db")


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from orchestrator.store.journal import Journal

    KILL_AT = 50

    def after_commit(event):
        print(event.seq, flush=True)
        if event.seq == KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        journal = await Journal.open(Path(sys.argv[1]), after_commit=after_commit)
        await journal.create("u1", "{}", inventory="lab", digest="d", meta={})
        async def writer(w):
            for n in range(20):
                await journal.append("u1", "tick", {"writer": w, "n": n})
        await asyncio.gather(*(writer(w) for w in range(10)))
        print("not killed", flush=True)

    asyncio.run(main())
    """
)


async def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode == -signal.SIGKILL, err.decode()
    acked = [int(line) for line in out.decode().split()]
    assert acked == list(range(1, 51))  # after_commit ran in seq order up to the kill

    async with await Journal.open(path) as journal:
        events = await journal.events("u1")
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) >= 50
        assert all(e.kind == "tick" for e in events)
        # every event is whole: each writer's numbers are in order, with no holes
        for w in range(10):
            ns = [e.data["n"] for e in events if e.data["writer"] == w]
            assert ns == list(range(len(ns)))
        # and the journal goes on from where the dead process stopped
        assert (await journal.append("u1", "resumed", {})).seq == len(seqs) + 1
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert json.loads(raw.execute("SELECT meta FROM upgrades").fetchone()[0]) == {}
    finally:
        raw.close()


# --- host leases ---------------------------------------------------------------------


async def test_leases_are_taken_with_the_upgrade_and_refused_to_a_second(
    journal: Journal,
) -> None:
    a = {"10.0.0.1:22": "cmp-1", "10.0.0.2:22": "cmp-2"}
    await journal.create("u1", "{}", inventory="lab", digest="d", meta={}, endpoints=a)
    assert await journal.leases() == {
        "10.0.0.1:22": ("u1", "cmp-1"),
        "10.0.0.2:22": ("u1", "cmp-2"),
    }
    # the same machine under another name, in another inventory
    renamed = {"10.0.0.2:22": "compute-b", "10.0.0.3:22": "compute-c"}
    with pytest.raises(ConflictError) as info:
        await journal.create("u2", "{}", inventory="other", digest="d", meta={}, endpoints=renamed)
    assert str(info.value) == (
        "host compute-b (10.0.0.2:22) is held by upgrade u1 (as cmp-2): "
        "one upgrade at a time per host"
    )
    assert [r.id for r in await journal.upgrades()] == ["u1"], "nothing of u2 was created"
    assert "10.0.0.3:22" not in await journal.leases()

    # an end state releases them in its own commit
    await journal.append("u1", "upgrade.state", {"state": "running"})
    assert len(await journal.leases()) == 2
    await journal.append("u1", "upgrade.state", {"state": "failed"}, release=True)
    assert await journal.leases() == {}
    await journal.create("u2", "{}", inventory="other", digest="d", meta={}, endpoints=renamed)
    # and a rollback of u1 now needs its hosts again
    with pytest.raises(ConflictError, match="held by upgrade u2"):
        await journal.lease("u1", a)
    await journal.lease("u2", renamed)  # taking what one holds is a no-op
    assert set(await journal.leases()) == set(renamed)


async def test_a_journal_from_before_leases_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute(
            "INSERT INTO upgrades (id, created_at, inventory, digest, meta, plan)"
            " VALUES ('old', 1.0, 'lab', 'd', '{}', '{}')"
        )
    j = await Journal.open(path)
    try:
        assert [r.id for r in await j.upgrades()] == ["old"]
        assert await j.leases() == {}
        await j.lease("old", {"10.0.0.1:22": "cmp-1"})
        assert await j.leases() == {"10.0.0.1:22": ("old", "cmp-1")}
    finally:
        await j.close()
