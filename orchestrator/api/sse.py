"""GET /v1/upgrades/{id}/events: journal events as Server-Sent Events.

Each event's SSE `id` is its journal sequence number, so a client that lost
the connection sends `Last-Event-ID` and continues exactly after the last
event it saw; nothing is skipped or repeated. The stream ends with an `end`
event once the upgrade is finished and every event was sent, or when the
daemon stops.
"""

from __future__ import annotations

import json
import re
import time

from aiohttp import web

from orchestrator.api import keys
from orchestrator.api.openapi import LAST_EVENT_ID_PATTERN
from orchestrator.engine.manager import Upgrade
from orchestrator.errors import UsageError
from orchestrator.store.journal import Event

POLL = 1.0  # how often a quiet stream looks at the stop flag
KEEPALIVE = 15.0  # a comment line this often keeps proxies from closing a quiet stream
BATCH = 500
LAST_EVENT_ID = re.compile(LAST_EVENT_ID_PATTERN)


def format_event(event: Event) -> bytes:
    data = {"seq": event.seq, "at": event.at, "kind": event.kind, "data": event.data}
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {payload}\n\n".encode()


def _after(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        return 0
    if not LAST_EVENT_ID.fullmatch(raw):
        raise UsageError("Last-Event-ID must be the journal sequence number of an event")
    return int(raw)


async def events(request: web.Request) -> web.StreamResponse:
    up = request.app[keys.MANAGER].get(request.match_info["id"])
    after = _after(request)
    with request.app[keys.STREAMS].take(request.get(keys.WHO, "default")):
        return await _stream(request, up, after)


async def _stream(request: web.Request, up: Upgrade, after: int) -> web.StreamResponse:
    manager = request.app[keys.MANAGER]
    stopping = request.app[keys.STOPPING]
    response = web.StreamResponse(
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.content_type = "text/event-stream"
    await response.prepare(request)
    try:
        await response.write(b"retry: 1000\n\n")
        quiet_since = time.monotonic()
        announced: str | None = None
        while True:
            stalled = up.engine.stalled if up.engine is not None else None
            if stalled != announced:
                # not a journal event (the journal is what fails): no id
                kind = "stalled" if stalled is not None else "unstalled"
                payload = json.dumps({"reason": stalled})
                await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())
                announced = stalled
            found = await manager.journal.events(up.id, after, limit=BATCH)
            if not found:
                if up.view.state.terminal and after >= up.view.last_seq:
                    end = json.dumps({"state": up.view.state.label, "last_event": after})
                    await response.write(f"event: end\ndata: {end}\n\n".encode())
                    break
                if stopping.is_set():
                    break
                found = await manager.journal.wait_for(up.id, after, timeout=POLL)
            if found:
                await response.write(b"".join(format_event(e) for e in found))
                after = found[-1].seq
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE:
                await response.write(b": keepalive\n\n")
                quiet_since = time.monotonic()
    except ConnectionResetError:
        pass  # the client went away; it resumes with Last-Event-ID
    return response
