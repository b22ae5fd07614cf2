"""Crash safety: SIGKILL the engine after journal event k, for a wide sample
of k, start it again, and the end state equals an uninterrupted run: every
host at target, none drained, the pin gone, no non-idempotent step run twice
(they are `mkdir`, which fails when repeated)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from orchestrator import model
from tests.enginekit import host_state, make_plan, seed
from tests.sshhosts import MakeSSHHosts, SSHHosts

REPO = Path(__file__).resolve().parent.parent
SAMPLES = int(os.environ.get("CRASH_SAMPLES", "12"))  # CRASH_SAMPLES=0: every index


async def _child(journal: Path, plan: Path, crash_at: int | None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.crash_child",
        str(journal),
        str(plan),
        "-" if crash_at is None else str(crash_at),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()[-2000:]


def _reset(hosts: SSHHosts) -> None:
    for name in hosts.names:
        directory = hosts.host_dir(name)
        for path in directory.glob("m-*"):
            shutil.rmtree(path)
        for leftover in ("runs.log", "drained"):
            (directory / leftover).unlink(missing_ok=True)
    seed(hosts)


@pytest.mark.timeout(400)
async def test_kill_at_every_sampled_journal_event_then_resume(
    make_ssh_hosts: MakeSSHHosts, tmp_path: Path
) -> None:
    hosts = await make_ssh_hosts(3)
    seed(hosts)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(model.to_json(make_plan(hosts, batch=[1, 2])))

    code, out = await _child(tmp_path / "reference.db", plan_path, None)
    assert code == 0 and out.startswith("succeeded"), out
    reference = {name: host_state(hosts, name) for name in hosts.names}
    assert all(st["version"] == "2.0" for st in reference.values())
    with sqlite3.connect(tmp_path / "reference.db") as db:
        (total,) = db.execute("SELECT count(*) FROM events").fetchone()
    assert total > 40

    indices = list(range(1, total + 1))
    if SAMPLES and total > SAMPLES:
        step = (total - 1) / (SAMPLES - 1)
        indices = sorted({1 + round(i * step) for i in range(SAMPLES)})
    for k in indices:
        _reset(hosts)
        before = {name: len(hosts.commands(name)) for name in hosts.names}
        journal = tmp_path / f"crash-{k}.db"
        code, out = await _child(journal, plan_path, k)
        assert code == -9, f"k={k}: child was not killed: {out}"
        code, out = await _child(journal, plan_path, None)
        assert code == 0 and out.startswith("succeeded"), f"k={k}: {out}"
        for name in hosts.names:
            state = host_state(hosts, name)
            # runs.log may repeat a line when a kill cut a command between its
            # echo and its mkdir; the mkdir markers are the exactly-once proof
            state.pop("runs")
            expected = dict(reference[name])
            expected.pop("runs")
            assert state == expected, f"k={k} host {name}"
            sent = hosts.commands(name)[before[name] :]
            for marker in ("m-expand", "m-upgrade", "m-contract"):
                # a mkdir re-sent only when the kill cut it off before it ran
                assert sent.count(f"mkdir {marker}") <= 2, (k, name, marker)
