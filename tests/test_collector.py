"""The daemon's schedule of full garbage collections (orchestrator.collector)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from orchestrator.collector import NEVER, Collector


class FakeGC:
    """The `gc` functions Collector uses, with counts the test sets."""

    def __init__(self) -> None:
        self.threshold = (700, 10, 10)
        self.count = (0, 0, 0)
        self.collected: list[int] = []
        self.frozen = False

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, threshold0: int, threshold1: int = 10, threshold2: int = 10) -> None:
        self.threshold = (threshold0, threshold1, threshold2)

    def get_count(self) -> tuple[int, int, int]:
        return self.count

    def collect(self, generation: int = 2) -> int:
        self.collected.append(generation)
        self.count = (0, 0, 0)
        return 0

    def freeze(self) -> None:
        assert not self.frozen
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False


async def wait_until(condition: object) -> None:
    assert callable(condition)
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110  # a condition, not an event
            await asyncio.sleep(0.001)


async def test_start_stops_cpython_starting_full_passes_and_stop_gives_them_back() -> None:
    fake = FakeGC()
    collector = Collector(collector=fake)
    collector.start()
    try:
        assert fake.threshold == (700, 10, NEVER)
        with pytest.raises(RuntimeError, match="already started"):
            collector.start()
    finally:
        await collector.stop()
    assert fake.threshold == (700, 10, 10)
    assert not collector.running


async def test_a_full_pass_waits_for_the_interval_and_for_cpython_wanting_one() -> None:
    fake = FakeGC()
    collector = Collector(min_interval=3600, check_every=0.001, collector=fake)
    collector.start(freeze=False)
    try:
        loop = asyncio.get_running_loop()
        now = loop.time()
        fake.count = (5, 3, 11)  # CPython would collect: 11 young passes > 10
        assert not collector.due(now)  # but the last full pass was just now
        assert collector.due(now + 3600)
        fake.count = (5, 3, 10)  # not past CPython's threshold yet
        assert not collector.due(now + 7200)
    finally:
        await collector.stop()
    assert fake.collected == []


async def test_due_passes_run_one_at_a_time_and_reset_the_interval() -> None:
    fake = FakeGC()
    collector = Collector(min_interval=0.001, check_every=0.001, collector=fake)
    collector.start(freeze=False)
    try:
        fake.count = (0, 0, 11)
        await wait_until(lambda: fake.collected == [2])
        # collected: the count starts again, so nothing more is due
        assert collector.full_passes == 1
        fake.count = (0, 0, 12)
        await wait_until(lambda: collector.full_passes == 2)
    finally:
        await collector.stop()


async def test_start_collects_then_freezes_what_is_alive_and_stop_unfreezes() -> None:
    fake = FakeGC()
    collector = Collector(collector=fake)
    collector.start()
    assert fake.collected == [2]  # garbage collected first, not kept
    assert fake.frozen
    await collector.stop()
    assert not fake.frozen


async def test_the_real_collector_gets_its_thresholds_back_and_unfreezes() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    collector = Collector()
    collector.start()
    assert gc.get_threshold()[2] == NEVER
    assert gc.get_freeze_count() > 0
    await collector.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_intervals_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Collector(0)
    with pytest.raises(ValueError, match="positive"):
        Collector(check_every=-1)
