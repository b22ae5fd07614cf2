"""Run record removals and the lull they wait for (orchestrator/transport/records.py).

The removals over real connections are in tests/test_transport_supervised.py;
here the pool's side alone, with a fake clock and a fake host call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orchestrator.errors import TransportError
from orchestrator.minicloud.sshd import loopback_target
from orchestrator.model import HostTarget
from orchestrator.transport import supervise
from orchestrator.transport.records import BACKGROUND_REMOVALS, Lull, Records

UPGRADE = "u20261201-120000-abc123"
RUN = f"{UPGRADE}/upgrade-computes.install.1"


class Clock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.on_sleep: list[Callable[[], None]] = []  # called at every sleep

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay
        for call in self.on_sleep:
            call()


def lull(clock: Clock, pressed: list[bool] | None = None) -> Lull:
    flag = pressed if pressed is not None else [False]
    return Lull(lambda: flag[0], quiet=0.02, longest=2.0, clock=clock, sleep=clock.sleep)


async def test_no_command_yet_is_a_lull() -> None:
    clock = Clock()
    await lull(clock).wait()
    assert clock.slept == []


async def test_it_waits_for_the_quiet_time_after_the_last_command() -> None:
    clock = Clock()
    quiet = lull(clock)
    quiet.busy()
    clock.now += 0.005
    await quiet.wait()
    assert sum(clock.slept) == pytest.approx(0.015)
    assert clock.now == pytest.approx(100.02)


async def test_commands_that_never_pause_hold_it_back_at_most_the_longest_deferral() -> None:
    clock = Clock()
    quiet = lull(clock)
    clock.on_sleep.append(quiet.busy)  # the commands never pause
    quiet.busy()
    await quiet.wait()
    assert sum(clock.slept) == pytest.approx(2.0)
    assert max(clock.slept) <= 0.02  # it looks again after each slice


async def test_the_pools_or_the_callers_press_ends_the_wait_at_once() -> None:
    clock = Clock()
    pressed = [True]
    quiet = lull(clock, pressed)
    quiet.busy()
    await quiet.wait()
    pressed[0] = False
    await quiet.wait(lambda: True)
    assert clock.slept == []


async def test_a_press_while_it_waits_ends_the_wait_at_its_next_look() -> None:
    """Hosts that start waiting for a place under max_connections meanwhile:
    it looks again after each slice (at most `quiet` seconds)."""
    clock = Clock()
    pressed = [False]
    quiet = lull(clock, pressed)
    clock.on_sleep.append(quiet.busy)  # the commands never pause

    def press() -> None:
        pressed[0] = len(clock.slept) >= 3

    clock.on_sleep.append(press)
    quiet.busy()
    await quiet.wait()
    assert len(clock.slept) == 3


def target(name: str = "host-1") -> HostTarget:
    # never dialled: the host's helper calls are `Host`'s
    return loopback_target(
        name, 22, user="ops", key=Path("key"), known_hosts=Path("known"), become="none"
    )


class Host:
    """The host end of `Records`' helper calls: each one waits to be answered."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.asked = asyncio.Event()

    async def __call__(self, _: HostTarget, command: str) -> tuple[int, str, str]:
        self.calls.append(command)
        self.asked.set()
        return 0, "0\n", ""


def error(host: str, reason: str, *, may_still_run: bool = False) -> TransportError:
    return TransportError(host, reason, may_still_run=may_still_run)


async def started_and_returned(records: Records) -> None:
    records.starting("host-1", RUN)
    records.returned("host-1", RUN, supervise.record_path(RUN))


async def test_a_background_removal_waits_for_a_lull_and_a_run_of_its_upgrade_presses_it() -> None:
    host = Host()
    quiet = Lull(lambda: False, quiet=3600)  # the real clock: no lull within the test
    quiet.busy()
    records = Records(host, error, quiet)
    await started_and_returned(records)
    released = asyncio.Event()
    records.forget_soon(target(), UPGRADE, released.set)
    for _ in range(20):
        await asyncio.sleep(0)
    assert host.calls == []  # waiting for the upgrade's commands to pause
    # the next run of the upgrade on the host waits for the removal: it goes now
    await asyncio.wait_for(records.settle("host-1", f"{UPGRADE}/next.1"), 10)
    assert len(host.calls) == 1 and "orchestrator-forget" in host.calls[0]
    assert released.is_set()


async def test_a_forget_at_the_phases_end_presses_the_removal_under_way() -> None:
    host = Host()
    quiet = Lull(lambda: False, quiet=3600)
    quiet.busy()
    records = Records(host, error, quiet)
    await started_and_returned(records)
    records.forget_soon(target(), UPGRADE, lambda: None)
    assert await asyncio.wait_for(records.forget(target(), UPGRADE), 10) == 0
    assert len(host.calls) == 1  # the background one; then the host is known clean


async def test_removals_waited_for_do_not_wait_for_a_place_among_the_background_ones() -> None:
    """At an upgrade's end `forget` waits for the last batch's removals: they
    used to go `BACKGROUND_REMOVALS` at a time (50 hosts: 80 ms)."""
    answer, all_asked = asyncio.Event(), asyncio.Event()
    asked: list[str] = []
    count = BACKGROUND_REMOVALS + 4

    async def host(at: HostTarget, command: str) -> tuple[int, str, str]:
        asked.append(at.name)
        if len(asked) == count:
            all_asked.set()
        await answer.wait()
        return 0, "0\n", ""

    records = Records(host, error)  # no lull to wait for
    targets = [target(f"host-{i}") for i in range(count)]
    for at in targets:
        run = f"{UPGRADE}/step.1"
        records.starting(at.name, run)
        records.returned(at.name, run, supervise.record_path(run))
        records.forget_soon(at, UPGRADE, lambda: None)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(asked) == BACKGROUND_REMOVALS  # in the background: a few at a time
    forgets = [asyncio.ensure_future(records.forget(at, UPGRADE)) for at in targets]
    await asyncio.wait_for(all_asked.wait(), 10)  # on the old code: 8 only, and a timeout
    assert sorted(asked) == sorted(at.name for at in targets)
    answer.set()
    assert await asyncio.wait_for(asyncio.gather(*forgets), 10) == [0] * count


async def test_an_unexpected_error_in_a_background_removal_is_logged() -> None:
    """A defect in the removal (a TypeError once) used to end the task with an
    exception nobody retrieved: said only when the task was collected."""

    async def broken(_: HostTarget, command: str) -> tuple[int, str, str]:
        raise TypeError("'int' object is not callable")

    records = Records(broken, error)
    await started_and_returned(records)
    released = asyncio.Event()
    with capture_logs() as logged:
        records.forget_soon(target(), UPGRADE, released.set)
        await asyncio.wait_for(released.wait(), 10)
        await records.close()
    said = [entry for entry in logged if entry["log_level"] == "error"]
    assert len(said) == 1 and said[0]["event"] == "run records not removed: unexpected error"
    assert said[0]["host"] == "host-1" and said[0]["exc_info"] is True
