"""The three services as aiohttp apps; the release read at start picks the code path.

* conductor: the only database writer. RPC `create_instance`, `get_instance`,
  `report_state`. A 1.0 conductor cannot produce a 2.0 object.
* compute: RPC `build_instance`.
* api: `POST /instances`, `GET /instances/{id}`, through the conductors.

Every service answers `GET /` with its version and `GET /healthcheck`
(500 when `etc/fault` holds `unhealthy-2.0` and it runs 2.0), and heartbeats
its `services` row every 0.5 s: a conductor directly, the others through the
`report_state` RPC.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from orchestrator.minicloud import db, rpc
from orchestrator.minicloud.layout import LOOPBACK, HostConfig, faults

HEARTBEAT_INTERVAL = 0.5
BUILD_TIMEOUT = 5.0
CONDUCTOR_TIMEOUT = 10.0
log = logging.getLogger("minicloud")


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a service process fixed at start: its release and its pin."""

    service: str
    config: HostConfig
    release: str

    @property
    def pin(self) -> str | None:
        return self.config.pin

    @property
    def sends(self) -> str:
        return rpc.sends(self.release, self.pin)

    def speaks(self, version: str | None) -> bool:
        return version in rpc.SPEAKS[self.release]


class ServiceError(Exception):
    """Turned into an error answer by the handler that catches it."""

    def __init__(self, status: int, error: str) -> None:
        self.status, self.error = status, error
        super().__init__(error)


RUNTIME = web.AppKey("runtime", Runtime)
SESSION = web.AppKey("session", aiohttp.ClientSession)
CONDUCTORS = web.AppKey("conductors", rpc.Pool)
TURN: web.AppKey[itertools.count[int]] = web.AppKey("turn")

Method = Callable[[web.Application, rpc.Message], Awaitable[Any]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# --- objects: the shape depends on the object version asked for ---------------


def to_object(instance: db.Instance, object_version: str | None) -> dict[str, Any]:
    if object_version == "2.0":
        return {"id": instance.id, "name": instance.name, "placement": {"host": instance.host}}
    return {"id": instance.id, "name": instance.name, "host": instance.host}


def from_object(obj: Any, object_version: str) -> dict[str, Any]:
    try:
        host = obj["placement"]["host"] if object_version == "2.0" else obj["host"]
        return {"id": obj["id"], "name": obj["name"], "host": host}
    except (KeyError, TypeError):
        raise ServiceError(502, f"conductor sent a malformed {object_version} object") from None


# --- common routes and heartbeat ------------------------------------------------


async def version(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    return web.json_response(
        {"version": rt.release, "service": rt.service, "host": rt.config.host, "pin": rt.pin}
    )


async def healthcheck(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if rt.release == "2.0" and "unhealthy-2.0" in faults(rt.config.directory):
        return error(500, "injected fault: unhealthy-2.0")
    return web.json_response({"status": "ok", "version": rt.release})


async def heartbeat_once(app: web.Application) -> None:
    rt = app[RUNTIME]
    port = rt.config.port(rt.service)
    if rt.service == "conductor":
        await asyncio.to_thread(
            db.report_state,
            rt.config.db,
            binary=rt.service,
            host=rt.config.host,
            version=rt.release,
            pin=rt.pin,
            port=port,
        )
    else:
        args = {
            "binary": rt.service,
            "host": rt.config.host,
            "version": rt.release,
            "pin": rt.pin,
            "port": port,
        }
        await app[CONDUCTORS].call(rpc.Message(rt.sends, "report_state", args), timeout=2.0)


async def _heartbeats(app: web.Application) -> None:
    failing = False
    while True:
        try:
            await heartbeat_once(app)
            if failing:
                log.info("heartbeat recorded again")
            failing = False
        except (rpc.Unreachable, rpc.RemoteError, rpc.RPCTimeout, sqlite3.Error) as exc:
            if not failing:
                log.warning("heartbeat failed: %s", exc)
            failing = True
        await asyncio.sleep(HEARTBEAT_INTERVAL)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    async with rpc.client_session() as session:
        app[SESSION] = session
        if rt.service != "conductor":
            app[CONDUCTORS] = rpc.Pool(session, rt.config.conductor_urls)
        task = asyncio.create_task(_heartbeats(app))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _receive(request: web.Request) -> rpc.Message | web.Response:
    rt = request.app[RUNTIME]
    try:
        message = rpc.Message.from_json(await request.json())
    except ValueError as exc:
        return error(400, f"bad RPC message: {exc}")
    if not rt.speaks(message.version):
        return error(409, f"unsupported RPC version {message.version}")
    return message


# --- conductor ----------------------------------------------------------------


async def create_instance(app: web.Application, message: rpc.Message) -> Any:
    rt, session = app[RUNTIME], app[SESSION]
    name = message.args.get("name")
    if not isinstance(name, str) or not name:
        raise ServiceError(400, "create_instance needs a non-empty 'name'")
    computes = await asyncio.to_thread(db.live_computes, rt.config.db)
    if not computes:
        raise ServiceError(503, "no compute service is alive")
    turn: itertools.count[int] = app[TURN]
    start = next(turn)
    build = rpc.Message(rt.sends, "build_instance", {"name": name})
    for i in range(len(computes)):
        compute = computes[(start + i) % len(computes)]
        try:
            await rpc.call(session, f"http://{LOOPBACK}:{compute.port}", build, BUILD_TIMEOUT)
        except rpc.Unreachable:
            continue  # restarting: its heartbeat is still fresh; try the next one
        except (rpc.RemoteError, rpc.RPCTimeout) as exc:
            raise ServiceError(502, f"compute {compute.host}: {exc}") from None
        host = compute.host
        break
    else:
        raise ServiceError(503, "no compute service is reachable")
    # 1.0 knows only instances.host; 2.0 writes placements, and the old column
    # too while pinned so that 1.0 conductors can still read what it wrote
    legacy = rt.release == "1.0" or rt.sends == "1.0"
    placement = rt.release == "2.0"
    instance_id = await asyncio.to_thread(
        db.create_instance, rt.config.db, name, host, legacy=legacy, placement=placement
    )
    return to_object(db.Instance(instance_id, name, host), message.object_version)


async def get_instance(app: web.Application, message: rpc.Message) -> Any:
    rt = app[RUNTIME]
    instance_id = message.args.get("id")
    if not isinstance(instance_id, int):
        raise ServiceError(400, "get_instance needs an integer 'id'")
    read = db.get_instance_legacy if rt.release == "1.0" else db.get_instance
    instance = await asyncio.to_thread(read, rt.config.db, instance_id)
    return None if instance is None else to_object(instance, message.object_version)


async def report_state(app: web.Application, message: rpc.Message) -> Any:
    a = message.args
    if not all(isinstance(a.get(k), str) for k in ("binary", "host", "version")):
        raise ServiceError(400, "report_state needs 'binary', 'host' and 'version'")
    port = a.get("port") if isinstance(a.get("port"), int) else None
    pin = a.get("pin") if isinstance(a.get("pin"), str) else None
    await asyncio.to_thread(
        db.report_state,
        app[RUNTIME].config.db,
        binary=a["binary"],
        host=a["host"],
        version=a["version"],
        pin=pin,
        port=port,
    )
    return {}


CONDUCTOR_METHODS: dict[str, Method] = {
    "create_instance": create_instance,
    "get_instance": get_instance,
    "report_state": report_state,
}


async def conductor_rpc(request: web.Request) -> web.Response:
    message = await _receive(request)
    if isinstance(message, web.Response):
        return message
    rt = request.app[RUNTIME]
    if message.object_version is not None and not rt.speaks(message.object_version):
        return error(
            409, f"object version {message.object_version} unknown: upgrade conductors first"
        )
    method = CONDUCTOR_METHODS.get(message.method)
    if method is None:
        return error(400, f"unknown method {message.method!r}")
    try:
        result = await method(request.app, message)
    except ServiceError as exc:
        return error(exc.status, exc.error)
    except sqlite3.Error as exc:
        log.warning("%s failed: database: %s", message.method, exc)
        return error(500, f"database: {exc}")
    return web.json_response({"result": result})


# --- compute ------------------------------------------------------------------


async def compute_rpc(request: web.Request) -> web.Response:
    message = await _receive(request)
    if isinstance(message, web.Response):
        return message
    if message.method != "build_instance":
        return error(400, f"unknown method {message.method!r}")
    name = message.args.get("name")
    if not isinstance(name, str) or not name:
        return error(400, "build_instance needs a non-empty 'name'")
    return web.json_response({"result": {"host": request.app[RUNTIME].config.host}})


# --- api ------------------------------------------------------------------------


async def _ask_conductor(app: web.Application, method: str, args: dict[str, Any]) -> Any:
    rt = app[RUNTIME]
    message = rpc.Message(rt.sends, method, args, object_version=rt.release)
    try:
        return await app[CONDUCTORS].call(message, CONDUCTOR_TIMEOUT)
    except rpc.Unreachable as exc:
        raise ServiceError(503, str(exc)) from None
    except rpc.RPCTimeout as exc:
        raise ServiceError(504, str(exc)) from None
    except rpc.RemoteError as exc:
        status = exc.status if exc.status in (400, 404) else 502
        raise ServiceError(status, f"conductor: {exc.error}") from None


async def api_create(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return error(400, "the body must be JSON")
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        return error(400, "'name' must be a non-empty string")
    try:
        obj = await _ask_conductor(request.app, "create_instance", {"name": name})
        return web.json_response(from_object(obj, request.app[RUNTIME].release), status=201)
    except ServiceError as exc:
        return error(exc.status, exc.error)


async def api_get(request: web.Request) -> web.Response:
    try:
        instance_id = int(request.match_info["id"])
    except ValueError:
        return error(404, "no such instance")
    try:
        obj = await _ask_conductor(request.app, "get_instance", {"id": instance_id})
        if obj is None:
            return error(404, f"no instance {instance_id}")
        return web.json_response(from_object(obj, request.app[RUNTIME].release))
    except ServiceError as exc:
        return error(exc.status, exc.error)


def build_app(rt: Runtime) -> web.Application:
    app = web.Application()
    app[RUNTIME] = rt
    app[TURN] = itertools.count()
    app.router.add_get("/", version)
    app.router.add_get("/healthcheck", healthcheck)
    if rt.service == "conductor":
        app.router.add_post("/rpc", conductor_rpc)
    elif rt.service == "compute":
        app.router.add_post("/rpc", compute_rpc)
    else:
        app.router.add_post("/instances", api_create)
        app.router.add_get("/instances/{id}", api_get)
    app.cleanup_ctx.append(_lifecycle)
    return app
