"""`orchestrator demo --json` end to end: minicloud, the daemon as a child
process, the load generator and the HTTP API, as `make demo` runs it."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


async def demo_json(*options: str) -> tuple[int | None, dict[str, Any], bytes]:
    """`orchestrator demo --json OPTIONS`: its exit code, summary and chatter."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "demo",
        "--json",
        *options,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert out.strip(), err.decode()[-3000:]
    return proc.returncode, json.loads(out.decode().strip().splitlines()[-1]), err


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_demo_json_summary_says_n_requests_0_failed() -> None:
    code, summary, err = await demo_json()
    assert code == 0, err.decode()[-3000:]
    assert summary["state"] == "succeeded"
    assert summary["failed"] == 0
    assert summary["requests"] > 500
    assert summary["duration_s"] > 0
    assert set(summary["versions"].values()) == {"2.0"}
    assert len(summary["versions"]) == 7  # 2 conductors, 2 APIs, 3 computes
    assert not summary["old_column_present"]
    assert summary["pin_drift"] == {}  # every service runs the pin its config has
    assert "demo: approved the point of no return" in err.decode()  # over HTTP
    assert re.fullmatch(r"succeeded in \d+ s, 7/7 hosts at 2\.0", summary["verdict"])
    assert summary["first_failure"] is None


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_failed_host_is_the_cause_to_the_end() -> None:
    """Issue 13: the final screen said "every host and pin undone", not which
    host failed which check with what output."""
    code, summary, err = await demo_json("--fail-host", "cmp-2")
    assert code == 1, err.decode()[-3000:]
    assert summary["state"] == "rolled_back"
    assert summary["failed"] == 0
    failure = summary["first_failure"]
    assert (failure["what"], failure["host"], failure["phase"]) == (
        "health",
        "cmp-2",
        "upgrade-computes",
    )
    assert failure["summary"].startswith("cmp-2 failed its health check: ")
    assert summary["verdict"].startswith("rolled back after ")
    assert summary["verdict"].endswith(failure["summary"])
    chatter = err.decode().splitlines()
    # the plain watch ends with the cause, then the verdict
    assert f"first failure: {failure['summary']}" in chatter
    assert chatter[-1] == f"upgrade {summary['upgrade']} {summary['verdict']}"


async def test_demo_rejects_an_unknown_fail_host_before_upgrading() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "demo",
        "--fail-host",
        "nope",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "--fail-host nope: no such host (hosts: ctl-1, ctl-2, api-1" in err.decode()
