"""What the CLI prints about an upgrade: one line per event (plain output)
and the status picture (rich), shared by `status` and `watch`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator import events
from orchestrator.errors import EventFormatError


def describe_event(event: Mapping[str, Any]) -> str | None:
    """One plain line per event worth a line (None for the rest)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
    try:
        ev = events.parse(event["kind"], event["data"])
    except EventFormatError:
        return f"{stamp} {event['kind']} (written by a newer release)"
    text = _describe(ev)
    return None if text is None else f"{stamp} {text}"


def _describe(ev: events.JournalEvent | None) -> str | None:
    why, failed = getattr(ev, "reason", None), getattr(ev, "error", None)
    reason = f": {why}" if why else ""
    error = f": {failed}" if failed else ""
    match ev:
        case events.UpgradeStateChanged():
            return f"upgrade {ev.state}{reason}"
        case events.PhaseStateChanged():
            return f"phase {ev.phase} {ev.state}{reason}"
        case events.HostStateChanged():
            return f"  {ev.phase} {ev.host} {ev.state}{error}"
        case events.Step():
            exit_ = f" (exit {ev.exit})" if ev.exit is not None else ""
            return f"    {ev.host} {ev.step} {ev.state}{exit_}{error}"
        case events.PreflightHost():
            version = f" {ev.version}" if ev.version else ""
            return f"  preflight {ev.host} {ev.status}{version}{error}"
        case events.Gate():
            return f"  gate {ev.phase}: {'passed' if ev.ok else 'failed'} ({ev.detail})"
        case events.Health() if not ev.ok:
            return f"    {ev.host} health check failed: {ev.detail}"
        case events.Drain():
            return f"    {ev.host} {ev.action} {ev.stage}{error}"
        case events.Control():
            host = f" {ev.host}" if ev.host else ""
            by = f" (by {ev.by})" if ev.by else ""
            return f"control: {ev.action}{host}{by}"
    return None


def header(doc: Mapping[str, Any]) -> str:
    return (
        f"upgrade {doc['id']}: {doc['name']} {doc['from_version']} -> {doc['to_version']} "
        f"on {doc['inventory']}"
    )


ICONS = {
    "pending": "·",
    "draining": "⇣",
    "upgrading": "⟳",
    "checking": "♥",
    "undraining": "⇡",
    "done": "✓",
    "skipped": "↷",
    "failed": "✗",
    "rolling_back": "↺",
    "rolled_back": "↺",
}
STATE_STYLE = {
    "succeeded": "green",
    "done": "green",
    "failed": "red",
    "rolled_back": "yellow",
    "rolling_back": "yellow",
    "aborted": "yellow",
}
ACTIVE_HOST = ("draining", "upgrading", "checking", "undraining", "rolling_back", "failed")


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def elapsed(doc: Mapping[str, Any], now: float | None = None) -> float:
    """Seconds since the upgrade began: to its last event once it has ended."""
    start = doc.get("created_at") or 0.0
    if doc.get("terminal"):
        return float((doc.get("updated_at") or start) - start)
    return (time.time() if now is None else now) - start


def verdict(doc: Mapping[str, Any]) -> str:
    """The last line: how it ended and why."""
    state = doc["state"]
    hosts = doc.get("hosts") or {}
    took = duration(elapsed(doc))
    if state == "succeeded":
        count = f"{hosts.get('through', 0)}/{hosts.get('total', 0)} hosts at {doc['to_version']}"
        return f"succeeded in {took}, {count}"
    failure = doc.get("first_failure")
    cause = failure["summary"] if failure else (doc.get("reason") or "no reason given")
    label = state.replace("_", " ")
    if state in ("rolled_back", "failed", "aborted"):
        return f"{label} after {took}: {cause}"
    return f"{label}: {doc['next']}"


def failure_lines(failure: Mapping[str, Any]) -> list[str]:
    where = " ".join(
        f"{k} {failure[k]}" for k in ("phase", "host", "step") if failure.get(k) is not None
    )
    lines = [f"first failure: {failure['summary']}"]
    if where:
        lines.append(f"  where: {where}")
    lines += [f"  | {line}" for line in (failure.get("output") or "").splitlines()[-10:]]
    return lines


def render_status(
    doc: Mapping[str, Any], *, running_limit: int = 20, now: float | None = None
) -> RenderableType:
    """The live picture: phases (a bar per rolling phase, coloured by outcome),
    the running phase's busy hosts, the first failure, hosts counted once."""
    state = doc["state"]
    style = STATE_STYLE.get(state, "cyan")
    title = Text(header(doc) + "  ")
    title.append(state, style=f"bold {style}")
    title.append(f"  {duration(elapsed(doc, now))}")
    eta = doc.get("eta_s")
    if eta is not None and not doc.get("terminal"):
        title.append(f", about {duration(eta)} left")
    lines: list[RenderableType] = [title]
    if doc.get("reason"):
        lines.append(Text(f"  {doc['reason']}"))
    failure = doc.get("first_failure")
    if failure:
        lines.append(Text("\n".join(failure_lines(failure)), style="red"))
    phases = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    phases.add_column("phase")
    phases.add_column("kind")
    phases.add_column("state")
    phases.add_column("hosts", justify="right")
    phases.add_column("progress", width=30)
    for phase in doc["phases"]:
        total, finished = phase["hosts_total"], phase["hosts_finished"]
        bar: RenderableType = Text("")
        if phase["kind"] == "rolling":
            colour = STATE_STYLE.get(phase["state"], "cyan")
            bar = ProgressBar(
                total=max(total, 1),
                completed=finished,
                width=30,
                complete_style=colour,
                finished_style=colour,
            )
        flag = " (point of no return)" if phase["irreversible"] else ""
        phases.add_row(
            phase["name"] + flag,
            phase["kind"],
            Text(phase["state"], style=STATE_STYLE.get(phase["state"], "")),
            f"{finished}/{total}",
            bar,
        )
    lines.append(phases)
    busy = _busy_hosts(doc, now)
    if busy:
        more = len(busy) - running_limit
        shown = busy[:running_limit] + ([f"  ... and {more} more"] if more > 0 else [])
        lines.append(Text("hosts at work:\n" + "\n".join(shown)))
    hosts = doc.get("hosts") or {}
    by_state = ", ".join(f"{k} {v}" for k, v in (hosts.get("by_state") or {}).items() if v)
    progress = doc["progress"]
    lines.append(
        Text(
            f"hosts {hosts.get('through', 0)}/{hosts.get('total', 0)} through every phase "
            f"({by_state})  phases {progress['phases_done']}/{progress['phases_total']}  "
            f"steps {progress['steps_done']}/{progress['steps_total']}"
        )
    )
    if state == "waiting_approval":
        lines.append(Text(f"approve with: orchestrator approve {doc['id']}", style="bold"))
    lines.append(Text(f"next: {doc['next']}"))
    return Group(*lines)


def _busy_hosts(doc: Mapping[str, Any], now: float | None) -> list[str]:
    """A row per host at work in a running phase: icon, state, step, time."""
    clock = time.time() if now is None else now
    rows: list[str] = []
    for phase in doc["phases"]:
        if phase["state"] not in ("running", "rolling_back"):
            continue
        for batch in phase["batches"]:
            for host in batch["hosts"]:
                if host["state"] not in ACTIVE_HOST:
                    continue
                step = next(
                    (s for s in host["steps"] if s["state"] in ("running", "undoing")), None
                )
                doing = f" {step['name']}" if step else ""
                if (health := host.get("health")) is not None:
                    doing = (
                        f" {health['passes']}/{health['needed']} passes, "
                        f"{duration(health['elapsed_s'])} of {duration(health['deadline_s'])}"
                    )
                since = host.get("started_at")
                took = f"  {duration(clock - since)}" if since else ""
                icon = ICONS.get(host["state"], "?")
                rows.append(f"  {icon} {phase['name']} {host['host']} {host['state']}{doing}{took}")
    return rows
