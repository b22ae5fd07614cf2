"""Issue 11 against the real daemon: no request, file or token holder can
take it down. Each test here failed on main (the alias bomb grew the daemon
to 1.5 GB and killed it; deep JSON, a 5,000-digit number and a non-UTF-8
Authorization header answered 500)."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.enginekit import inventory_text
from tests.sshhosts import MakeSSHHosts, SSHHosts
from tests.test_api import PLAYBOOK
from tests.test_daemon_e2e import Daemon

pytestmark = pytest.mark.slow


def alias_bomb(levels: int = 9) -> str:
    """Nine levels of nine aliases: 532 bytes that expand to 9**9 strings."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def hosts(make_ssh_hosts: MakeSSHHosts) -> SSHHosts:
    return await make_ssh_hosts(2)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    running = Daemon(tmp_path / "state", tmp_path / "daemon.log")
    await running.start()
    yield running
    await running.stop()


async def test_an_alias_bomb_is_refused_in_milliseconds_and_the_daemon_stays_up(
    daemon: Daemon, hosts: SSHHosts
) -> None:
    for field, text in (("inventory", alias_bomb()), ("playbook", alias_bomb())):
        body = {"inventory": inventory_text(hosts), "playbook": PLAYBOOK, "to_version": "2.0"}
        body[field] = text
        started = time.monotonic()
        status, answer = await daemon.http("POST", "/v1/upgrades", body)
        assert time.monotonic() - started < 5  # generous; the refusal itself takes ~1 ms
        assert status == 422, answer
        (problem,) = answer["error"]["problems"]
        assert problem["line"] == 7 and "expands through YAML aliases" in problem["message"]
        assert (await daemon.http("GET", "/healthz", token=False))[0] == 200


async def test_the_cli_refuses_an_alias_bomb_with_exit_2(tmp_path: Path, daemon: Daemon) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    code, out, err = await daemon.cli("plan", "-i", str(bomb), "-p", "minicloud", "--to", "2.0")
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {bomb}:7:5: this value expands through YAML aliases"), err
    assert "Traceback" not in err
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert max(peak, before) < 400 * 1024  # KiB: the CLI's own size, not the bomb's


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 32 levels"),
        (b'{"inventory": "x", "to_version": ' + b"1" * 5000 + b"}", "a number of 5000"),
    ],
    ids=["deep", "long-number"],
)
async def test_hostile_json_is_400_not_500(daemon: Daemon, raw: bytes, said: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    head = (
        f"POST /v1/upgrades HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {daemon.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode() + raw)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request", answer[:300]
    assert said.encode() in rest


async def test_an_authorization_header_that_is_not_utf8_is_401(daemon: Daemon) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(
        b"GET /v1/upgrades HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 Unauthorized"), answer[:300]
    assert b"Traceback" not in answer
    log = daemon.log.read_text()
    assert "request crashed" not in log
