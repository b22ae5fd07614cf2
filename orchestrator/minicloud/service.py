"""One service process: `python -m orchestrator.minicloud.service SERVICE`.

Reads its host's config, release and pin once, at start, then serves on its
loopback port until SIGTERM (or SIGINT): then it stops accepting, finishes
the requests in flight and exits 0. `minicloud-ctl start` runs this detached.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from orchestrator.minicloud import MinicloudError
from orchestrator.minicloud.layout import (
    LOOPBACK,
    SERVICES,
    faults,
    host_dir,
    read_host_config,
    read_release,
)
from orchestrator.minicloud.services import Runtime, build_app

SHUTDOWN_TIMEOUT = 5.0  # in-flight requests get this long after SIGTERM
log = logging.getLogger("minicloud")


async def serve(rt: Runtime) -> None:
    runner = web.AppRunner(
        build_app(rt), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = rt.config.port(rt.service)
        await web.TCPSite(runner, LOOPBACK, port).start()
        log.info(
            "%s %s on %s: listening on %s:%d (pin %s)",
            rt.service,
            rt.release,
            rt.config.host,
            LOOPBACK,
            port,
            rt.pin or "none",
        )
        await stop.wait()
        log.info("stopping: no new connections, finishing requests in flight")
    finally:
        await runner.cleanup()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    if len(args) != 1 or args[0] not in SERVICES:
        log.error("usage: python -m orchestrator.minicloud.service {%s}", "|".join(SERVICES))
        return 2
    service = args[0]
    try:
        directory = host_dir()
        config = read_host_config(directory)
        release = read_release(directory)
        config.port(service)
    except MinicloudError as exc:
        log.error("%s", exc)
        return 2
    if f"crash-{release}" in faults(directory):
        log.error("injected fault crash-%s: exiting", release)
        return 1
    try:
        asyncio.run(serve(Runtime(service, config, release)))
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
