"""What callers queue for a journal's writer, shared by both stores: one
dataclass per kind of write, each with the future its caller awaits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.store.base import Event


@dataclass(slots=True)
class Append:
    """Events of one upgrade, in order, in one commit: all of them or none."""

    upgrade_id: str
    events: list[tuple[str, dict[str, Any], str]]  # (kind, data, its JSON text)
    future: asyncio.Future[list[Event]]
    release: bool = False  # the upgrade's end: its host leases go in the same commit


def append_request(
    upgrade_id: str,
    items: Sequence[tuple[str, Mapping[str, Any]]],
    future: asyncio.Future[list[Event]],
    release: bool,
) -> Append:
    """The request for `items`; each event's data is its JSON round trip,
    exactly what a re-read yields."""
    events = []
    for kind, data in items:
        text = to_json(data)
        events.append((kind, json.loads(text), text))
    return Append(upgrade_id, events, future, release)


def sequence(append: Append, last: int, now: float) -> list[Event]:
    """`append`'s events, numbered from `last + 1`."""
    return [
        Event(append.upgrade_id, last + index, now, kind, data)
        for index, (kind, data, _) in enumerate(append.events, start=1)
    ]


@dataclass(slots=True)
class Create:
    upgrade_id: str
    plan: str
    inventory: str
    digest: str
    meta: str
    future: asyncio.Future[None]
    endpoints: dict[str, str]  # leased in the same commit, or nothing is created


@dataclass(slots=True)
class Remember:
    key: str
    upgrade_id: str
    future: asyncio.Future[str]


@dataclass(slots=True)
class Lease:
    upgrade_id: str
    endpoints: dict[str, str]
    future: asyncio.Future[None]


Request = Append | Create | Remember | Lease
# (future, result, error) handed back to the caller after a commit
Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


def to_json(value: Mapping[str, Any]) -> str:
    # strict JSON (no NaN) so every consumer, browsers included, can read it back
    return json.dumps(dict(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the outcome stands regardless
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
