"""Versioned RPC over HTTP: `POST /rpc` with a JSON message.

```
{"version": "1.0" | "2.0", "method": "...", "args": {...}, "object_version": "1.0" | "2.0"}
```

A 1.0 service understands only 1.0 messages and answers a 2.0 one with
409 `unsupported RPC version 2.0`; 2.0 understands both. A 2.0 sender speaks
1.0 while `[upgrade_levels] compute` pins it. Answers are `{"result": ...}`
on 200 or `{"error": "..."}` with an error status.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from orchestrator.minicloud import MinicloudError

SPEAKS: Mapping[str, tuple[str, ...]] = {"1.0": ("1.0",), "2.0": ("1.0", "2.0")}


def sends(release: str, pin: str | None) -> str:
    """The RPC version a service of `release` sends: 1.0 code only knows 1.0."""
    return "1.0" if release == "1.0" else (pin or release)


@dataclass(frozen=True, slots=True)
class Message:
    version: str
    method: str
    args: Mapping[str, Any] = field(default_factory=dict)
    object_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "method": self.method,
            "args": dict(self.args),
            "object_version": self.object_version,
        }

    @classmethod
    def from_json(cls, body: Any) -> Message:
        if not isinstance(body, dict):
            raise ValueError("an RPC message is a JSON object")
        version, method = body.get("version"), body.get("method")
        args, object_version = body.get("args", {}), body.get("object_version")
        if not isinstance(version, str) or not isinstance(method, str):
            raise ValueError("an RPC message needs string 'version' and 'method'")
        if not isinstance(args, dict):
            raise ValueError("'args' must be an object")
        if object_version is not None and not isinstance(object_version, str):
            raise ValueError("'object_version' must be a string")
        return cls(version, method, args, object_version)


class RemoteError(MinicloudError):
    """The peer answered, with an error status."""

    def __init__(self, url: str, status: int, error: str) -> None:
        self.url, self.status, self.error = url, status, error
        super().__init__(f"{url} answered {status}: {error}")


class Unreachable(MinicloudError):
    """No answer: could not connect, or the connection closed before an answer."""


class RPCTimeout(MinicloudError):
    """The peer took too long; it may have acted, so this is never retried elsewhere."""


def client_session() -> aiohttp.ClientSession:
    """A session that opens a new connection per call: no keep-alive races on restarts."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def call(
    session: aiohttp.ClientSession,
    url: str,
    message: Message,
    timeout: float = 10.0,
) -> Any:
    try:
        async with session.post(
            f"{url}/rpc", json=message.to_json(), timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            if response.status != 200:
                error = body.get("error") if isinstance(body, dict) else None
                raise RemoteError(url, response.status, str(error or response.reason))
    except TimeoutError:
        raise RPCTimeout(f"{url}: no answer to {message.method} within {timeout:g}s") from None
    except aiohttp.ClientConnectionError as exc:
        raise Unreachable(f"{url}: {exc or type(exc).__name__}") from None
    except aiohttp.ClientError as exc:  # a broken answer: the peer may have acted
        raise RemoteError(url, 0, f"broken answer: {exc}") from None
    if not isinstance(body, dict) or "result" not in body:
        raise RemoteError(url, 200, "answer without 'result'")
    return body["result"]


class Pool:
    """Round robin over peers; fail over to the next one on connection errors only."""

    def __init__(self, session: aiohttp.ClientSession, urls: Sequence[str]) -> None:
        if not urls:
            raise MinicloudError("no conductor URLs configured")
        self.session = session
        self.urls = tuple(urls)
        self._turn = itertools.cycle(range(len(self.urls)))

    async def call(self, message: Message, timeout: float = 10.0) -> Any:
        start = next(self._turn)
        errors = []
        for i in range(len(self.urls)):
            url = self.urls[(start + i) % len(self.urls)]
            try:
                return await call(self.session, url, message, timeout)
            except Unreachable as exc:
                errors.append(str(exc))
        raise Unreachable("no conductor reachable: " + "; ".join(errors))
