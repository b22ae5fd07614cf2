"""`orchestrator demo`: the whole product on one machine.

Starts a minicloud (services, load balancer, one SSH endpoint per host), the
daemon as its own process, and a steady load of checked API calls through
the load balancer; submits playbooks/minicloud.yaml over the HTTP API,
shows live progress, approves the point of no return (it is a demo), and
ends with a summary: duration, final state, versions, requests, failed
requests, latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from orchestrator.api.endpoint import ADDRESS_FILE, TOKEN_FILE
from orchestrator.client import Client, Endpoint, watch
from orchestrator.errors import DemoError, UsageError
from orchestrator.minicloud import db
from orchestrator.minicloud.control import pin_drift, versions
from orchestrator.minicloud.embedded import embedded_cloud
from orchestrator.minicloud.layout import PREFIX, read_host_config
from orchestrator.minicloud.loadgen import LoadGenerator
from orchestrator.render import failure_lines, verdict

DAEMON_START_DEADLINE = 30.0


@dataclass(frozen=True, slots=True)
class Daemon:
    process: asyncio.subprocess.Process
    endpoint: Endpoint
    log: Path


@contextlib.asynccontextmanager
async def running_daemon(
    state_dir: Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    start_deadline: float = DAEMON_START_DEADLINE,
) -> AsyncIterator[Daemon]:
    """`orchestrator serve` as a child process on a free loopback port.

    `args`: more `serve` options; `env`: the child's environment (this
    process's by default); `preexec_fn`: run in the child before it starts
    (benches and tests set resource limits with it)."""
    state_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start
    log_path = state_dir / "daemon.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state_dir),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=None if env is None else dict(env),
            preexec_fn=preexec_fn,
        )
    try:
        address = state_dir / ADDRESS_FILE
        deadline = time.monotonic() + start_deadline
        while not address.exists():
            if process.returncode is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise DemoError(f"the daemon did not start; its log ends:\n{tail}")
            await asyncio.sleep(0.05)
        url = json.loads(address.read_text())["url"]
        token = (state_dir / TOKEN_FILE).read_text().strip()
        yield Daemon(process, Endpoint(url, token), log_path)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _approve_when_asked(client: Client, upgrade_id: str, say: Callable[[str], None]) -> None:
    while True:
        doc = await client.status(upgrade_id)
        if doc["terminal"]:
            return
        if doc["state"] == "waiting_approval":
            say(f"demo: approved the point of no return ({doc['reason']})")
            await client.control(upgrade_id, "approve")
        await asyncio.sleep(0.5)


def _cloud_facts(cloud_db: Path, cloud: Any) -> dict[str, Any]:
    running = versions(cloud)
    by_host: dict[str, str] = {}
    for (_binary, host), version in sorted(running.items()):
        by_host[host] = version
    pins: dict[str, str | None] = {}
    for host in cloud.hosts:
        pins[host.name] = read_host_config(host.directory).pin
    with db.connection(cloud_db) as conn:
        old_column = db.has_column(conn, "instances", "host")
    # services whose running pin is not their config's: a change no restart made real
    drift = {f"{binary}@{host}": list(pair) for (binary, host), pair in pin_drift(cloud).items()}
    return {
        "versions": by_host,
        "pins": pins,
        "pin_drift": drift,
        "old_column_present": old_column,
    }


STOP_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[list[signal.Signals]]:
    """SIGHUP (its terminal closed), SIGTERM or SIGINT cancel the demo, so that
    the minicloud it started stops too: the cloud's services run in sessions
    of their own, out of the terminal's reach. Yields the signals caught."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    caught: list[signal.Signals] = []

    def stop(signum: signal.Signals) -> None:
        caught.append(signum)
        if task is not None:
            task.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        yield caught
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


async def run_demo(
    *,
    computes: int = 3,
    fail_host: str | None = None,
    as_json: bool = False,
    out: TextIO,
    rate: float = 25.0,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Run the demo and return its summary (also printed). A stop signal ends
    it early, the minicloud stopped, as a DemoError."""
    with _stopped_by_signals() as caught:
        try:
            return await _demo(
                computes=computes,
                fail_host=fail_host,
                as_json=as_json,
                out=out,
                rate=rate,
                keep=keep,
            )
        except asyncio.CancelledError:
            if not caught:
                raise
            raise DemoError(
                f"stopped by {caught[0].name}; the minicloud it started is stopped"
            ) from None


async def _demo(
    *,
    computes: int,
    fail_host: str | None,
    as_json: bool,
    out: TextIO,
    rate: float,
    keep: Path | None,
) -> dict[str, Any]:
    counts = {"conductor": 2, "api": 2, "compute": computes}
    names = [f"{PREFIX[role]}-{i}" for role, n in counts.items() for i in range(1, n + 1)]
    if fail_host is not None and fail_host not in names:
        raise UsageError(f"--fail-host {fail_host}: no such host (hosts: {', '.join(names)})")
    chatter: TextIO = sys.stderr if as_json else out
    with tempfile.TemporaryDirectory(prefix="orchestrator-demo-") as tmp:
        root = keep or Path(tmp)
        faults = {fail_host: ["unhealthy-2.0"]} if fail_host else {}
        chatter.write(f"demo: starting minicloud ({computes} computes) in {root / 'cloud'}\n")
        async with embedded_cloud(root / "cloud", computes=computes, faults=faults) as ec:
            chatter.write(f"demo: inventory {ec.inventory_path}\n")
            async with running_daemon(root / "state") as daemon, Client(daemon.endpoint) as client:
                chatter.write(f"demo: daemon at {daemon.endpoint.url}, load on {ec.lb.url}\n")
                started = time.monotonic()
                async with LoadGenerator(ec.lb.url, rate=rate, max_duration=600) as load:
                    await load.wait(20)
                    answer = await client.submit(
                        {
                            "inventory": ec.inventory_text,
                            "inventory_name": str(ec.inventory_path),
                            "playbook_name": "minicloud",
                            "to_version": "2.0",
                        }
                    )
                    upgrade_id = answer["id"]
                    chatter.write(f"demo: submitted upgrade {upgrade_id}\n")
                    # a line written under the live view would shift it and leave a
                    # stale title above it: what the demo says waits for its end
                    live = not as_json and Console(file=chatter).is_terminal
                    held: list[str] = []

                    def say(line: str) -> None:
                        if live:
                            held.append(line)
                        else:
                            chatter.write(line + "\n")
                            chatter.flush()

                    approver = asyncio.create_task(_approve_when_asked(client, upgrade_id, say))
                    try:
                        doc = await watch(client, upgrade_id, chatter, live=live)
                    finally:
                        approver.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await approver
                        chatter.write("".join(line + "\n" for line in held))
                    await asyncio.sleep(1.0)  # a last second of traffic on the final fleet
                report = load.report()
                duration = time.monotonic() - started
            facts = _cloud_facts(ec.cloud.db, ec.cloud)
    summary = {
        "upgrade": upgrade_id,
        "state": doc["state"],
        "reason": doc.get("reason"),
        "verdict": verdict(doc),
        "first_failure": doc.get("first_failure"),
        "duration_s": round(duration, 1),
        "requests": report.requests,
        "failed": report.failed,
        "failures": report.failures,
        "latency_p50_ms": round(report.p50 * 1000, 1),
        "latency_p99_ms": round(report.p99 * 1000, 1),
        **facts,
    }
    if as_json:
        out.write(json.dumps(summary) + "\n")
    else:
        out.write(format_summary(summary))
    out.flush()
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    versions_seen = sorted(set(summary["versions"].values()))
    pinned = sorted(h for h, p in summary["pins"].items() if p)
    lines = [
        "",
        f"upgrade {summary['upgrade']}: {summary['state']} in {summary['duration_s']} s",
        f"  {summary['requests']} requests, {summary['failed']} failed"
        + (f" {summary['failures']}" if summary["failures"] else "")
        + f"; latency p50 {summary['latency_p50_ms']} ms, p99 {summary['latency_p99_ms']} ms",
        f"  versions: {', '.join(versions_seen)} on {len(summary['versions'])} services"
        + (f"; pinned: {', '.join(pinned)}" if pinned else "; no pins left"),
        "  running pins: "
        + (
            "as configured on every service"
            if not summary["pin_drift"]
            else "differ from their config on " + ", ".join(sorted(summary["pin_drift"]))
        ),
        "  instances.host column: "
        + ("still there (not contracted)" if summary["old_column_present"] else "dropped"),
    ]
    if summary.get("reason"):
        lines.insert(2, f"  {summary['reason']}")
    failure = summary.get("first_failure")
    if failure:  # the cause stays on screen, whatever the rollback said last
        lines[3:3] = ["  " + line for line in failure_lines(failure)]
    return "\n".join(lines) + "\n"


def exit_code(summary: dict[str, Any]) -> int:
    return 0 if summary["state"] == "succeeded" else 1


def env_keep() -> Path | None:
    value = os.environ.get("ORCHESTRATOR_DEMO_DIR")
    return Path(value) if value else None
