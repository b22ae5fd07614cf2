"""GET /v1/upgrades/{id}/events: journal events as Server-Sent Events.

Each event's SSE `id` is its journal sequence number, so a client that lost
the connection sends `Last-Event-ID` and continues exactly after the last
event it saw; nothing is skipped or repeated. The stream ends with an `end`
event once the upgrade is finished and every event was sent, or when the
daemon stops. The streams of one upgrade share one reader of the journal,
which encodes each event once for all of them (`orchestrator.api.feed`).
"""

from __future__ import annotations

import json
import re
import time

from aiohttp import web

from orchestrator.api import keys
from orchestrator.api.openapi import LAST_EVENT_ID_PATTERN
from orchestrator.engine.manager import Upgrade
from orchestrator.errors import StoreError, UsageError
from orchestrator.store.journal import Event

POLL = 1.0  # how often a quiet stream looks at the stop flag
KEEPALIVE = 15.0  # a comment line this often keeps proxies from closing a quiet stream
BATCH = 500  # events a stream behind its feed reads from the journal at once
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
    feeds = request.app[keys.FEEDS]
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
        # a feed starts where the view is at the latest: never past the journal's end
        with feeds.reader(up.id, min(after, up.view.last_seq)) as feed:
            while True:
                stalled = up.engine.stalled if up.engine is not None else None
                if stalled != announced:
                    # not a journal event (the journal is what fails): no id
                    kind = "stalled" if stalled is not None else "unstalled"
                    payload = json.dumps({"reason": stalled})
                    await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())
                    announced = stalled
                shared = feed.since(after)
                if shared is None:  # older than the feed keeps: read from the journal
                    found = await manager.journal.events(up.id, after, limit=BATCH)
                    if not found:  # the feed starts at or before the journal's end
                        raise StoreError(f"{up.id}: the journal lost the events after {after}")
                    last, chunk = found[-1].seq, b"".join(feeds.encode(e) for e in found)
                else:
                    last, chunk = shared
                if chunk:
                    await response.write(chunk)
                    after = last
                    quiet_since = time.monotonic()
                    continue
                if up.view.state.terminal and after >= up.view.last_seq:
                    end = json.dumps({"state": up.view.state.label, "last_event": after})
                    await response.write(f"event: end\ndata: {end}\n\n".encode())
                    break
                if stopping.is_set():
                    break
                await feed.wait(after, timeout=POLL)
                if feed.last <= after and time.monotonic() - quiet_since >= KEEPALIVE:
                    await response.write(b": keepalive\n\n")
                    quiet_since = time.monotonic()
    except ConnectionResetError:
        pass  # the client went away; it resumes with Last-Event-ID
    return response
