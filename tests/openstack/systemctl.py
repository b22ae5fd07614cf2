"""`systemctl` for the tier's hosts: the few verbs a playbook uses, on the host's own units.

A tier host is a directory served by its own sshd, with no systemd inside;
this stands in for it, so the shipped playbooks run their real commands
(``systemctl restart ironic-conductor``) unchanged. It does what systemd
does for a ``Type=simple`` service and no more:

* units are ``$HOME/etc/units/NAME.service`` with ``[Service] ExecStart=``
  (relative paths are relative to ``$HOME``) and optional ``TimeoutStopSec``;
* ``start`` runs ExecStart in a session of its own, stdout and stderr
  appended to ``$HOME/log/NAME.log``, its pid in ``$HOME/run/NAME.pid``;
  the program path is resolved (symlinks followed) when the service
  starts, as the kernel does when it runs it, so the command line of a
  running service names the virtualenv whose code it runs, whatever a
  ``current`` link points at since;
* ``stop`` sends SIGTERM (ironic's graceful shutdown), waits up to
  TimeoutStopSec (default 90 s, as systemd), then SIGKILL; ``restart`` is
  stop then start;
* ``is-active`` prints ``active`` (exit 0) or ``inactive`` (exit 3);
* ``show --property MainPID --value NAME`` prints the pid, or 0.

Written out by the tier as an executable with this Python as interpreter.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_STOP_TIMEOUT = 90.0


def _home() -> Path:
    return Path(os.environ.get("HOME") or os.getcwd())


def _unit(name: str) -> configparser.ConfigParser:
    path = _home() / "etc" / "units" / f"{name}.service"
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(path):
        raise SystemExit(f"Unit {name}.service not found.")
    return parser


def _pid_file(name: str) -> Path:
    return _home() / "run" / f"{name}.pid"


def _main_pid(name: str) -> int | None:
    try:
        pid = int(_pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except (OSError, ProcessLookupError):
        return None
    if stat.rpartition(")")[2].split()[0] == "Z":  # a zombie is not running
        return None
    return pid


def start(name: str) -> int:
    if _main_pid(name) is not None:
        return 0
    service = _unit(name)["Service"]
    argv = shlex.split(service["ExecStart"])
    program = Path(argv[0])
    argv[0] = str((program if program.is_absolute() else _home() / program).resolve())
    (_home() / "run").mkdir(exist_ok=True)
    (_home() / "log").mkdir(exist_ok=True)
    with (_home() / "log" / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=_home(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    _pid_file(name).write_text(f"{process.pid}\n")
    return 0


def stop(name: str) -> int:
    pid = _main_pid(name)
    if pid is None:
        _pid_file(name).unlink(missing_ok=True)
        return 0
    timeout = float(_unit(name)["Service"].get("TimeoutStopSec", DEFAULT_STOP_TIMEOUT))
    # the whole session: a service's workers go with it, as in its cgroup
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _main_pid(name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if _main_pid(name) is not None:
        os.killpg(pid, signal.SIGKILL)
        while _main_pid(name) is not None:
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # workers that outlived their master
    _pid_file(name).unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    if len(args) < 2:
        print("usage: systemctl start|stop|restart|is-active|show UNIT", file=sys.stderr)
        return 2
    verb, name = args[0], args[-1].removesuffix(".service")
    if verb == "start":
        return start(name)
    if verb == "stop":
        return stop(name)
    if verb == "restart":
        stop(name)
        return start(name)
    if verb == "is-active":
        active = _main_pid(name) is not None
        print("active" if active else "inactive")
        return 0 if active else 3
    if verb == "show":
        # `show --property MainPID --value NAME` (the only property kept)
        print(_main_pid(name) or 0)
        return 0
    print(f"systemctl: unknown verb {verb!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
