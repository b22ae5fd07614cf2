"""`minicloud-ctl`: install a release, start/stop services, report status, on one host.

```
minicloud-ctl stage 1.0|2.0         put the release's code in releases/R beside the
                                    others; what runs is untouched
minicloud-ctl install 1.0|2.0       stage it if need be and point the services at it
                                    (the `release` file); restart to run it
minicloud-ctl start|stop|restart SERVICE|all
minicloud-ctl status [--json]
minicloud-ctl health SERVICE        exit 0 when GET /healthcheck answers 200
minicloud-ctl version SERVICE       the running service's version (GET /)
minicloud-ctl manage ...            = minicloud-manage ... (see manage.py)
```

Releases sit side by side as openstack-ansible's venvs do (see `layout`), so
the new release's `releases/2.0/bin/minicloud-manage` can sync the schema
while every service still runs 1.0.

The host is the working directory (or $HOST_DIR). `start` detaches the
service into its own session, records its pid and waits until it answers;
`stop` sends SIGTERM (graceful) and escalates to SIGKILL after a deadline.
Deliberately free of aiohttp: a command starts in a few milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.minicloud import MinicloudError, manage
from orchestrator.minicloud.layout import (
    LOOPBACK,
    RELEASES,
    SERVICES,
    HostConfig,
    faults,
    host_dir,
    read_host_config,
    read_release,
    stage_release,
    staged_releases,
    write_release,
)

READY_DEADLINE = 10.0
STOP_DEADLINE = 15.0
MODULE = "orchestrator.minicloud.service"


class CommandFailed(MinicloudError):
    """The command ran and did not achieve its effect (exit 1)."""


class Usage(MinicloudError):
    exit_code = 2


# --- processes ------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an unreaped zombie is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _ours(pid: int, service: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: trust the pid file
    return MODULE.encode() in cmdline and service.encode() in cmdline


def pid_file(config: HostConfig, service: str) -> Path:
    return config.directory / "run" / f"{service}.pid"


def running_pid(config: HostConfig, service: str) -> int | None:
    try:
        pid = int(pid_file(config, service).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) and _ours(pid, service) else None


def _get(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    """GET a JSON document: (status, body or None). Raises OSError when nothing
    answers, or something that is not an HTTP server does."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _json(exc.read())
    except http.client.HTTPException as exc:
        raise OSError(f"{url}: not an HTTP answer: {exc!r}") from None


def _json(data: bytes) -> Any:
    try:
        return json.loads(data or b"null")
    except ValueError:
        return None


def _url(config: HostConfig, service: str, path: str = "/") -> str:
    return f"http://{LOOPBACK}:{config.port(service)}{path}"


def _log_tail(config: HostConfig, service: str, lines: int = 15) -> str:
    path = config.directory / "log" / f"{service}.log"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def start(config: HostConfig, service: str) -> str:
    pid = running_pid(config, service)
    if pid is not None:
        return f"{service} already running (pid {pid})"
    installed = read_release(config.directory)
    env = dict(os.environ, HOST_DIR=str(config.directory))
    log_path = config.directory / "log" / f"{service}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", MODULE, service],
            cwd=config.directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file(config, service).write_text(f"{process.pid}\n", encoding="ascii")
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pid_file(config, service).unlink(missing_ok=True)
            raise CommandFailed(
                f"{service} exited with status {process.returncode} while starting; "
                f"last lines of its log:\n{_log_tail(config, service)}"
            )
        try:
            status, body = _get(_url(config, service), timeout=0.5)
            if status == 200 and body == body | {
                "version": installed,
                "service": service,
                "host": config.host,
            }:
                return f"{service} {installed} started (pid {process.pid})"
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    process.wait()
    pid_file(config, service).unlink(missing_ok=True)
    raise CommandFailed(
        f"{service} did not answer within {READY_DEADLINE:g}s; last lines of its log:\n"
        f"{_log_tail(config, service)}"
    )


def stop(config: HostConfig, service: str) -> str:
    pid = running_pid(config, service)
    if pid is None:
        pid_file(config, service).unlink(missing_ok=True)
        return f"{service} not running"
    os.kill(pid, signal.SIGTERM)
    how = "stopped"
    if not _wait_gone(pid, STOP_DEADLINE):
        os.kill(pid, signal.SIGKILL)
        how = f"killed after {STOP_DEADLINE:g}s"
        if not _wait_gone(pid, 5.0):
            raise CommandFailed(f"{service} (pid {pid}) survived SIGKILL")
    pid_file(config, service).unlink(missing_ok=True)
    return f"{service} {how} (pid {pid})"


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return not _alive(pid)


# --- reports --------------------------------------------------------------------


def status(config: HostConfig) -> list[dict[str, Any]]:
    installed = read_release(config.directory)
    rows = []
    for service in config.roles:
        pid = running_pid(config, service)
        running: Any = None
        if pid is not None:
            try:
                _, running = _get(_url(config, service))
            except OSError:
                running = None
        running = running if isinstance(running, dict) else {}
        rows.append(
            {
                "service": service,
                "host": config.host,
                "running": pid is not None,
                "pid": pid,
                "release_running": running.get("version"),
                "release_installed": installed,
                "pin_running": running.get("pin"),
                "pin_configured": config.pin,
            }
        )
    return rows


def _status_text(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'SERVICE':<10} {'STATE':<8} {'PID':>7}  RUNNING INSTALLED PIN"]
    for r in rows:
        note = ""
        if r["running"] and (
            r["release_running"] != r["release_installed"]
            or r["pin_running"] != r["pin_configured"]
        ):
            note = "  (restart to apply)"
        lines.append(
            f"{r['service']:<10} {'running' if r['running'] else 'stopped':<8} "
            f"{r['pid'] or '-':>7}  {r['release_running'] or '-':<7} "
            f"{r['release_installed']:<9} {r['pin_configured'] or '-'}{note}"
        )
    return "\n".join(lines)


def _services(config: HostConfig, name: str) -> tuple[str, ...]:
    if name == "all":
        return config.roles
    if name not in SERVICES:
        raise Usage(f"unknown service '{name}'; one of {', '.join(SERVICES)} or 'all'")
    if name not in config.roles:
        raise Usage(f"host {config.host} does not run '{name}' (it runs {', '.join(config.roles)})")
    return (name,)


def _stage(config: HostConfig, release: str) -> bool:
    if release not in RELEASES:
        raise Usage(f"unknown release '{release}'; one of {', '.join(RELEASES)}")
    if f"hang-install-{release}" in faults(config.directory):
        while True:  # injected fault: a command that never returns
            time.sleep(3600)
    return stage_release(config.directory, release)


def stage(config: HostConfig, release: str) -> str:
    """Release `release`'s code on the host, beside the others; nothing restarts."""
    staged = _stage(config, release)
    running = read_release(config.directory)
    if not staged:
        return f"{config.host}: {release} already staged; services point at {running}"
    return (
        f"{config.host}: staged {release} in releases/{release} "
        f"(on the host: {', '.join(staged_releases(config.directory))}); "
        f"services still point at {running}"
    )


def install(config: HostConfig, release: str) -> str:
    _stage(config, release)
    previous = read_release(config.directory)
    write_release(config.directory, release)
    return f"{config.host}: installed {release} (was {previous}); restart services to run it"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicloud-ctl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stage", help="put a release's code beside the others").add_argument("release")
    sub.add_parser("install", help="stage a release, point the services at it").add_argument(
        "release"
    )
    for name in ("start", "stop", "restart"):
        sub.add_parser(name, help=f"{name} a service of this host").add_argument("service")
    sub.add_parser("status", help="services of this host").add_argument(
        "--json", action="store_true"
    )
    sub.add_parser("health", help="exit 0 when healthy").add_argument("service")
    sub.add_parser("version", help="the running version").add_argument("service")
    return parser


def run(argv: list[str]) -> str:
    args = _parser().parse_args(argv)
    config = read_host_config(host_dir())
    if args.command == "stage":
        return stage(config, args.release)
    if args.command == "install":
        return install(config, args.release)
    if args.command == "status":
        rows = status(config)
        return json.dumps(rows, indent=2) if args.json else _status_text(rows)
    services = _services(config, args.service)
    if args.command in ("start", "stop", "restart"):
        out = []
        if args.command != "start":  # stop in reverse role order: conductors last
            out += [stop(config, service) for service in reversed(services)]
        if args.command != "stop":
            out += [start(config, service) for service in services]
        return "\n".join(out)
    (service,) = services
    try:
        code, body = _get(
            _url(config, service, "/healthcheck" if args.command == "health" else "/")
        )
    except OSError as exc:
        raise CommandFailed(f"{service} does not answer: {exc}") from None
    if args.command == "version":
        if code != 200 or not isinstance(body, dict):
            raise CommandFailed(f"{service} answered {code}")
        return str(body.get("version"))
    if code != 200:
        raise CommandFailed(f"{service} unhealthy: {code} {json.dumps(body)}")
    return f"{service} healthy"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if Path(sys.argv[0]).name == "minicloud-manage":
        return manage.main(args)
    if args[:1] == ["manage"]:
        return manage.main(args[1:])
    try:
        output = run(args)
    except MinicloudError as exc:
        print(f"minicloud-ctl: {exc}", file=sys.stderr)
        return exc.exit_code
    if output:
        print(output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
