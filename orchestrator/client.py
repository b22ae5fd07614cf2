"""The CLI's side of the HTTP API: a small client, the event stream, and the
`watch` display (rich on a terminal, plain lines otherwise).

HTTP answers come back as the package's exceptions, chosen by the
`http_status` each error class declares, so the CLI maps them to exit codes
in its one place (`orchestrator.cli.main`).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)
from yarl import URL

from orchestrator import events
from orchestrator.api.endpoint import ADDRESS_FILE, DEFAULT_LISTEN, TOKEN_FILE, default_state_dir
from orchestrator.errors import (
    ConflictError,
    DaemonUnavailable,
    EventFormatError,
    ForbiddenError,
    InputError,
    NotFoundError,
    OrchestratorError,
    Problem,
    TooManyError,
    UsageError,
)

RECONNECT_DEADLINE = 60.0
MAX_REDIRECTS = 3  # a standby to its leader is one
REFRESH = 0.25  # the live display redraws at most this often


# --- where the daemon is -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    token: str | None
    cacert: str | None = None


def resolve_endpoint(
    server: str | None,
    token: str | None,
    cacert: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Endpoint:
    """--server/--token, else ORCHESTRATOR_URL/ORCHESTRATOR_TOKEN, else the
    local daemon: the address it wrote in its state directory and its token file."""
    env = os.environ if environ is None else environ
    state_dir = Path(env["ORCHESTRATOR_STATE_DIR"]) if env.get("ORCHESTRATOR_STATE_DIR") else None
    state_dir = state_dir or default_state_dir()
    url = server or env.get("ORCHESTRATOR_URL")
    if not url:
        try:
            url = str(json.loads((state_dir / ADDRESS_FILE).read_text())["url"])
        except (OSError, ValueError, KeyError, TypeError):
            url = f"http://{DEFAULT_LISTEN}"
    secret = token or env.get("ORCHESTRATOR_TOKEN")
    if not secret:
        try:
            secret = (state_dir / TOKEN_FILE).read_text(encoding="utf-8").strip() or None
        except OSError:
            secret = None
    return Endpoint(url.rstrip("/"), secret, cacert or env.get("ORCHESTRATOR_CACERT"))


# --- errors from answers ------------------------------------------------------------

_BY_STATUS: dict[int, type[OrchestratorError]] = {
    cls.http_status: cls
    for cls in (UsageError, InputError, NotFoundError, ConflictError, ForbiddenError, TooManyError)
}


def error_from_answer(status: int, body: bytes) -> OrchestratorError:
    try:
        error = json.loads(body)["error"]
        message = str(error["message"])
        problems = [Problem(**p) for p in error.get("problems") or []]
    except (ValueError, KeyError, TypeError):
        message, problems = body.decode(errors="replace")[:500] or f"HTTP {status}", []
    if status == 401:
        return DaemonUnavailable(
            f"the daemon refused the token ({message}); pass --token or set ORCHESTRATOR_TOKEN"
        )
    if status in (400, 422) and problems:
        return InputError(problems)
    cls = _BY_STATUS.get(status)
    if cls is InputError:
        return InputError(Problem(message=message))
    if cls is not None:
        return cls(message)
    if status == 503:
        return DaemonUnavailable(message)
    if 400 <= status < 500:
        return UsageError(message)
    return OrchestratorError(f"the daemon failed (HTTP {status}): {message}")


# --- the client ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSEEvent:
    id: str | None
    event: str
    data: str


class Client:
    """``async with Client(endpoint) as client: await client.status(id)``."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        context: ssl.SSLContext | bool = True
        if self.endpoint.cacert:
            context = ssl.create_default_context(cafile=self.endpoint.cacert)
        headers = {"Accept": "application/json"}
        if self.endpoint.token:
            headers["Authorization"] = f"Bearer {self.endpoint.token}"
        self._session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=context)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the client as an async context manager"
        return self._session

    def _unreachable(self, exc: BaseException) -> DaemonUnavailable:
        reason = str(exc) or type(exc).__name__
        return DaemonUnavailable(f"cannot reach the daemon at {self.endpoint.url}: {reason}")

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        url = self.endpoint.url + path
        for _ in range(MAX_REDIRECTS + 1):
            try:
                # a standby answers a write 307 to its leader: followed here, not
                # by aiohttp, which would drop the token on the way to another port
                async with self.session.request(
                    method, url, json=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    location = resp.headers.get("Location")
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise self._unreachable(exc) from None
            if status not in (307, 308) or not location:
                break
            url = str(URL(url).join(URL(location)))
        else:
            raise DaemonUnavailable(f"more than {MAX_REDIRECTS} redirects from {self.endpoint.url}")
        if status >= 400:
            raise error_from_answer(status, raw)
        return json.loads(raw)

    async def submit(self, body: dict[str, Any], idempotency_key: str | None = None) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self.request("POST", "/v1/upgrades", body, headers)

    async def upgrades(self) -> list[dict[str, Any]]:
        data = await self.request("GET", "/v1/upgrades")
        return list(data["upgrades"])

    async def status(self, upgrade_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.request("GET", f"/v1/upgrades/{upgrade_id}")
        return data

    async def control(
        self, upgrade_id: str, action: str, *, host: str | None = None
    ) -> dict[str, Any]:
        """An action on the upgrade, or with `host` (retry, skip) on one of its hosts."""
        path = f"/v1/upgrades/{upgrade_id}/{action}"
        if host is not None:
            path = f"/v1/upgrades/{upgrade_id}/hosts/{quote(host, safe='')}/{action}"
        data: dict[str, Any] = await self.request("POST", path)
        return data

    async def events(
        self, upgrade_id: str, after: int = 0, *, reconnect_for: float = RECONNECT_DEADLINE
    ) -> AsyncIterator[dict[str, Any]]:
        """Every journal event after `after`, across daemon restarts: a broken
        stream is reopened with Last-Event-ID; ends when the upgrade has ended."""
        last = after
        while True:
            policy = AsyncRetrying(
                retry=retry_if_exception_type(DaemonUnavailable),
                stop=stop_after_delay(reconnect_for),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                reraise=True,
            )
            resp: aiohttp.ClientResponse = await policy(self._open_stream, upgrade_id, last)
            try:
                async for event in _parse_sse(resp):
                    if event.event == "end":
                        return
                    if event.id is not None and event.data:
                        last = int(event.id)
                        yield json.loads(event.data)
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass  # the daemon went away mid-stream: reopen after the last event seen
            finally:
                resp.release()

    async def _open_stream(self, upgrade_id: str, after: int) -> aiohttp.ClientResponse:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=60)
        try:
            resp = await self.session.get(
                f"{self.endpoint.url}/v1/upgrades/{upgrade_id}/events",
                headers=headers,
                timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        if resp.status >= 400:
            raw = await resp.read()
            resp.release()
            raise error_from_answer(resp.status, raw)
        return resp


async def _parse_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    event_id: str | None = None
    kind, data = "message", list[str]()
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield SSEEvent(event_id, kind, "\n".join(data))
            event_id, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


# --- rendering -------------------------------------------------------------------


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


async def watch(
    client: Client, upgrade_id: str, out: TextIO, *, live: bool | None = None
) -> dict[str, Any]:
    """Follow an upgrade to its end; returns the final status document.

    On a terminal (or with live=True) a rich display redraws from the status
    document, at most every REFRESH seconds however fast events come; else
    one plain line per event."""
    if live is None:
        live = Console(file=out).is_terminal
    doc = await client.status(upgrade_id)
    if not live:
        out.write(header(doc) + "\n")
        out.flush()
        async for event in client.events(upgrade_id):
            line = describe_event(event)
            if line is not None:
                out.write(line + "\n")
                out.flush()
        doc = await client.status(upgrade_id)
        out.write(f"upgrade {upgrade_id} {doc['state']}: {doc['next']}\n")
        return doc
    console = Console(file=out, force_terminal=True, highlight=False)
    with Live(render_status(doc), console=console, auto_refresh=False) as display:
        changed = asyncio.Event()

        async def redraw() -> None:
            while True:
                await changed.wait()
                changed.clear()
                display.update(render_status(await client.status(upgrade_id)), refresh=True)
                await asyncio.sleep(REFRESH)

        drawing = asyncio.create_task(redraw())
        try:
            async for _event in client.events(upgrade_id):
                changed.set()
        finally:
            drawing.cancel()
            await asyncio.gather(drawing, return_exceptions=True)
        doc = await client.status(upgrade_id)
        display.update(render_status(doc), refresh=True)
    return doc
