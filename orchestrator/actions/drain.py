"""Drain drivers: take a host out of service and put it back.

* `haproxy` speaks HAProxy's runtime API: `set server B/S state drain`, wait
  until the server's current sessions (`scur` in `show stat`) reach 0 within
  the deadline, then `state maint`; undrain is `state ready`. The API is a
  UNIX socket on the load balancer host (reached through SSH stream-local
  forwarding) or a TCP address.
* `run` runs a command on the host, then polls `wait_until` until it exits 0.
* `http` calls a URL; undo calls the undo URL.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp

from orchestrator import model
from orchestrator.actions.remote import Remote
from orchestrator.errors import DrainError

POLL_INTERVAL = 0.2


class RuntimeAPI(Protocol):
    async def __call__(self, lb: model.LoadBalancerTarget, command: str) -> str: ...


async def tcp_runtime_api(address: str, command: str, timeout: float = 5.0) -> str:
    """One command on HAProxy's runtime API over TCP (non-interactive mode)."""
    host, _, port = address.rpartition(":")
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    return data.decode(errors="replace")


def sessions(stat_csv: str, backend: str, server: str) -> int | None:
    """Current sessions of backend/server in `show stat` output; None if absent."""
    text = stat_csv.lstrip("# ")
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") == backend and row.get("svname") == server:
            try:
                return int(row.get("scur") or 0)
            except ValueError:
                return None
    return None


class Drainer:
    def __init__(
        self,
        remote: Remote,
        session: aiohttp.ClientSession,
        balancers: dict[str, model.LoadBalancerTarget],
        runtime_api: RuntimeAPI,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.remote = remote
        self.session = session
        self.balancers = balancers
        self.runtime_api = runtime_api
        self.sleep = sleep

    async def drain(self, host: str, drain: model.Drain) -> str:
        if isinstance(drain, model.LoadBalancerDrain):
            return await self._lb_drain(drain)
        if isinstance(drain, model.RunDrain):
            await self._run(host, drain.run, drain.timeout, "drain")
            if drain.wait_until:
                await self._wait_until(host, drain.wait_until, drain.timeout)
            return f"ran {drain.run}"
        await self._http(drain.method, drain.url, drain.timeout)
        return f"{drain.method} {drain.url}"

    async def undrain(self, host: str, drain: model.Drain) -> str:
        if isinstance(drain, model.LoadBalancerDrain):
            lb = self.balancers[drain.load_balancer]
            await self._api(lb, f"set server {drain.backend}/{drain.server} state ready")
            return f"{drain.backend}/{drain.server} ready"
        if isinstance(drain, model.RunDrain):
            await self._run(host, drain.undo, drain.timeout, "undrain")
            return f"ran {drain.undo}"
        await self._http(drain.method, drain.undo_url, drain.timeout)
        return f"{drain.method} {drain.undo_url}"

    async def _api(self, lb: model.LoadBalancerTarget, command: str) -> str:
        answer = (await self.runtime_api(lb, command)).strip()
        if command.startswith("set ") and answer:
            raise DrainError(f"load balancer {lb.name}: '{command}' answered: {answer}")
        return answer

    async def _lb_drain(self, drain: model.LoadBalancerDrain) -> str:
        lb = self.balancers[drain.load_balancer]
        name = f"{drain.backend}/{drain.server}"
        if sessions(await self._api(lb, "show stat"), drain.backend, drain.server) is None:
            raise DrainError(f"load balancer {lb.name} has no server {name}")
        await self._api(lb, f"set server {name} state drain")
        deadline = time.monotonic() + drain.timeout
        while True:
            current = sessions(await self._api(lb, "show stat"), drain.backend, drain.server)
            if current == 0:
                break
            if time.monotonic() >= deadline:
                raise DrainError(
                    f"{name} still has {current} sessions after {drain.timeout:g}s of draining"
                )
            await self.sleep(POLL_INTERVAL)
        await self._api(lb, f"set server {name} state maint")
        return f"{name} drained to 0 sessions, maint"

    async def _run(self, host: str, command: str, timeout: float, what: str) -> None:
        result = await self.remote.run(host, command, timeout=timeout)
        if result.exit_status != 0:
            raise DrainError(
                f"{what} command exited {result.exit_status}: {result.output.strip()[-300:]}"
            )

    async def _wait_until(self, host: str, command: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = await self.remote.run(host, command, timeout=timeout)
            if result.exit_status == 0:
                return
            if time.monotonic() >= deadline:
                raise DrainError(f"'{command}' did not succeed within {timeout:g}s")
            await self.sleep(POLL_INTERVAL * 5)

    async def _http(self, method: str, url: str, timeout: float) -> None:
        try:
            async with self.session.request(
                method, url, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if response.status >= 300:
                    raise DrainError(f"{method} {url} answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DrainError(f"{method} {url}: {exc}") from None
