"""`minicloud-ctl` on one host: start/stop/restart, status, health, version,
staging and installing releases, the injected faults, and its usage errors — as
real commands in the host's directory."""

from __future__ import annotations

import configparser
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.minicloud import MinicloudError, commands
from orchestrator.minicloud.control import kill_leftovers, run
from orchestrator.minicloud.layout import (
    Cloud,
    create_cloud,
    read_host_config,
    read_release,
    staged_releases,
)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    cloud = create_cloud(tmp_path / "cloud", conductors=1, apis=1, computes=1)
    try:
        yield cloud
    finally:
        kill_leftovers(cloud)


async def ctl(cloud: Cloud, args: str, host: str = "cmp-1") -> tuple[int, str]:
    result = await run(cloud, host, f"minicloud-ctl {args}", timeout=30)
    return result.exit_status, result.output.strip()


async def test_start_status_version_health_stop(cloud: Cloud) -> None:
    code, out = await ctl(cloud, "start compute")
    assert code == 0
    assert out.startswith("compute 1.0 started (pid ")
    assert await ctl(cloud, "start all") == (0, out.replace("1.0 started", "already running"))

    code, out = await ctl(cloud, "status --json")
    (row,) = json.loads(out)
    assert row | {"pid": 0} == {
        "service": "compute",
        "host": "cmp-1",
        "running": True,
        "pid": 0,
        "release_running": "1.0",
        "release_installed": "1.0",
        "pin_running": None,
        "pin_configured": None,
    }
    assert await ctl(cloud, "version compute") == (0, "1.0")
    assert await ctl(cloud, "health compute") == (0, "compute healthy")

    code, out = await ctl(cloud, "stop all")
    assert (code, out) == (0, f"compute stopped (pid {row['pid']})")
    assert await ctl(cloud, "stop compute") == (0, "compute not running")
    code, out = await ctl(cloud, "version compute")
    assert code == 1
    assert "compute does not answer" in out
    assert not (cloud.host("cmp-1").directory / "run/compute.pid").exists()


async def test_installed_release_runs_after_restart_and_faults_bite(cloud: Cloud) -> None:
    directory = cloud.host("cmp-1").directory
    (directory / "etc/fault").write_text("unhealthy-2.0\n")
    await ctl(cloud, "start compute")
    assert await ctl(cloud, "health compute") == (0, "compute healthy")  # 1.0 is fine

    assert await ctl(cloud, "install 2.0") == (
        0,
        "cmp-1: installed 2.0 (was 1.0); restart services to run it",
    )
    code, out = await ctl(cloud, "status")
    assert "1.0     2.0" in out
    assert "(restart to apply)" in out
    assert await ctl(cloud, "version compute") == (0, "1.0")

    assert (await ctl(cloud, "restart compute"))[0] == 0
    assert await ctl(cloud, "version compute") == (0, "2.0")
    code, out = await ctl(cloud, "health compute")
    assert code == 1
    assert "injected fault: unhealthy-2.0" in out

    (directory / "etc/fault").write_text("crash-2.0\n")
    code, out = await ctl(cloud, "restart compute")
    assert code == 1
    assert "compute exited with status 1 while starting" in out
    assert "injected fault crash-2.0: exiting" in out  # the tail of its log
    assert json.loads((await ctl(cloud, "status --json"))[1])[0]["running"] is False


async def test_staging_puts_2_0_beside_1_0_and_restarts_nothing(cloud: Cloud) -> None:
    directory = cloud.host("cmp-1").directory
    assert (await ctl(cloud, "start compute"))[0] == 0
    pid = json.loads((await ctl(cloud, "status --json"))[1])[0]["pid"]
    assert staged_releases(directory) == ("1.0",)

    assert await ctl(cloud, "stage 2.0") == (
        0,
        "cmp-1: staged 2.0 in releases/2.0 (on the host: 1.0, 2.0); services still point at 1.0",
    )
    assert await ctl(cloud, "stage 2.0") == (0, "cmp-1: 2.0 already staged; services point at 1.0")
    assert staged_releases(directory) == ("1.0", "2.0")
    assert os.access(directory / "releases/2.0/bin/minicloud-manage", os.X_OK)
    assert read_release(directory) == "1.0"
    (row,) = json.loads((await ctl(cloud, "status --json"))[1])
    assert (row["pid"], row["release_running"], row["release_installed"]) == (pid, "1.0", "1.0")
    assert "(restart to apply)" not in (await ctl(cloud, "status"))[1]
    # staged is not installed: a restart still runs what the host points at
    assert (await ctl(cloud, "restart compute"))[0] == 0
    assert await ctl(cloud, "version compute") == (0, "1.0")

    data = await commands.status_data(cloud.directory)
    assert {name: (h["installed"], h["staged"]) for name, h in data["hosts"].items()} == {
        "api-1": ("1.0", ["1.0"]),
        "cmp-1": ("1.0", ["1.0", "2.0"]),
        "ctl-1": ("1.0", ["1.0"]),
    }
    out_text = io.StringIO()
    assert await commands.status(cloud.directory, as_json=False, out=out_text) == 0
    assert "  cmp-1    compute    installed 1.0 (staged 1.0,2.0)  pin -\n" in out_text.getvalue()
    assert (
        "  service compute   on cmp-1    running release 1.0 (installed 1.0) "
        "pin running - configured -\n"
    ) in out_text.getvalue()
    # a pin written and not restarted: the status says so
    config = directory / "etc" / "minicloud.conf"
    original = config.read_text()
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(original)
    parser.set("upgrade_levels", "compute", "1.0")
    with config.open("w") as file:
        parser.write(file)
    out_text = io.StringIO()
    assert await commands.status(cloud.directory, as_json=False, out=out_text) == 0
    assert "pin running - configured 1.0  (restart to apply)\n" in out_text.getvalue()
    config.write_text(original)

    # install points the services at it (staging it if need be); both stay on disk
    assert (await ctl(cloud, "install 2.0"))[0] == 0
    assert (await ctl(cloud, "install 1.0"))[0] == 0
    assert staged_releases(directory) == ("1.0", "2.0")


@pytest.mark.parametrize("command", ["install", "stage"])
async def test_a_hanging_install_is_a_command_that_never_returns(
    cloud: Cloud, command: str
) -> None:
    (cloud.host("cmp-1").directory / "etc/fault").write_text("hang-install-2.0\n")

    with pytest.raises(MinicloudError, match="still running after 1s"):
        await run(cloud, "cmp-1", f"minicloud-ctl {command} 2.0", timeout=1)
    assert (cloud.host("cmp-1").directory / "release").read_text() == "1.0\n"
    assert staged_releases(cloud.host("cmp-1").directory) == ("1.0",)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("start api", "host cmp-1 does not run 'api' (it runs compute)"),
        ("start nova", "unknown service 'nova'; one of conductor, api, compute or 'all'"),
        ("install 3.0", "unknown release '3.0'; one of 1.0, 2.0"),
        ("stage 3.0", "unknown release '3.0'; one of 1.0, 2.0"),
    ],
)
async def test_usage_errors_exit_2(cloud: Cloud, args: str, message: str) -> None:
    assert await ctl(cloud, args) == (2, f"minicloud-ctl: {message}")


async def test_the_host_is_the_working_directory_or_host_dir(cloud: Cloud) -> None:
    result = await run(cloud, "cmp-1", "cd .. && minicloud-ctl status")
    assert result.exit_status == 1
    assert "is not a minicloud host directory (no etc/minicloud.conf)" in result.output

    directory = cloud.host("ctl-1").directory
    result = await run(cloud, "cmp-1", f"cd / && HOST_DIR={directory} minicloud-ctl status")
    assert result.exit_status == 0
    assert result.output.startswith("SERVICE")
    assert "conductor  stopped" in result.output
    assert read_host_config(directory).conductor_urls == (
        f"http://127.0.0.1:{cloud.host('ctl-1').ports['conductor']}",
    )
    assert os.access(cloud.bin_dir / "minicloud-manage", os.X_OK)
