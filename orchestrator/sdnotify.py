"""systemd's readiness protocol (sd_notify), in the few lines it takes: one
datagram per state change to the socket named by $NOTIFY_SOCKET. Without
that variable (not under systemd, or Type= is not notify) nothing is sent.

READY=1 once the daemon listens and has resumed its upgrades; STOPPING=1 on
the first stop signal; WATCHDOG=1 every half of $WATCHDOG_USEC, from the
event loop itself, so a loop that hangs stops the pings and systemd
restarts the daemon.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger("orchestrator.sdnotify")


def notify(state: str) -> bool:
    """Send `state` (``READY=1``...); False when there is nobody to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed", state=state, error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog() -> None:
    """Ping systemd's watchdog until cancelled (returns at once without one)."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
