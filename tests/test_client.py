"""The CLI client against the real app in this process: exit codes, output,
where it finds the daemon, and the watch display (rich and plain)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from orchestrator.cli import main
from orchestrator.client import (
    Client,
    Endpoint,
    describe_event,
    render_status,
    resolve_endpoint,
    watch,
)
from orchestrator.engine.status import status_document
from orchestrator.engine.view import UpgradeView
from orchestrator.inventory import parse_inventory_text
from orchestrator.plan import Options, compile_plan
from orchestrator.playbook import parse_playbook_text
from orchestrator.store.journal import Event
from tests.enginekit import inventory_text
from tests.sshhosts import MakeSSHHosts
from tests.test_api import PLAYBOOK, TOKEN, Api, finish, poll, release, running_api


@pytest.fixture
async def api(make_ssh_hosts: MakeSSHHosts, tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(await make_ssh_hosts(2), tmp_path) as running:
        yield running


@pytest.fixture
def files(api: Api, tmp_path: Path) -> tuple[str, str]:
    inventory, playbook = tmp_path / "inventory.yaml", tmp_path / "lab.yaml"
    inventory.write_text(inventory_text(api.hosts))
    playbook.write_text(PLAYBOOK)
    return str(inventory), str(playbook)


async def cli(api: Api | None, *argv: str, token: str = TOKEN) -> tuple[int, str, str]:
    """`orchestrator ARGV` in a worker thread (it runs its own event loop)."""
    server = str(api.client.make_url("")).rstrip("/") if api else "http://127.0.0.1:9"
    out, err = io.StringIO(), io.StringIO()
    args = [*argv, "--server", server, "--token", token]
    code = await asyncio.to_thread(main, args, out, err)
    return code, out.getvalue(), err.getvalue()


async def test_submit_watch_to_success_exits_0(api: Api, files: tuple[str, str]) -> None:
    release(api.hosts)
    finish(api.hosts)
    inventory, playbook = files
    run = asyncio.create_task(
        cli(api, "submit", "-i", inventory, "-p", playbook, "--to", "2.0", "--watch")
    )
    upgrade_id = await _wait_for_an_upgrade(api)
    await api.wait_state(upgrade_id, "waiting_approval")
    code, out, _ = await cli(api, "approve", upgrade_id)
    assert (code, out.strip()) == (0, f"approve: upgrade {upgrade_id} is running")

    code, out, err = await run
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"submitted: {upgrade_id} (plan ")
    assert lines[1] == f"upgrade {upgrade_id}: lab 1.0 -> 2.0 on shell-cloud"
    assert any(line.endswith("phase roll done") for line in lines)
    assert any("roll host-2 done" in line for line in lines)
    # issue 13: the approval gate says how to approve; the end is one verdict line
    assert f"waiting for approval: orchestrator approve {upgrade_id}" in lines
    assert re.fullmatch(rf"upgrade {upgrade_id} succeeded in \d+ s, 2/2 hosts at 2\.0", lines[-1])

    code, out, _ = await cli(api, "status", upgrade_id, "--json")
    assert code == 0
    assert json.loads(out)["state"] == "succeeded"
    code, out, _ = await cli(api, "status")
    assert code == 0
    assert upgrade_id in out
    assert "succeeded" in out


async def test_submit_dry_run_prints_what_plan_prints(api: Api, files: tuple[str, str]) -> None:
    inventory, playbook = files
    args = ["-i", inventory, "-p", playbook, "--to", "2.0"]

    code, remote, err = await cli(api, "submit", *args, "--dry-run")

    assert (code, err) == (0, "")
    local_out = io.StringIO()
    assert main(["plan", *args], local_out, io.StringIO()) == 0
    # the same tree; `plan` adds the estimate from the local journal as its last line
    local = local_out.getvalue()
    assert local.splitlines()[-1].startswith("estimate: ")
    assert remote == local.rsplit("estimate: ", 1)[0]
    assert remote.startswith("Plan lab: 1.0 -> 2.0 on shell-cloud (2 hosts, 4 phases)")
    assert api.manager.upgrades == {}


async def test_watch_timeout_stops_watching_not_the_upgrade(
    api: Api, files: tuple[str, str]
) -> None:
    inventory, playbook = files
    _, out, _ = await cli(api, "submit", "-i", inventory, "-p", playbook, "--to", "2.0")
    upgrade_id = out.split()[1]
    await api.wait_step(upgrade_id, "roll", "host-1", "running")  # it waits for "go"
    code, out, _ = await cli(api, "watch", upgrade_id, "--timeout", "0.5")
    assert code == 3
    assert out.splitlines()[-1] == f"still {upgrade_id} after 0.5 s: stopped watching; it goes on"
    assert (await api.status(upgrade_id))["state"] == "running"


async def test_watch_of_a_rolled_back_upgrade_exits_1(api: Api, files: tuple[str, str]) -> None:
    inventory, playbook = files
    code, out, _ = await cli(api, "submit", "-i", inventory, "-p", playbook, "--to", "2.0")
    assert code == 0
    upgrade_id = out.split()[1]
    await api.wait_step(upgrade_id, "roll", "host-1", "running")
    watching = asyncio.create_task(cli(api, "watch", upgrade_id))
    code, out, _ = await cli(api, "rollback", upgrade_id)
    assert code == 0
    release(api.hosts)

    code, out, _ = await watching
    assert code == 1
    assert re.fullmatch(
        rf"upgrade {upgrade_id} rolled back after \d+ s: every host and pin undone",
        out.splitlines()[-1],
    )


async def test_bad_input_exits_2_naming_file_and_line(api: Api, tmp_path: Path) -> None:
    inventory = tmp_path / "broken.yaml"
    inventory.write_text("hosts:\n  a: {address: 1.2.3.4, roles: [x]\n")

    code, out, err = await cli(api, "submit", "-i", str(inventory), "-p", "nova", "--to", "2.0")

    assert (code, out) == (2, "")
    assert err.startswith(f"error: {inventory}:")
    assert "YAML syntax error" in err
    playbook = tmp_path / "my-playbook.yaml"
    playbook.write_text(PLAYBOOK.replace("batch: 1", "batch: lots"))
    good_inventory = tmp_path / "inventory.yaml"
    good_inventory.write_text(inventory_text(api.hosts))
    code, _, err = await cli(
        api, "submit", "-i", str(good_inventory), "-p", str(playbook), "--to", "2.0"
    )
    assert code == 2
    line = 1 + PLAYBOOK.splitlines().index("    batch: 1")
    assert err.startswith(f"error: {playbook}:{line}:")
    assert "phases[1].batch" in err
    code, _, err = await cli(api, "submit", "-i", "/nonexistent.yaml", "-p", "nova", "--to", "2")
    assert (code, err) == (2, "error: /nonexistent.yaml: file not found\n")
    code, _, err = await cli(api, "status", "u-unknown")
    assert code == 2
    assert "no upgrade 'u-unknown'" in err


async def test_conflicts_and_refusals_exit_3(api: Api, files: tuple[str, str]) -> None:
    inventory, playbook = files
    code, out, _ = await cli(api, "submit", "-i", inventory, "-p", playbook, "--to", "2.0")
    assert code == 0
    upgrade_id = out.split()[1]

    code, _, err = await cli(api, "submit", "-i", inventory, "-p", playbook, "--to", "2.0")
    assert code == 3
    assert f"is held by upgrade {upgrade_id}: one upgrade at a time per host" in err
    code, _, err = await cli(api, "resume", upgrade_id)
    assert code == 3
    assert "cannot resume" in err
    code, _, err = await cli(api, "status", token="wrong-token-123456")
    assert code == 3
    assert "refused the token" in err
    assert "wrong-token" not in err


async def test_unreachable_daemon_exits_3() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens
    out, err = io.StringIO(), io.StringIO()
    argv = ["status", "--server", f"http://127.0.0.1:{port}", "--token", "t"]
    code = await asyncio.to_thread(main, argv, out, err)
    assert code == 3
    assert err.getvalue().startswith(f"error: cannot reach the daemon at http://127.0.0.1:{port}")


def test_the_endpoint_comes_from_flags_then_environment_then_the_local_daemon(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    env = {"ORCHESTRATOR_STATE_DIR": str(state)}
    assert resolve_endpoint(None, None, environ=env).url == "http://127.0.0.1:8750"
    assert resolve_endpoint(None, None, environ=env).token is None

    state.mkdir()
    (state / "daemon.json").write_text('{"url": "http://127.0.0.1:4242", "pid": 1}')
    (state / "token").write_text("from-the-file\n")
    local = resolve_endpoint(None, None, environ=env)
    assert (local.url, local.token) == ("http://127.0.0.1:4242", "from-the-file")

    env |= {"ORCHESTRATOR_URL": "https://cloud:8750/", "ORCHESTRATOR_TOKEN": "from-env"}
    from_env = resolve_endpoint(None, None, environ=env)
    assert (from_env.url, from_env.token) == ("https://cloud:8750", "from-env")

    flags = resolve_endpoint("http://flag:1", "from-flag", environ=env)
    assert (flags.url, flags.token) == ("http://flag:1", "from-flag")


async def test_live_display_shows_phases_bars_hosts_and_running_steps(
    api: Api, files: tuple[str, str]
) -> None:
    inventory, playbook = files
    _, out, _ = await cli(api, "submit", "-i", inventory, "-p", playbook, "--to", "2.0")
    upgrade_id = out.split()[1]
    await api.wait_step(upgrade_id, "roll", "host-1", "running")
    doc = await api.status(upgrade_id)

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system="standard")
    console.print(render_status(doc))
    text = Text.from_ansi(screen.getvalue()).plain

    assert f"upgrade {upgrade_id}: lab 1.0 -> 2.0 on shell-cloud  running" in text
    assert "contract (point of no return)" in text
    assert "━" in text  # the rolling phase's bar
    # issue 13: a row per host at work (icon, state, step, time), hosts counted
    # once each, and "next" names what follows the running phase, not itself
    assert re.search(r"hosts at work:\n  ⟳ roll host-1 upgrading while \[ ! -f go \].* \d+ s", text)
    assert "hosts 0/2 through every phase (done 1, upgrading 1)" in text
    assert "next: phase contract, once roll is done" in text


async def test_live_watch_redraws_until_the_end(api: Api, files: tuple[str, str]) -> None:
    inventory, playbook = files
    _, out, _ = await cli(api, "submit", "-i", inventory, "-p", playbook, "--to", "2.0")
    upgrade_id = out.split()[1]
    screen = io.StringIO()
    endpoint = Endpoint(str(api.client.make_url("")).rstrip("/"), TOKEN)
    async with Client(endpoint) as client:
        watching = asyncio.create_task(watch(client, upgrade_id, screen, live=True))
        release(api.hosts)
        finish(api.hosts)
        await api.wait_state(upgrade_id, "waiting_approval")
        await poll(  # the display has caught up
            lambda: asyncio.sleep(0, Text.from_ansi(screen.getvalue()).plain),
            lambda text: "on shell-cloud  waiting_approval" in text,
        )
        await api.ok("POST", f"/v1/upgrades/{upgrade_id}/approve")
        doc = await watching

    assert doc["state"] == "succeeded"
    text = Text.from_ansi(screen.getvalue()).plain
    assert "\x1b[" in screen.getvalue()  # drawn for a terminal, in place
    assert f"upgrade {upgrade_id}: lab 1.0 -> 2.0 on shell-cloud  succeeded" in text
    assert "next: nothing: every phase is done" in text


def test_plain_event_lines() -> None:
    at = 1_700_000_000.0

    def line(kind: str, **data: object) -> str | None:
        text = describe_event({"seq": 1, "at": at, "kind": kind, "data": data})
        return None if text is None else text.split(" ", 1)[1]

    assert line("upgrade.state", state="paused", reason="by hand") == "upgrade paused: by hand"
    assert line("phase.state", phase="roll", state="running") == "phase roll running"
    assert line("host.state", phase="roll", host="h1", state="failed", error="boom") == (
        "  roll h1 failed: boom"
    )
    assert line("step", phase="roll", host="h1", step="s1", state="done", exit=0) == (
        "    h1 s1 done (exit 0)"
    )
    assert line("health", phase="roll", host="h1", ok=True, detail="") is None
    assert line("unknown.kind") is None


def test_status_of_an_upgrade_that_has_not_started_renders() -> None:
    inventory = parse_inventory_text(
        "vars: {from_version: '1.0'}\n"
        "roles: {app: {version: {run: cat version}}}\n"
        "hosts: {a: {address: 127.0.0.1, roles: [app]}}\n"
    )
    playbook = parse_playbook_text(PLAYBOOK)
    plan = compile_plan(*inventory, *playbook, Options(to_version="2.0"))
    view = UpgradeView("u-1")
    view.apply(Event("u-1", 1, 1.0, "upgrade.state", {"state": "pending"}))

    screen = io.StringIO()
    Console(file=screen, width=100).print(render_status(status_document("u-1", plan, view, "d")))

    text = screen.getvalue()
    assert "upgrade u-1: lab 1.0 -> 2.0 on inventory  pending" in text
    assert "next: phase pin" in text


async def _wait_for_an_upgrade(api: Api) -> str:
    managed = await poll(lambda: asyncio.sleep(0, api.manager.upgrades), bool)
    return next(iter(managed))


BUDGET = """
name: lab
phases:
  - name: roll
    rolling: app
    batch: 1
    max_failures: 1
    steps:
      - run: 'test "$HOST_NAME" != host-2 && echo {{ to_version }} > version'
        undo: "echo {{ from_version }} > version"
        idempotent: true
  - name: check
    once: app
    gate: all_at_target
    steps:
      - {run: "true"}
"""


async def test_retry_and_skip_a_failed_host_from_the_cli(api: Api) -> None:
    upgrade_id = await api.submit(playbook=BUDGET)
    doc = await api.wait_state(upgrade_id, "paused")
    assert doc["reason"].startswith("phase check waits: 1 host(s) failed within the failure budget")
    code, _, err = await cli(api, "retry", upgrade_id, "host-1")
    assert (code, err.strip()) == (3, "error: retry host-1: host-1 has not failed in this upgrade")
    code, out, err = await cli(api, "skip", upgrade_id, "host-2")
    assert (code, out.strip(), err) == (
        0,
        f"skip: upgrade {upgrade_id} is paused ({doc['reason']})",
        "",
    )
    assert (await cli(api, "resume", upgrade_id))[0] == 0
    doc = await api.wait_state(upgrade_id, "succeeded", "failed", "rolled_back")
    assert (doc["state"], doc["skipped_hosts"]) == ("succeeded", {"host-2": "roll"})
    events = await api.manager.journal.events(upgrade_id)
    skip = next(e.data for e in events if e.kind == "control" and e.data["action"] == "skip")
    assert skip == {"v": 1, "action": "skip", "host": "host-2", "phase": "roll", "by": "default"}
