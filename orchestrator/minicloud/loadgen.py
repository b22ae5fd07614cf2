"""Steady, checked API traffic through the load balancer: the figure behind "N requests, 0 failed".

K workers share one schedule of `rate` iterations per second; an iteration is
`POST /instances` then `GET /instances/{id}`, and every answer is checked:
201 then 200, JSON, and the GET names the same compute host the POST did.
Each request opens a new connection, so a draining load balancer server
really empties. Failures are counted by kind: `connection`, `timeout`,
`status NNN`, `bad json`, `mismatch`.

```
async with LoadGenerator(lb.url, rate=20) as load:
    ...  # upgrade
report = load.report()   # requests, failed, failures, p50, p99
```
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

SAMPLES_KEPT = 20


@dataclass(frozen=True, slots=True)
class LoadReport:
    requests: int
    failed: int
    failures: dict[str, int]
    iterations: int
    p50: float
    p99: float
    duration: float
    examples: tuple[str, ...]

    @property
    def ok(self) -> int:
        return self.requests - self.failed

    def summary(self) -> str:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.failures.items()))
        return (
            f"{self.requests} requests, {self.failed} failed"
            + (f" ({kinds})" if kinds else "")
            + f" in {self.duration:.1f}s; p50 {self.p50 * 1000:.1f} ms, "
            f"p99 {self.p99 * 1000:.1f} ms"
        )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered) - 1e-9)))
    return ordered[rank - 1]


class LoadFailure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        self.kind, self.detail = kind, detail
        super().__init__(f"{kind}: {detail}")


class LoadGenerator:
    def __init__(
        self,
        url: str,
        *,
        rate: float = 20.0,
        workers: int = 4,
        max_duration: float = 120.0,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if rate <= 0 or workers < 1:
            raise ValueError("rate must be positive and workers at least 1")
        self.url = url.rstrip("/")
        self.rate, self.workers = rate, workers
        self.max_duration, self.timeout = max_duration, timeout
        self.headers = dict(headers or {})
        self.latencies: list[float] = []
        self.failures: Counter[str] = Counter()
        self.examples: list[str] = []
        self.iterations = 0
        self._slots = itertools.count()
        self._stopping = asyncio.Event()
        self._answered = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._started = self._stopped = 0.0

    async def __aenter__(self) -> LoadGenerator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers=self.headers,
        )
        self._started = time.monotonic()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Finish the iterations in flight, then stop (idempotent)."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._stopped = time.monotonic()

    async def join(self) -> None:
        """Until the workers end by themselves (`max_duration` reached)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait(self, count: int, deadline: float = 30.0) -> None:
        """Until `count` requests have been answered (a warm-up or a checkpoint)."""
        async with asyncio.timeout(deadline):
            while len(self.latencies) < count:
                self._answered.clear()
                await self._answered.wait()

    def report(self) -> LoadReport:
        end = self._stopped or time.monotonic()
        failed = sum(self.failures.values())
        return LoadReport(
            requests=len(self.latencies),
            failed=failed,
            failures=dict(self.failures),
            iterations=self.iterations,
            p50=percentile(self.latencies, 0.50),
            p99=percentile(self.latencies, 0.99),
            duration=end - self._started if self._started else 0.0,
            examples=tuple(self.examples),
        )

    async def _worker(self) -> None:
        loop_end = self._started + self.max_duration
        while not self._stopping.is_set():
            due = self._started + next(self._slots) / self.rate
            now = time.monotonic()
            if due >= loop_end or now >= loop_end:
                return
            if due > now:
                try:
                    async with asyncio.timeout(due - now):
                        await self._stopping.wait()
                    return
                except TimeoutError:
                    pass
            await self._iteration()

    async def _iteration(self) -> None:
        self.iterations += 1
        name = f"load-{self.iterations}"
        try:
            created = await self._request("POST", "/instances", 201, {"name": name})
            try:
                instance_id, host = int(created["id"]), created["host"]
            except (KeyError, TypeError, ValueError):
                raise LoadFailure("bad json", f"POST answered {created!r}") from None
        except LoadFailure as failure:
            self._fail(failure)
            return
        try:
            read = await self._request("GET", f"/instances/{instance_id}", 200, None)
            if not isinstance(read, dict) or read.get("host") != host or host is None:
                got = read.get("host") if isinstance(read, dict) else read
                raise LoadFailure("mismatch", f"instance {instance_id}: POST {host}, GET {got}")
        except LoadFailure as failure:
            self._fail(failure)

    def _fail(self, failure: LoadFailure) -> None:
        self.failures[failure.kind] += 1
        if len(self.examples) < SAMPLES_KEPT:
            self.examples.append(str(failure))

    async def _request(self, method: str, path: str, expect: int, body: Any) -> Any:
        assert self._session is not None
        started = time.monotonic()
        try:
            try:
                async with self._session.request(method, self.url + path, json=body) as response:
                    text = await response.text()
                    status = response.status
            finally:
                self.latencies.append(time.monotonic() - started)
                self._answered.set()
        except TimeoutError:
            raise LoadFailure("timeout", f"{method} {path}") from None
        except aiohttp.ClientError as exc:
            raise LoadFailure("connection", f"{method} {path}: {exc!r}") from None
        if status != expect:
            raise LoadFailure(f"status {status}", f"{method} {path}: {text[:200]}")
        if expect in (202, 204) and not text.strip():
            return None  # accepted, nothing to read
        try:
            return json.loads(text)
        except ValueError:
            raise LoadFailure("bad json", f"{method} {path}: {text[:200]}") from None
