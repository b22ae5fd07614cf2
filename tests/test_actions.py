"""Health checks, version probes and drain drivers against real local servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from orchestrator import model
from orchestrator.actions.drain import Drainer, sessions
from orchestrator.actions.health import Checker, json_path
from orchestrator.actions.run import run_action
from orchestrator.errors import DrainError
from orchestrator.transport.ssh import CommandResult, SSHPool
from tests.sshhosts import MakeSSHHosts


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[str, dict[str, object]]]:
    state: dict[str, object] = {"status": 200, "version": "1.0", "calls": []}

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, status=int(str(state["status"])))

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"release": {"version": state["version"]}})

    async def hook(request: web.Request) -> web.Response:
        calls = state["calls"]
        assert isinstance(calls, list)
        calls.append((request.method, request.path))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/", version)
    app.router.add_route("*", "/hook/{name}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", state
    await runner.cleanup()


def test_json_path_walks_dicts_and_lists() -> None:
    doc = {"a": {"b": [{"c": "x"}]}}
    assert json_path(doc, "a.b.0.c") == "x"
    assert json_path(doc, "a.z") is None
    assert json_path(doc, None) == doc


async def test_http_check_status_and_json(http_server: tuple[str, dict[str, object]]) -> None:
    url, state = http_server
    async with aiohttp.ClientSession() as session:
        checker = Checker(remote=None, session=session)  # type: ignore[arg-type]
        ok = await checker.check(
            "h", model.HttpCheck(url=f"{url}/health", json_path="ok", expect="True")
        )
        assert ok.ok, ok.detail
        state["status"] = 503
        bad = await checker.check("h", model.HttpCheck(url=f"{url}/health"))
        assert not bad.ok
        assert "503" in bad.detail
        probe = model.VersionProbe(http=f"{url}/", json_path="release.version")
        assert await checker.version("h", probe) == "1.0"


async def test_tcp_check_open_and_closed(http_server: tuple[str, dict[str, object]]) -> None:
    url, _ = http_server
    port = int(url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as session:
        checker = Checker(remote=None, session=session)  # type: ignore[arg-type]
        assert (await checker.check("h", model.TcpCheck(address="127.0.0.1", port=port))).ok
        closed = await checker.check("h", model.TcpCheck(address="127.0.0.1", port=1, timeout=1))
        assert not closed.ok


async def test_until_healthy_needs_consecutive_passes_and_the_target_version(
    http_server: tuple[str, dict[str, object]],
) -> None:
    url, state = http_server

    async def fast(_: float) -> None:
        await asyncio.sleep(0)

    health = model.Health(
        checks=(model.HttpCheck(url=f"{url}/health"),), passes=3, interval=0.01, deadline=0.5
    )
    probe = model.VersionProbe(http=f"{url}/", json_path="release.version")
    async with aiohttp.ClientSession() as session:
        checker = Checker(remote=None, session=session)  # type: ignore[arg-type]
        stale = await checker.until_healthy("h", health, version=probe, target="2.0", sleep=fast)
        assert not stale.ok
        assert "1.0" in stale.detail
        state["version"] = "2.0"
        fresh = await checker.until_healthy("h", health, version=probe, target="2.0", sleep=fast)
        assert fresh.ok, fresh.detail


async def test_http_drain_and_undrain(http_server: tuple[str, dict[str, object]]) -> None:
    url, state = http_server
    drain = model.HttpDrain(
        url=f"{url}/hook/off", undo_url=f"{url}/hook/on", method="POST", timeout=5
    )
    async with aiohttp.ClientSession() as session:
        drainer = Drainer(None, session, {}, _no_api, asyncio.sleep)  # type: ignore[arg-type]
        await drainer.drain("h", drain)
        await drainer.undrain("h", drain)
    assert state["calls"] == [("POST", "/hook/off"), ("POST", "/hook/on")]


async def _no_api(lb: model.LoadBalancerTarget, command: str) -> str:
    raise AssertionError("no load balancer here")


STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,status\n"
    "api,web-1,0,0,{scur},5,UP\n"
    "api,web-2,0,0,1,5,UP\n"
    "api,BACKEND,0,0,2,9,UP\n"
)


def test_sessions_parses_show_stat() -> None:
    assert sessions(STAT.format(scur=3), "api", "web-1") == 3
    assert sessions(STAT.format(scur=3), "api", "nope") is None


async def test_haproxy_drain_waits_for_sessions_then_maint() -> None:
    commands: list[str] = []
    scur = [2, 1, 0]

    async def api(lb: model.LoadBalancerTarget, command: str) -> str:
        commands.append(command)
        if command == "show stat":
            return STAT.format(scur=scur[0] if len(scur) == 1 else scur.pop(0))
        return ""

    lb = model.LoadBalancerTarget("pub", "haproxy", "api", None, None, "127.0.0.1:1")
    drain = model.LoadBalancerDrain("pub", "web-1", "api", timeout=5)
    async with aiohttp.ClientSession() as session:
        drainer = Drainer(None, session, {"pub": lb}, api, lambda _: asyncio.sleep(0))  # type: ignore[arg-type]
        await drainer.drain("web-1", drain)
        await drainer.undrain("web-1", drain)
    sets = [c for c in commands if c.startswith("set")]
    assert sets == [
        "set server api/web-1 state drain",
        "set server api/web-1 state maint",
        "set server api/web-1 state ready",
    ]
    assert commands.count("show stat") >= 3


async def test_haproxy_drain_deadline_and_unknown_server() -> None:
    async def stuck(lb: model.LoadBalancerTarget, command: str) -> str:
        return STAT.format(scur=4) if command == "show stat" else ""

    lb = model.LoadBalancerTarget("pub", "haproxy", "api", None, None, "127.0.0.1:1")
    async with aiohttp.ClientSession() as session:
        drainer = Drainer(None, session, {"pub": lb}, stuck, lambda _: asyncio.sleep(0.01))  # type: ignore[arg-type]
        with pytest.raises(DrainError, match="still has 4 sessions"):
            await drainer.drain(
                "web-1", model.LoadBalancerDrain("pub", "web-1", "api", timeout=0.1)
            )
        with pytest.raises(DrainError, match="no server api/ghost"):
            await drainer.drain("ghost", model.LoadBalancerDrain("pub", "ghost", "api", timeout=1))


async def test_run_drain_waits_until_command_succeeds(make_ssh_hosts: MakeSSHHosts) -> None:
    hosts = await make_ssh_hosts(1)
    drain = model.RunDrain(
        run="touch drained && (sleep 0.3; touch idle) >/dev/null 2>&1 &",
        undo="rm -f drained idle",
        wait_until="test -f idle",
        timeout=5,
    )
    async with SSHPool(hosts.targets(become="none")) as pool, aiohttp.ClientSession() as session:
        drainer = Drainer(pool, session, {}, _no_api, asyncio.sleep)
        await drainer.drain("host-1", drain)
        assert (hosts.host_dir("host-1") / "idle").exists()
        await drainer.undrain("host-1", drain)
        assert not (hosts.host_dir("host-1") / "drained").exists()


async def test_version_probe_maps_a_package_version_to_its_release(
    http_server: tuple[str, dict[str, object]],
) -> None:
    """A real service reports a package version; `releases` says which release it is."""
    url, state = http_server
    releases = (("2026.1", ">=35,<36"), ("2026.2", ">=39,<40"))
    probe = model.VersionProbe(http=f"{url}/", json_path="release.version", releases=releases)
    health = model.Health(checks=(), passes=1, interval=0.01, deadline=0.05)

    async def fast(_: float) -> None:
        await asyncio.sleep(0)

    async with aiohttp.ClientSession() as session:
        checker = Checker(remote=None, session=session)  # type: ignore[arg-type]
        state["version"] = "39.0.0"
        assert await checker.version("h", probe) == "39.0.0"
        ok = await checker.until_healthy("h", health, version=probe, target="2026.2", sleep=fast)
        assert ok.ok, ok.detail
        assert "39.0.0 (2026.2)" in ok.detail
        # a hotfix targets the package version itself
        assert (
            await checker.until_healthy("h", health, version=probe, target="39.0.0", sleep=fast)
        ).ok
        state["version"] = "38.0.0"  # an intermediate release: neither
        stale = await checker.until_healthy("h", health, version=probe, target="2026.2", sleep=fast)
        assert not stale.ok
        assert "reports version 38.0.0, want '2026.2'" in stale.detail
    assert probe.reports("35.1.0", "2026.1")
    assert not probe.reports("not a version", "2026.1")
    assert not probe.reports(None, "2026.1")


# --- the run action with supervised commands -----------------------------------------


class RecordingRemote:
    """Answers `run` from a list of results and remembers the run ids it was given."""

    def __init__(self, *results: CommandResult) -> None:
        self.results = list(results)
        self.run_ids: list[str | None] = []

    async def connect(self, host: str) -> None:
        pass

    async def run(
        self,
        host: str,
        command: str,
        *,
        timeout: float | None = None,
        become: bool = False,
        on_line: Callable[[str], None] | None = None,
        run_id: str | None = None,
    ) -> CommandResult:
        self.run_ids.append(run_id)
        return self.results.pop(0)

    async def read_file(self, host: str, path: str) -> str | None:
        return None

    async def write_file(self, host: str, path: str, text: str) -> None:
        pass


async def _no_sleep(_: float) -> None:
    pass


async def test_each_repeat_gets_its_own_run_id() -> None:
    remote = RecordingRemote(
        CommandResult(1, "", 0.0, False),
        CommandResult(1, "", 0.0, False),
        CommandResult(0, "", 0.0, False),
    )
    action = model.RunAction("migrate", repeat_while_exit=(1,), repeat_interval=0)
    outcome = await run_action(
        remote, "h", action, become=False, sleep=_no_sleep, run_id="u1/migrate.1"
    )
    assert outcome.ok and outcome.attempts == 3
    assert remote.run_ids == ["u1/migrate.1", "u1/migrate.1~2", "u1/migrate.1~3"]
    plain = RecordingRemote(CommandResult(0, "", 0.0, False))
    await run_action(plain, "h", model.RunAction("x"), become=False, sleep=_no_sleep)
    assert plain.run_ids == [None]


async def test_a_dead_supervisor_is_the_reason_of_the_failure() -> None:
    why = "the supervisor on h died: the host rebooted while the command ran (it was not run again)"
    remote = RecordingRemote(CommandResult(None, "half", 0.0, False, reason=why))
    outcome = await run_action(
        remote, "h", model.RunAction("x"), become=False, sleep=_no_sleep, run_id="u1/x.1"
    )
    assert not outcome.ok
    assert (outcome.exit_status, outcome.reason, outcome.output) == (None, why, "half")


async def test_a_resumed_repeat_chain_replays_its_records(make_ssh_hosts: MakeSSHHosts) -> None:
    """A daemon restarted in the middle of `repeat_while_exit`: the same run id
    gets the recorded repeats back and runs none of them again."""
    hosts = await make_ssh_hosts(1)
    count = hosts.host_dir("host-1") / "count"
    command = (
        "n=$(($(cat count 2>/dev/null || echo 0) + 1)); echo $n > count; "
        'echo "run $n"; [ $n -ge 3 ]'
    )
    action = model.RunAction(command, repeat_while_exit=(1,), repeat_interval=0)
    outcomes = []
    for _ in range(2):  # the second pool is the restarted daemon
        async with SSHPool(hosts.targets(become="none")) as pool:
            outcomes.append(
                await run_action(
                    pool, "host-1", action, become=False, sleep=_no_sleep, run_id="u1/migrate.1"
                )
            )
    assert [(o.ok, o.attempts, o.output) for o in outcomes] == [(True, 3, "run 3")] * 2
    assert count.read_text() == "3\n"
