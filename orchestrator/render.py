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


def render_status(doc: Mapping[str, Any], *, running_limit: int = 10) -> RenderableType:
    """The live picture: phases (a bar per rolling phase), hosts by state, running steps."""
    state = doc["state"]
    style = {"succeeded": "green", "failed": "red", "rolled_back": "yellow"}.get(state, "cyan")
    title = Text(header(doc) + "  ")
    title.append(state, style=f"bold {style}")
    lines: list[RenderableType] = [title]
    if doc.get("reason"):
        lines.append(Text(f"  {doc['reason']}"))
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
            bar = ProgressBar(total=max(total, 1), completed=finished, width=30)
        flag = " (point of no return)" if phase["irreversible"] else ""
        phases.add_row(
            phase["name"] + flag, phase["kind"], phase["state"], f"{finished}/{total}", bar
        )
    lines.append(phases)
    progress = doc["progress"]
    by_state = ", ".join(f"{k} {v}" for k, v in sorted(progress["hosts_by_state"].items()) if v)
    lines.append(
        Text(
            f"phases {progress['phases_done']}/{progress['phases_total']}  "
            f"steps {progress['steps_done']}/{progress['steps_total']}  hosts: {by_state}"
        )
    )
    running = [
        f"  {phase['name']} {host['host']}: {step['name']}"
        for phase in doc["phases"]
        for batch in phase["batches"]
        for host in batch["hosts"]
        for step in host["steps"]
        if step["state"] in ("running", "undoing")
    ]
    if running:
        more = len(running) - running_limit
        shown = running[:running_limit] + ([f"  ... and {more} more"] if more > 0 else [])
        lines.append(Text("running:\n" + "\n".join(shown)))
    lines.append(Text(f"next: {doc['next']}"))
    return Group(*lines)
