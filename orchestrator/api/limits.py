"""Server limits the HTTP layer enforces itself (docs/daemon.md, "Limits").

* `StreamSlots`: at most N open event streams per token (429 beyond).
* `guarded_server`: wraps aiohttp's protocol factory with a cap on open
  connections (beyond it a connection is closed at once) and a deadline for
  a request's headers and body (a slow client is cut off: slowloris).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from orchestrator import eventloop
from orchestrator.errors import TooManyError

log = structlog.get_logger("orchestrator.api")


class StreamSlots:
    """Open event streams per token name."""

    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def take(self, who: str) -> Iterator[None]:
        if self._open[who] >= self.per_token:
            raise TooManyError(
                f"token '{who}' has {self._open[who]} event streams open, the most it may; "
                "close one first"
            )
        self._open[who] += 1
        try:
            yield
        finally:
            self._open[who] -= 1


class _Guarded(asyncio.Protocol):
    """One connection in front of aiohttp's protocol: refused past the cap;
    cut off when a request's head, then its body (by Content-Length), does
    not arrive within its deadline. Once a request is in, its handler may
    take as long as it needs (event streams stay open)."""

    def __init__(self, inner: Any, guard: Guard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False
        self.head = b""
        self.body_left = 0
        self.stage = "idle"  # idle -> head -> body -> idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.guard.open >= self.guard.max_connections:
            log.warning("connection refused: too many open", open=self.guard.open)
            transport.abort()
            return
        self.guard.open += 1
        self.counted = True
        eventloop.prefer(transport)  # an operator's request before the hosts' traffic
        self.inner.connection_made(transport)
        self._start("head", self.guard.header_timeout)

    def _start(self, stage: str, seconds: float | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.stage = stage
        if seconds is not None:
            self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _expired(self) -> None:
        log.warning("connection closed: the request was too slow", waiting_for=self.stage)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.counted:
            self._watch(data)
        self.inner.data_received(data)

    def _watch(self, data: bytes) -> None:
        if self.stage == "idle":  # a kept-alive connection's next request
            self._start("head", self.guard.header_timeout)
        if self.stage == "head":
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                self.head = self.head[-65536:]
                return
            rest = len(self.head) - end - 4
            self.body_left = _content_length(self.head[:end]) - rest
            self.head = b""
            if self.body_left > 0:
                self._start("body", self.guard.body_timeout)
            else:
                self._start("idle", None)
        elif self.stage == "body":
            self.body_left -= len(data)
            if self.body_left <= 0:
                self._start("idle", None)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._start("idle", None)
        if self.counted:
            self.guard.open -= 1
            self.counted = False
            if self.transport is not None:
                eventloop.unprefer(self.transport)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            with contextlib.suppress(ValueError):
                return max(0, int(value.strip()))
    return 0


class Guard:
    """The connection cap and request deadlines of one listening socket."""

    def __init__(self, max_connections: int, header_timeout: float, body_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.open = 0

    def wrap(self, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(factory(), self)
