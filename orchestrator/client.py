"""The CLI's side of the HTTP API: a small client, the event stream, and the
`watch` display (rich on a terminal, plain lines otherwise).

HTTP answers come back as the package's exceptions, chosen by the
`http_status` each error class declares, so the CLI maps them to exit codes
in its one place (`orchestrator.cli.main`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
from rich.console import Console
from rich.live import Live
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)
from yarl import URL

from orchestrator.quickclient import (
    MAX_REDIRECTS,
    Endpoint,
    error_from_answer,
    resolve_endpoint,
    unreachable,
)
from orchestrator.render import describe_event, failure_lines, header, render_status, verdict

__all__ = [
    "Client",
    "Endpoint",
    "describe_event",
    "error_from_answer",
    "header",
    "render_status",
    "resolve_endpoint",
    "watch",
]
from orchestrator.errors import (
    DaemonUnavailable,
)

RECONNECT_DEADLINE = 60.0
REFRESH = 0.25  # the live display redraws at most this often
TICK = 1.0  # and at least this often: the elapsed times tick


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
        if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
            reason = os.strerror(exc.os_error.errno).lower()  # not aiohttp's wording
        return unreachable(self.endpoint.url, reason)

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


async def watch(
    client: Client,
    upgrade_id: str,
    out: TextIO,
    *,
    live: bool | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Follow an upgrade to its end; returns the final status document, after
    printing the verdict line. `timeout`: give up watching (TimeoutError) after
    that many seconds; the upgrade goes on.

    On a terminal (or with live=True) a rich display redraws from the status
    document, at most every REFRESH seconds however fast events come, and every
    second anyway so the clocks tick; else one plain line per event."""
    if live is None:
        live = Console(file=out).is_terminal
    async with asyncio.timeout(timeout):
        doc = await (
            _plain(client, upgrade_id, out) if not live else _live(client, upgrade_id, out)
        )
    out.write(f"upgrade {upgrade_id} {verdict(doc)}\n")
    out.flush()
    return doc


async def _plain(client: Client, upgrade_id: str, out: TextIO) -> dict[str, Any]:
    doc = await client.status(upgrade_id)
    out.write(header(doc) + "\n")
    if doc["state"] == "waiting_approval":
        out.write(approve_hint(upgrade_id) + "\n")
    out.flush()
    async for event in client.events(upgrade_id):
        line = describe_event(event)
        if line is not None:
            out.write(line + "\n")
            if (
                event["kind"] == "upgrade.state"
                and event["data"].get("state") == "waiting_approval"
            ):
                out.write(approve_hint(upgrade_id) + "\n")
            out.flush()
    doc = await client.status(upgrade_id)
    failure = doc.get("first_failure")
    if failure:
        out.write("\n".join(failure_lines(failure)) + "\n")
    return doc


def approve_hint(upgrade_id: str) -> str:
    return f"waiting for approval: orchestrator approve {upgrade_id}"


async def _live(client: Client, upgrade_id: str, out: TextIO) -> dict[str, Any]:
    doc = await client.status(upgrade_id)
    console = Console(file=out, force_terminal=True, highlight=False)
    with Live(render_status(doc), console=console, auto_refresh=False) as display:
        changed = asyncio.Event()

        async def redraw() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK):
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
