"""Where the real servers live on this machine, and what to say when they do not.

Under ``CI=true`` a missing server fails the test (`.ci/run` installs them);
on a developer machine the test skips with the command that installs them.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
from dataclasses import dataclass
from typing import NoReturn

import pytest

PACKAGES = "openssh-server openssh-client haproxy libnss-wrapper sudo"
INSTALL_HINT = f"install with: sudo apt-get install -y {PACKAGES} (what .ci/run does)"


@dataclass(frozen=True, slots=True)
class Servers:
    sshd: str
    sftp_server: str
    ssh_keygen: str
    nss_wrapper: str
    haproxy: str


def find_program(name: str, *candidates: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


def _first(*patterns: str) -> str | None:
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[0]
    return None


def find_servers() -> tuple[Servers | None, list[str]]:
    """The programs the tier runs, or the names of those missing."""
    found = {
        # sshd re-executes itself, so it must be started by its absolute path
        "sshd": find_program("sshd", "/usr/sbin/sshd", "/usr/local/sbin/sshd"),
        "sftp_server": _first(
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
            "/usr/lib/ssh/sftp-server",
            "/usr/libexec/sftp-server",
        ),
        "ssh_keygen": find_program("ssh-keygen", "/usr/bin/ssh-keygen"),
        # sshd reads each fixture host's own passwd entry (home = the host's
        # directory) through nss_wrapper: no system user is created
        "nss_wrapper": _first(
            "/usr/lib/*/libnss_wrapper.so",
            "/usr/lib64/libnss_wrapper.so",
            "/usr/lib/libnss_wrapper.so",
        ),
        "haproxy": find_program("haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"),
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        return None, missing
    return Servers(**{k: str(v) for k, v in found.items()}), []


def missing_parts(message: str) -> NoReturn:
    """Skip the test (a developer machine) or fail it (CI=true) with `message`."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


async def stop_process(process: asyncio.subprocess.Process | None, deadline: float) -> None:
    """SIGTERM, and SIGKILL if it is still there after `deadline` seconds."""
    if process is None or process.returncode is not None:
        return
    process.terminate()
    try:
        async with asyncio.timeout(deadline):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


def require_servers() -> Servers:
    """The servers, or skip (developer machine) / fail (CI=true) naming what is missing."""
    servers, missing = find_servers()
    if servers is not None:
        return servers
    missing_parts(f"integration tier needs {', '.join(missing)}; {INSTALL_HINT}")
