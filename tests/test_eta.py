"""The estimate of the critical path: from how long hosts took per phase in
earlier successful upgrades of the same playbook; batches in sequence, the
hosts of a batch side by side; a host at work has the rest of its mean."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from orchestrator import model
from orchestrator.engine.eta import History, critical_path, from_journal, history
from orchestrator.engine.view import UpgradeView
from orchestrator.inventory import parse_inventory_text
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import parse_playbook_text
from orchestrator.store.base import Event
from orchestrator.store.sqlite import connect, migrate
from tests.test_api import PLAYBOOK

INVENTORY = (
    "vars: {from_version: '1.0'}\n"
    "roles: {app: {version: {run: cat version}}}\n"
    "hosts:\n"
    "  a: {address: 127.0.0.1, roles: [app]}\n"
    "  b: {address: 127.0.0.2, roles: [app]}\n"
    "  c: {address: 127.0.0.3, roles: [app]}\n"
)


def plan() -> model.Plan:
    return compile_plan(
        *parse_inventory_text(INVENTORY), *parse_playbook_text(PLAYBOOK), Options(to_version="2.0")
    )


class Fold:
    def __init__(self, uid: str) -> None:
        self.view = UpgradeView(uid)
        self.seq = 0
        self.events: list[Event] = []

    def __call__(self, at: float, kind: str, **data: object) -> None:
        self.seq += 1
        event = Event(self.view.id, self.seq, at, kind, dict(data))
        self.events.append(event)
        self.view.apply(event)

    def host(self, phase: str, host: str, start: float, took: float) -> None:
        self(start, "host.state", phase=phase, host=host, state="upgrading")
        self(start + took, "host.state", phase=phase, host=host, state="done")


def earlier_run() -> Fold:
    """pin: every host 2 s; roll: 10, 12, 14 s; contract 1 s; finish 3 s."""
    run = Fold("u-old")
    run(0.0, "upgrade.state", state="running")
    for host in ("a", "b", "c"):
        run.host("pin", host, 1.0, 2.0)
    for i, host in enumerate(("a", "b", "c")):
        run.host("roll", host, 10.0 + 20 * i, 10.0 + 2 * i)
    run.host("contract", "a", 80.0, 1.0)
    run.host("finish", "a", 90.0, 3.0)
    run(100.0, "upgrade.state", state="succeeded")
    return run


def test_the_critical_path_from_earlier_runs() -> None:
    past = history([(plan(), earlier_run().view)], "lab")
    assert past.upgrades == 1
    assert past.per_host == {"pin": 2.0, "roll": 12.0, "contract": 1.0, "finish": 3.0}
    # pin: one batch of 3 side by side (2 s); roll: batch 1, three batches of 12 s
    assert critical_path(plan(), past) == 2.0 + 3 * 12.0 + 1.0 + 3.0

    # under way: pin done, roll's first host 5 s into its 12
    now = Fold("u-new")
    now(1000.0, "upgrade.state", state="running")
    now(1000.0, "phase.state", phase="pin", state="running")
    for host in ("a", "b", "c"):
        now.host("pin", host, 1001.0, 2.0)
    now(1004.0, "phase.state", phase="pin", state="done")
    now(1005.0, "phase.state", phase="roll", state="running")
    now(1005.0, "host.state", phase="roll", host="a", state="upgrading")
    left = critical_path(plan(), past, now.view, now=1010.0)
    assert left == 7.0 + 12.0 + 12.0 + 1.0 + 3.0


def test_no_estimate_without_history_or_from_another_playbook() -> None:
    assert critical_path(plan(), History({}, 0)) is None
    other = plan()
    renamed = model.from_data({**model.to_data(other), "name": "other"})
    assert history([(renamed, earlier_run().view)], "lab").upgrades == 0
    failed = earlier_run()
    failed(200.0, "upgrade.state", state="failed", reason="x")  # not a success: not a sample
    assert history([(plan(), failed.view)], "lab").per_host == {}


def test_plan_reads_the_history_from_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    conn = connect(path, reader=False)
    migrate(conn, path)
    run = earlier_run()
    conn.execute(
        "INSERT INTO upgrades (id, created_at, inventory, digest, meta, plan) VALUES (?,?,?,?,?,?)",
        ("u-old", 0.0, "inv", "d", "{}", model.to_json(plan())),
    )
    for e in run.events:
        conn.execute(
            "INSERT INTO events (upgrade_id, seq, at, kind, data) VALUES (?,?,?,?,?)",
            (e.upgrade_id, e.seq, e.at, e.kind, json.dumps(e.data)),
        )
    conn.commit()
    conn.close()
    past = from_journal(path, "lab")
    assert (past.upgrades, past.per_host["roll"]) == (1, 12.0)
    assert from_journal(tmp_path / "none.sqlite3", "lab") == History({}, 0)
    assert sqlite3.connect(path).execute("SELECT count(*) FROM events").fetchone()[0] > 0
