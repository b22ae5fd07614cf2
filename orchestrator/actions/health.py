"""Health checks (http, tcp, command) and version probes, with the policy of
consecutive passes, interval and a per-host deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from orchestrator import model
from orchestrator.actions.remote import Remote
from orchestrator.errors import TransportError


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str


def json_path(document: Any, path: str | None) -> Any:
    """`a.b.0.c` into parsed JSON; None when any part is missing."""
    if not path:
        return document
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current


@dataclass(frozen=True, slots=True)
class HealthProgress:
    """Where a host's health check stands: `passes` of `needed` in a row,
    `elapsed` of `deadline` seconds, and what the last round said."""

    passes: int
    needed: int
    elapsed: float
    deadline: float
    last: str

    def to_data(self) -> dict[str, object]:
        return {
            "passes": self.passes,
            "needed": self.needed,
            "elapsed_s": round(self.elapsed, 1),
            "deadline_s": self.deadline,
            "last": self.last[:500],
        }


class Checker:
    """Runs checks for one engine; holds the HTTP session."""

    def __init__(self, remote: Remote, session: aiohttp.ClientSession) -> None:
        self.remote = remote
        self.session = session

    async def check(self, host: str, check: model.Check) -> CheckResult:
        try:
            if isinstance(check, model.HttpCheck):
                return await self._http(check)
            if isinstance(check, model.TcpCheck):
                return await self._tcp(check)
            result = await self.remote.run(host, check.run, timeout=check.timeout)
            if result.exit_status == 0:
                return CheckResult(True, f"command ok: {check.run}")
            return CheckResult(
                False, f"command {check.run!r} exited {result.exit_status}: {_last(result.output)}"
            )
        except TransportError as exc:
            return CheckResult(False, f"unreachable: {exc.reason}")

    async def _http(self, check: model.HttpCheck) -> CheckResult:
        try:
            timeout = aiohttp.ClientTimeout(total=check.timeout)
            async with self.session.get(check.url, timeout=timeout) as response:
                body = await response.text()
                if response.status != check.expect_status:
                    return CheckResult(
                        False, f"{check.url} answered {response.status}, want {check.expect_status}"
                    )
                if check.json_path is None:
                    return CheckResult(True, f"{check.url} {response.status}")
                try:
                    value = json_path(json.loads(body), check.json_path)
                except ValueError:
                    return CheckResult(False, f"{check.url} did not answer JSON")
                if value is None:
                    return CheckResult(False, f"{check.url}: no {check.json_path} in the answer")
                if check.expect is not None and str(value) != check.expect:
                    return CheckResult(
                        False, f"{check.url}: {check.json_path} is {value!r}, want {check.expect!r}"
                    )
                return CheckResult(True, f"{check.url} {check.json_path}={value}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return CheckResult(False, f"{check.url}: {type(exc).__name__} {exc}".strip())

    async def _tcp(self, check: model.TcpCheck) -> CheckResult:
        try:
            async with asyncio.timeout(check.timeout):
                _, writer = await asyncio.open_connection(check.address, check.port)
            writer.close()
            await writer.wait_closed()
            return CheckResult(True, f"tcp {check.address}:{check.port} open")
        except (OSError, TimeoutError) as exc:
            return CheckResult(False, f"tcp {check.address}:{check.port}: {exc or 'timeout'}")

    async def version(self, host: str, probe: model.VersionProbe) -> str | None:
        """What the host answers (see `VersionProbe.reports`), or None when it cannot tell."""
        try:
            if probe.http is not None:
                timeout = aiohttp.ClientTimeout(total=probe.timeout)
                async with self.session.get(probe.http, timeout=timeout) as response:
                    if response.status >= 400:
                        return None
                    text = await response.text()
                try:
                    value = json_path(json.loads(text), probe.json_path)
                except ValueError:
                    value = text.strip() if probe.json_path is None else None
                return None if value is None else str(value)
            if probe.run is not None:
                result = await self.remote.run(host, probe.run, timeout=probe.timeout)
                if result.exit_status != 0:
                    return None
                return _last(result.output).strip() or None
        except (aiohttp.ClientError, TimeoutError, OSError, TransportError):
            return None
        return None

    async def until_healthy(
        self,
        host: str,
        health: model.Health | None,
        *,
        version: model.VersionProbe | None,
        target: str,
        sleep: Callable[[float], Awaitable[None]],
        on_result: Callable[[CheckResult], Awaitable[None]] | None = None,
        on_progress: Callable[[HealthProgress], None] | None = None,
    ) -> CheckResult:
        """Pass `passes` consecutive rounds (every check, then the version)
        before the deadline, or fail with the last reason. `on_progress` hears
        after every round how far it is (for the live view; not journaled)."""
        passes = health.passes if health else 1
        interval = health.interval if health else 1.0
        allowed = health.deadline if health else 60.0
        started = time.monotonic()
        deadline = started + allowed
        streak = 0
        last = CheckResult(False, "not checked")
        while True:
            last = await self._round(host, health, version, target)
            streak = streak + 1 if last.ok else 0
            if on_progress is not None:
                took = time.monotonic() - started
                on_progress(HealthProgress(streak, passes, took, allowed, last.detail))
            if on_result is not None and not last.ok:
                await on_result(last)
            if streak >= passes:
                return CheckResult(True, f"{streak} consecutive passes: {last.detail}")
            if time.monotonic() + interval > deadline:
                return CheckResult(False, f"not healthy before the deadline: {last.detail}")
            await sleep(interval)

    async def _round(
        self,
        host: str,
        health: model.Health | None,
        version: model.VersionProbe | None,
        target: str,
    ) -> CheckResult:
        details = []
        for check in health.checks if health else ():
            result = await self.check(host, check)
            if not result.ok:
                return result
            details.append(result.detail)
        if version is not None:
            seen = await self.version(host, version)
            if not version.reports(seen, target):
                return CheckResult(
                    False, f"reports version {version.describe(seen)}, want {target!r}"
                )
            details.append(f"version {version.describe(seen)}")
        return CheckResult(True, "; ".join(details) or "ok")


def _last(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""
