"""Issue 11 against the real daemon: no request, file or token holder can
take it down. Each test here failed on main (the alias bomb grew the daemon
to 1.5 GB and killed it; deep JSON, a 5,000-digit number and a non-UTF-8
Authorization header answered 500)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from orchestrator import access
from tests.enginekit import inventory_text, seed
from tests.mounts import fill, tmpfs
from tests.sshhosts import MakeSSHHosts, SSHHosts
from tests.test_api import PLAYBOOK, finish, release
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
        (problem,) = answer["problems"]
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


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "ro,size=1m")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    for point in tmpfs(tmp_path, "size=64k"):
        (point / "state").mkdir(mode=0o700)
        fill(point)
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


# --- tokens and roles (defect 6), secret sources (defect 5) ------------------------


def _config(tmp_path: Path, **sections: object) -> tuple[Path, dict[str, str]]:
    """A daemon --config with one token per role; returns it and the tokens."""
    tokens = {role: access.new_token() for role in ("viewer", "operator", "approver")}
    entries = {
        f"{role}-bot": {"role": role, "sha256": access.digest(token).hex()}
        for role, token in tokens.items()
    }
    path = tmp_path / "orchestrator.yaml"
    path.write_text(yaml.safe_dump({"tokens": entries, **sections}))
    return path, tokens


async def _call(daemon: Daemon, method: str, path: str, token: str, body: object = None) -> int:
    status, _ = await daemon.http(
        method, path, body, headers={"Authorization": f"Bearer {token}"}, token=False
    )
    return status


async def _dry_run(daemon: Daemon, inventory: object) -> tuple[int, Any]:
    """Submit `inventory` (as cloud.yaml) with the lab playbook, compiling only."""
    body = {
        "inventory": yaml.safe_dump(inventory),
        "inventory_name": "cloud.yaml",
        "playbook": PLAYBOOK,
        "to_version": "2.0",
        "dry_run": True,
    }
    return await daemon.http("POST", "/v1/upgrades", body)


async def test_every_role_is_refused_what_it_may_not_do(tmp_path: Path, hosts: SSHHosts) -> None:
    config, tokens = _config(tmp_path)
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log", "--config", str(config))
    await daemon.start()
    try:
        body = {
            "inventory": inventory_text(hosts),
            "playbook": PLAYBOOK,
            "to_version": "2.0",
            "dry_run": True,
        }
        viewer, operator, approver = tokens["viewer"], tokens["operator"], tokens["approver"]
        assert await _call(daemon, "GET", "/v1/upgrades", viewer) == 200
        assert await _call(daemon, "GET", "/metrics", viewer) == 200
        assert await _call(daemon, "POST", "/v1/upgrades", viewer, body) == 403
        assert await _call(daemon, "POST", "/v1/upgrades", operator, body) == 200
        for action in ("pause", "resume", "abort", "hosts/h/retry", "hosts/h/skip"):
            assert await _call(daemon, "POST", f"/v1/upgrades/u1/{action}", viewer) == 403
            assert await _call(daemon, "POST", f"/v1/upgrades/u1/{action}", operator) == 404
        for action in ("approve", "rollback"):
            assert await _call(daemon, "POST", f"/v1/upgrades/u1/{action}", operator) == 403
            assert await _call(daemon, "POST", f"/v1/upgrades/u1/{action}", approver) == 404
        _, answer = await daemon.http(
            "POST",
            "/v1/upgrades/u1/approve",
            headers={"Authorization": f"Bearer {operator}"},
            token=False,
        )
        assert answer["detail"] == (
            "token 'operator-bot' (operator) may not POST /v1/upgrades/u1/approve: that needs "
            "the approver role"
        )
        code, _, err = await daemon.cli("approve", "u1", "--token", operator)
        assert (code, err.strip()) == (4, f"error: {answer['detail']}")
        assert await _call(daemon, "GET", "/v1/upgrades", daemon.token) == 200  # default
        assert await _call(daemon, "GET", "/v1/upgrades", viewer + "x") == 401
    finally:
        await daemon.stop()


async def test_the_journal_says_who_approved_and_the_status_when(
    tmp_path: Path, hosts: SSHHosts
) -> None:
    seed(hosts)
    release(hosts)
    config, tokens = _config(tmp_path)
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log", "--config", str(config))
    await daemon.start()
    try:
        auth = {"Authorization": f"Bearer {tokens['operator']}"}
        body = {"inventory": inventory_text(hosts), "playbook": PLAYBOOK, "to_version": "2.0"}
        status, created = await daemon.http("POST", "/v1/upgrades", body, headers=auth, token=False)
        assert status == 201, created
        upgrade_id = created["id"]
        await daemon.wait_state(upgrade_id, "waiting_approval")
        approver = {"Authorization": f"Bearer {tokens['approver']}"}
        path = f"/v1/upgrades/{upgrade_id}/approve"
        assert (await daemon.http("POST", path, headers=approver, token=False))[0] == 200
        finish(hosts)
        doc = await daemon.wait_state(upgrade_id, "succeeded")
        [approval] = doc["approvals"]
        assert (approval["phase"], approval["by"]) == ("contract", "approver-bot")
        assert doc["created_at"] <= approval["at"] <= doc["updated_at"]
    finally:
        await daemon.stop()


async def test_secrets_come_only_from_where_the_daemons_config_says(
    tmp_path: Path, hosts: SSHHosts
) -> None:
    allowed = tmp_path / "secrets"
    allowed.mkdir()
    (allowed / "db").write_text("s3cret\n")
    config, _ = _config(tmp_path, secrets={"env": ["DB_PASSWORD"], "dirs": [str(allowed)]})
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log", "--config", str(config))
    await daemon.start()
    try:
        for ref, ok in (
            ({"file": str(daemon.state_dir / "token")}, False),  # the daemon's own token
            ({"file": str(allowed / ".." / "state" / "token")}, False),
            ({"env": "HOME"}, False),
            ({"env": "DB_PASSWORD"}, True),
            ({"file": str(allowed / "db")}, True),
        ):
            inventory = yaml.safe_load(inventory_text(hosts))
            inventory["secrets"] = {"t": ref}
            status, answer = await _dry_run(daemon, inventory)
            if ok:
                assert status == 200, answer
                continue
            assert status == 422, (ref, answer)
            (problem,) = answer["problems"]
            kind = next(iter(ref))
            assert (problem["file"], problem["field"]) == ("cloud.yaml", f"secrets.t.{kind}")
            assert problem["line"] is not None
            assert "is not" in problem["message"] and "lets secrets come from" in problem["message"]
    finally:
        await daemon.stop()


# --- server limits (defect 7) ------------------------------------------------------


async def _closed_by_server(reader: asyncio.StreamReader, within: float = 20) -> bool:
    """The server closed (or reset) the connection, with nothing answered."""
    try:
        async with asyncio.timeout(within):
            return await reader.read() == b""
    except ConnectionResetError:
        return True


async def test_slow_headers_are_cut_off_and_connections_are_capped(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump({"limits": {"max_connections": 4, "header_timeout": "1s"}}))
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log", "--config", str(config))
    await daemon.start()
    try:
        # slowloris: a head that never ends is cut off after header_timeout
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        assert await _closed_by_server(reader)
        writer.close()

        # four idle connections take every slot; a fifth is closed at once
        held = [await asyncio.open_connection("127.0.0.1", daemon.port) for _ in range(4)]
        await asyncio.sleep(0)  # (the server accepts them in order)
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        assert await _closed_by_server(extra_reader, within=5)
        extra_writer.close()
        for _, w in held:
            w.close()
        # once they are gone, requests are served again
        status = 0
        async with asyncio.timeout(20):
            while status != 200:
                try:
                    status = (await daemon.http("GET", "/healthz", token=False))[0]
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
    finally:
        await daemon.stop()


async def test_event_streams_are_capped_per_token(tmp_path: Path, hosts: SSHHosts) -> None:
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump({"limits": {"streams_per_token": 1}}))
    seed(hosts)
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log", "--config", str(config))
    await daemon.start()
    try:
        body = {"inventory": inventory_text(hosts), "playbook": PLAYBOOK, "to_version": "2.0"}
        status, created = await daemon.http("POST", "/v1/upgrades", body)
        assert status == 201
        path = f"{daemon.url}/v1/upgrades/{created['id']}/events"
        async with (
            aiohttp.ClientSession(headers=daemon.auth) as session,
            session.get(path) as first,
            session.get(path) as second,
        ):
            assert first.status == 200
            assert second.status == 429
            assert "event streams open" in (await second.json())["detail"]
        await daemon.http("POST", f"/v1/upgrades/{created['id']}/abort")
        release(hosts)
        finish(hosts)
    finally:
        await daemon.stop()


async def test_listening_beyond_loopback_needs_tls_or_insecure_no_tls(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log")
    code, err = await _serve_fails(daemon, "--listen", "0.0.0.0:0")
    assert code == 2
    assert err == (
        "error: --listen 0.0.0.0:0 reaches beyond loopback: give --tls-cert and --tls-key "
        "(bearer tokens must not travel in clear text), or --insecure-no-tls"
    )
    insecure = Daemon(
        tmp_path / "state", tmp_path / "daemon.log", "--listen", "0.0.0.0:0", "--insecure-no-tls"
    )
    await insecure.start()
    try:
        assert (await insecure.http("GET", "/healthz", token=False))[0] == 200
        assert "--insecure-no-tls: listening beyond loopback" in insecure.log.read_text()
    finally:
        await insecure.stop()


# --- secrets on the hosts (defect 4), host addresses (defect 9) ----------------------


async def test_a_secret_is_on_no_command_line_and_its_base64_is_redacted(
    tmp_path: Path, hosts: SSHHosts
) -> None:
    """On main the value was on the exec's command line ('ps' on the host), and
    `printf %s {{ secrets.t }} | base64` put it, encoded, into the status."""
    seed(hosts)
    release(hosts)
    finish(hosts)
    value = "s3cret-" + os.urandom(6).hex()
    config, _ = _config(tmp_path, secrets={"env": ["LAB_SECRET"]})
    daemon = Daemon(tmp_path / "state", tmp_path / "daemon.log", "--config", str(config))
    daemon.env["LAB_SECRET"] = value
    await daemon.start()
    try:
        inventory = yaml.safe_load(inventory_text(hosts))
        inventory["secrets"] = {"t": {"env": "LAB_SECRET"}}
        playbook = PLAYBOOK.replace(
            'undo: "rm -f pin"',
            'undo: "rm -f pin"}\n      - {run: "printf %s {{ secrets.t }} | base64", '
            "idempotent: true",
        ).split("  - name: contract", maxsplit=1)[0]
        body = {"inventory": yaml.safe_dump(inventory), "playbook": playbook, "to_version": "2.0"}
        status, created = await daemon.http("POST", "/v1/upgrades", body)
        assert status == 201, created
        doc = await daemon.wait_state(created["id"], "succeeded", "failed")
        assert doc["state"] == "succeeded", doc["reason"]
        text = json.dumps(doc) + daemon.log.read_text()
        for form in (value, base64.b64encode(value.encode()).decode()):
            assert form not in text
        outputs = [
            s["output"] for b in doc["phases"][0]["batches"] for h in b["hosts"] for s in h["steps"]
        ]
        assert "***" in outputs
        for name in hosts.names:
            assert not [c for c in hosts.commands(name) if value in c], name
    finally:
        await daemon.stop()


async def test_a_host_address_that_is_no_address_is_422_naming_the_field(
    daemon: Daemon, hosts: SSHHosts
) -> None:
    inventory = yaml.safe_load(inventory_text(hosts))
    first = next(iter(inventory["hosts"]))
    inventory["hosts"][first]["address"] = "not an address!!"
    status, answer = await _dry_run(daemon, inventory)
    assert status == 422  # on main: accepted, planned
    (problem,) = answer["problems"]
    assert (problem["file"], problem["field"]) == ("cloud.yaml", f"hosts.{first}.address")
    assert "neither an IP address nor a host name" in problem["message"]
