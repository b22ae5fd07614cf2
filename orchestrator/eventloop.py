"""The daemon's event loop: its API's sockets first, the rest a few at a time.

asyncio runs, in each turn of its loop, the callback of every socket the
selector found ready, and then everything those callbacks made ready. When a
batch of 200 hosts finishes a step at once, their 200 SSH connections are
ready together, and one turn ran 55 to 93 ms (100 to 480 callbacks at 0.2 to
0.5 ms each, measured at 2,000 hosts on two cores). A GET of the status
document that arrived meanwhile waited behind two or three such turns.

`UrgentFirstSelector` answers each turn with every ready socket marked urgent
(the API's listening socket and its connections, `prefer`) and at most
`batch` of the others. The rest stay ready in the kernel and come in later
turns, in the order the kernel queued them (level-triggered epoll puts a
socket it reported back at the end of its ready list, so none starves). A
turn is then about `batch` callbacks and what they make ready, and a request
waits for a few short turns instead of a few long ones. The hosts' work is
the same work, done in more turns; it is not slowed.

Urgent sockets sit in their own epoll set, whose descriptor is one member of
the main set, so that a turn with nothing to do still sleeps in one call.
Only Linux has epoll: elsewhere `new_loop` gives asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import selectors
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

BATCH = 16  # sockets other than the urgent ones handled in one turn, at most

_READ = select.EPOLLIN if hasattr(select, "epoll") else 0
_WRITE = select.EPOLLOUT if hasattr(select, "epoll") else 0


def _fd(fileobj: FileDescriptorLike) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


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
        self._preferred: set[int] = set()  # urgent once registered
        self._urgent: set[int] = set()  # registered in the urgent set now
        self._main = select.epoll()
        self._urgent_set = select.epoll()
        self._main.register(self._urgent_set.fileno(), _READ)

    # --- marking -----------------------------------------------------------

    def prefer(self, fd: int) -> None:
        """Serve `fd` first from now on (moved at once if it is registered)."""
        self._preferred.add(fd)
        self._move(fd)

    def unprefer(self, fd: int) -> None:
        """`fd` back among the others (its connection is closing)."""
        self._preferred.discard(fd)
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
        if fd in self._preferred:
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
        urgent = self._urgent_set.poll(0)
        if urgent:
            wait = 0.0
        elif timeout is None:
            wait = -1.0
        else:  # epoll counts milliseconds: round up, or a timer fires a turn early
            wait = math.ceil(max(timeout, 0.0) * 1e3) * 1e-3
        main_fd = self._urgent_set.fileno()
        others: list[tuple[int, int]] = []
        for fd, flags in self._main.poll(wait, self.batch + 1):
            if fd == main_fd:
                if not urgent:
                    urgent = self._urgent_set.poll(0)
            elif len(others) < self.batch:
                others.append((fd, flags))
        ready = []
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
        return ready

    def close(self) -> None:
        self._main.close()
        self._urgent_set.close()
        self._keys.clear()
        self._preferred.clear()
        self._urgent.clear()

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return _Keys(self._keys)


class UrgentFirstLoop(asyncio.SelectorEventLoop):
    """asyncio's loop over an `UrgentFirstSelector`."""

    def __init__(self, batch: int = BATCH) -> None:
        self.urgent_first = UrgentFirstSelector(batch)
        super().__init__(self.urgent_first)


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
    """Serve `transport`'s socket first, when the running loop can."""
    selector = _selector()
    fd = _socket_fd(transport)
    if selector is not None and fd is not None:
        selector.prefer(fd)


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
