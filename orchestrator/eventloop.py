"""The daemon's event loop: its API's work first, the rest a slice at a time.

asyncio runs, in each turn of its loop, the callback of every socket the
selector found ready and every callback scheduled before the turn began, in
the order they came. When a batch of 200 hosts finishes a step at once, 200
SSH connections are ready together; when the journal commits a batch's
events, 200 host tasks wake together; when a batch starts or ends, 200 tasks
start or 200 connections close. One turn then ran 55 to 160 ms (300 to 600
callbacks at 0.2 to 0.5 ms each, measured at 2,000 hosts on two cores), and a
GET of the status document that arrived meanwhile waited behind two or three
such turns, and behind every callback queued before its own.

This loop keeps two queues of ready callbacks. Urgent work is whatever runs in
a context where `URGENT` is set: the callbacks of the sockets marked with
`prefer` (the API's listening socket and its connections), and every task and
callback they start, since asyncio copies the context into each. A turn runs
every urgent callback, those scheduled during the turn included, and at most
`turn` of the others; the rest wait in order for the next turns. Each turn
also asks the selector (`UrgentFirstSelector`) for every ready urgent socket
and at most `batch` others; the rest stay ready in the kernel and come in
later turns, in the order the kernel queued them (level-triggered epoll puts a
socket it reported back at the end of its ready list, so none starves).

A request then waits for the end of one short turn and is answered within the
next, whatever the hosts queued before it. The hosts' work is the same work
in the same order, done in more turns; it is not slowed. Work an API request
starts that is not the request's own (an upgrade's engine) is started with
`background`, outside the urgent context.

Urgent sockets sit in their own epoll set, whose descriptor is one member of
the main set, so that a turn with nothing to do still sleeps in one call.
Only Linux has epoll: elsewhere `new_loop` gives asyncio's own loop. The loop
relies on how asyncio's `_run_once` uses its ready queue (`len` once a turn,
then `popleft` that many times; `append`, `clear`); tests/test_eventloop.py
checks that on the Python it runs on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import math
import os
import select
import selectors
from collections.abc import Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

BATCH = 16  # sockets other than the urgent ones handled in one turn, at most
TURN = 32  # callbacks other than the urgent ones run in one turn, at most

# set in the context of the API's work: its callbacks and tasks run first
URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("urgent", default=False)
T = TypeVar("T")

_READ = select.EPOLLIN if hasattr(select, "epoll") else 0
_WRITE = select.EPOLLOUT if hasattr(select, "epoll") else 0


def _fd(fileobj: FileDescriptorLike) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


def _identity(fd: int) -> tuple[int, int] | None:
    """Which open file `fd` is (device and inode: each socket has its own)."""
    try:
        stat = os.fstat(fd)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _mask(events: int) -> int:
    mask = 0
    if events & selectors.EVENT_READ:
        mask |= _READ
    if events & selectors.EVENT_WRITE:
        mask |= _WRITE
    return mask


class _Keys(Mapping[Any, selectors.SelectorKey]):  # keyed by FileDescriptorLike
    """The selector's map, as `BaseSelector.get_map` promises it."""

    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        try:
            return self._keys[_fd(fileobj)]
        except (ValueError, TypeError, AttributeError):
            raise KeyError(fileobj) from None

    def __iter__(self) -> Iterator[FileDescriptorLike]:
        return iter(self._keys)


class UrgentFirstSelector(selectors.BaseSelector):
    """Every ready urgent socket in each `select`, and at most `batch` others."""

    def __init__(self, batch: int = BATCH) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.batch = batch
        self._keys: dict[int, selectors.SelectorKey] = {}
        # urgent once registered: fd -> which open file it was marked for
        self._preferred: dict[int, tuple[int, int]] = {}
        self._urgent: set[int] = set()  # registered in the urgent set now
        self.last_urgent = 0  # how many of the last `select`'s answer are urgent
        self._main = select.epoll()
        self._urgent_set = select.epoll()
        self._main.register(self._urgent_set.fileno(), _READ)

    # --- marking -----------------------------------------------------------

    def prefer(self, fd: int) -> None:
        """Serve `fd` first from now on (moved at once if it is registered).

        The mark is for the socket open as `fd` now: if it is closed before
        `unprefer` (a TLS connection's protocol learns of its end after its
        socket is closed), a socket that gets the same number later is not
        urgent."""
        identity = _identity(fd)
        if identity is not None:
            self._preferred[fd] = identity
            self._move(fd)

    def unprefer(self, fd: int) -> None:
        """`fd` back among the others (its connection is closing)."""
        self._preferred.pop(fd, None)
        self._move(fd)

    def prefers(self, fd: int) -> bool:
        """Is `fd` marked urgent (whether or not it is registered now)?"""
        return fd in self._preferred

    def urgent(self, fd: int) -> bool:
        """Is `fd` registered among the urgent sockets now?"""
        return fd in self._urgent

    def _move(self, fd: int) -> None:
        key = self._keys.get(fd)
        if key is None or (fd in self._urgent) == (fd in self._preferred):
            return
        if fd in self._urgent:
            self._urgent_set.unregister(fd)
            self._urgent.discard(fd)
            self._main.register(fd, _mask(key.events))
        else:
            self._main.unregister(fd)
            self._urgent.add(fd)
            self._urgent_set.register(fd, _mask(key.events))

    def _poll_of(self, fd: int) -> select.epoll:
        return self._urgent_set if fd in self._urgent else self._main

    # --- BaseSelector ------------------------------------------------------

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        fd = _fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        marked = self._preferred.get(fd)
        if marked is not None and marked != _identity(fd):
            del self._preferred[fd]  # marked for a socket since closed
        elif marked is not None:
            self._urgent.add(fd)
        self._poll_of(fd).register(fd, _mask(events))
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        try:
            key = self._keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        with contextlib.suppress(OSError):  # closed already: epoll forgot it
            self._poll_of(fd).unregister(fd)
        self._urgent.discard(fd)
        return key

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        fd = _fd(fileobj)
        key = self._keys.get(fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        if events != key.events:
            if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
                raise ValueError(f"invalid events: {events!r}")
            self._poll_of(fd).modify(fd, _mask(events))
        key = key._replace(events=events, data=data)
        self._keys[fd] = key
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # epoll counts milliseconds: round up, or a timer fires a turn early
        wait = -1.0 if timeout is None else math.ceil(max(timeout, 0.0) * 1e3) * 1e-3
        # a ready urgent socket makes the urgent set's descriptor ready in the
        # main set: one call sleeps for both, and answers for both unless the
        # answer was cut at `batch + 1` before reaching it
        main_fd = self._urgent_set.fileno()
        found = self._main.poll(wait, self.batch + 1)
        others = [(fd, flags) for fd, flags in found if fd != main_fd][: self.batch]
        # fewer others than answers: the urgent set's descriptor was among
        # them, or the answer was cut (batch + 1 others) and may not show it
        urgent = self._urgent_set.poll(0) if len(others) < len(found) else []
        ready = []
        self.last_urgent = 0
        for fd, flags in urgent + others:
            key = self._keys.get(fd)
            if key is None:
                continue
            events = 0
            if flags & ~_READ:  # out, error or hang-up: the writer learns
                events |= selectors.EVENT_WRITE
            if flags & ~_WRITE:  # in, error or hang-up: the reader learns
                events |= selectors.EVENT_READ
            if events & key.events:
                ready.append((key, events & key.events))
                if fd in self._urgent:
                    self.last_urgent += 1
        return ready

    def close(self) -> None:
        self._main.close()
        self._urgent_set.close()
        self._keys.clear()
        self._preferred.clear()
        self._urgent.clear()

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return _Keys(self._keys)


_append = collections.deque.append
_popleft = collections.deque.popleft
_len = collections.deque.__len__


class ReadyQueue(collections.deque[asyncio.Handle]):
    """asyncio's queue of ready callbacks, urgent ones first.

    The loop asks `len` once a turn how many callbacks to run in it, then
    calls `popleft` that many times: `len` counts every urgent callback and
    at most `turn` others, and `popleft` gives the urgent ones first, those
    that come during the turn too (a request's reader wakes its handler's
    task: both run in the same turn). `waiting` is the true count.
    """

    def __init__(self, turn: int = TURN) -> None:
        if turn < 1:
            raise ValueError("turn must be at least 1")
        super().__init__()
        self.turn = turn
        self.urgent: collections.deque[asyncio.Handle] = collections.deque()

    # append and popleft are the loop's hottest calls: no super() objects
    def append(self, handle: asyncio.Handle) -> None:
        if handle._context.get(URGENT, False):  # type: ignore[attr-defined]
            self.urgent.append(handle)
        else:
            _append(self, handle)

    def popleft(self) -> asyncio.Handle:
        if self.urgent:
            return self.urgent.popleft()
        return _popleft(self)

    def __len__(self) -> int:
        return len(self.urgent) + min(_len(self), self.turn)

    def __bool__(self) -> bool:
        return bool(self.urgent) or _len(self) > 0

    def clear(self) -> None:
        self.urgent.clear()
        super().clear()

    @property
    def waiting(self) -> int:
        """Every callback waiting to run, urgent or not."""
        return len(self.urgent) + _len(self)


def _context(handle: asyncio.Handle) -> contextvars.Context:
    ctx: contextvars.Context = handle._context  # type: ignore[attr-defined]
    return ctx


def _mark(handle: asyncio.Handle) -> None:
    """Run `handle`, and all it starts, as urgent work from now on."""
    ctx = _context(handle)
    if not ctx.get(URGENT, False):
        ctx.run(URGENT.set, True)


class UrgentFirstLoop(asyncio.SelectorEventLoop):
    """asyncio's loop over an `UrgentFirstSelector` and a `ReadyQueue`."""

    def __init__(self, batch: int = BATCH, turn: int = TURN) -> None:
        self.urgent_first = UrgentFirstSelector(batch)
        super().__init__(self.urgent_first)
        self.ready = ReadyQueue(turn)
        self._ready = self.ready

    def _process_events(self, event_list: list[tuple[selectors.SelectorKey, int]]) -> None:
        # the selector answers the urgent sockets first: their callbacks are urgent
        for key, _ in event_list[: self.urgent_first.last_urgent]:
            for handle in key.data:  # (reader, writer), as asyncio registers them
                if handle is not None:
                    _mark(handle)
        super()._process_events(event_list)  # type: ignore[misc]


def new_loop() -> asyncio.AbstractEventLoop:
    """The daemon's loop: urgent-first where epoll exists, asyncio's own elsewhere."""
    if hasattr(select, "epoll"):
        return UrgentFirstLoop()
    return asyncio.new_event_loop()


def _selector() -> UrgentFirstSelector | None:
    loop = asyncio.get_running_loop()
    return loop.urgent_first if isinstance(loop, UrgentFirstLoop) else None


def _socket_fd(transport: asyncio.BaseTransport) -> int | None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    fd: int = sock.fileno()
    return fd if fd >= 0 else None


def prefer(transport: asyncio.BaseTransport) -> None:
    """Serve `transport`'s socket first, when the running loop can; from its
    protocol's `connection_made`, so that what the protocol starts is urgent
    work too."""
    selector = _selector()
    fd = _socket_fd(transport)
    if selector is not None and fd is not None:
        selector.prefer(fd)
        URGENT.set(True)  # this callback's own context: what it starts inherits it


def unprefer(transport: asyncio.BaseTransport) -> None:
    selector = _selector()
    fd = _socket_fd(transport)
    if selector is not None and fd is not None:
        selector.unprefer(fd)


def prefer_fd(fd: int) -> None:
    """Serve the socket `fd` (a listening one) first, when the running loop can."""
    selector = _selector()
    if selector is not None:
        selector.prefer(fd)


def background(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """A task for `coro` that is not urgent work, even when an API request
    starts it (an upgrade's engine): otherwise as `asyncio.create_task`."""
    ctx = contextvars.copy_context()
    ctx.run(URGENT.set, False)
    return asyncio.get_running_loop().create_task(coro, name=name, context=ctx)
