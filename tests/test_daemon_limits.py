"""Issue 11 against the real daemon: no request, file or token holder can
take it down. Each test here failed on main (the alias bomb grew the daemon
to 1.5 GB and killed it; deep JSON, a 5,000-digit number and a non-UTF-8
Authorization header answered 500)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
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


# --- the state directory (defect 8) ----------------------------------------------


async def _serve_fails(daemon: Daemon, *extra: str) -> tuple[int, str]:
    code, out, err = await daemon.cli("serve", "--listen", "127.0.0.1:0", *extra)
    assert "Traceback" not in out + err
    return code, err.strip()


async def test_an_open_state_directory_and_journal_are_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "journal.sqlite3").touch(mode=0o644)
    (state / "journal.sqlite3").chmod(0o644)
    daemon = Daemon(state, tmp_path / "daemon.log")
    await daemon.start()
    try:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700  # on main: kept 0755
        for name in ("journal.sqlite3", "token", "daemon.lock", "daemon.json"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    finally:
        await daemon.stop()


async def test_a_token_file_of_another_user_or_behind_a_symlink_is_refused(
    tmp_path: Path,
) -> None:
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log")
    real = tmp_path / "real-token"
    real.write_text("a-token-that-is-long-enough\n")
    real.chmod(0o600)
    link = tmp_path / "token-link"
    link.symlink_to(real)
    code, err = await _serve_fails(daemon, "--token-file", str(link))
    assert (code, err) == (
        2,
        f"error: {link}: the token file is a symbolic link; use the file itself",
    )
    if os.geteuid() == 0:  # only root can give a file away (CI runs as root)
        os.chown(real, 65534, 65534)
        code, err = await _serve_fails(daemon, "--token-file", str(real))
        assert code == 2
        assert err.startswith(f"error: {real}: the token file belongs to uid 65534"), err
    elif os.environ.get("CI", "").lower() == "true":
        pytest.fail("giving a token file to another user needs root, as CI is")


def _tmpfs(tmp_path: Path, options: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("mounting a tmpfs needs root, as CI is", pytrace=False)
        pytest.skip("mounting a tmpfs needs root")
    point = tmp_path / "disk"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _tmpfs(tmp_path, "ro,size=1m")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    for point in _tmpfs(tmp_path, "size=64k"):
        (point / "state").mkdir(mode=0o700)
        with (point / "filler").open("wb", buffering=0) as out, contextlib.suppress(OSError):
            while out.write(b"\0" * 1024):
                pass
        yield point / "state"


async def test_a_read_only_state_directory_is_one_line_and_exit_2(
    tmp_path: Path, read_only_disk: Path
) -> None:
    daemon = Daemon(read_only_disk, tmp_path / "daemon.log")
    code, err = await _serve_fails(daemon)
    assert code == 2
    assert err.startswith(f"error: {read_only_disk}: cannot "), err
    assert "Read-only file system" in err and len(err.splitlines()) == 1


async def test_a_full_state_directory_is_one_line_and_exit_3(
    tmp_path: Path, full_disk: Path
) -> None:
    daemon = Daemon(full_disk, tmp_path / "daemon.log")
    code, err = await _serve_fails(daemon)
    assert code == 3, err
    assert "No space left on device; free some space" in err and len(err.splitlines()) == 1
