"""Request handlers. They parse, call the manager, and answer JSON; errors are
raised as the package's exceptions and turned into HTTP answers in one place
(`orchestrator.api.app.error_middleware`)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from orchestrator import model, pipeline
from orchestrator.api import keys
from orchestrator.api.body import BODY, SubmitBody, parse_submit
from orchestrator.api.metrics import CONTENT_TYPE
from orchestrator.api.openapi import IDEMPOTENCY_KEY_PATTERN, SPEC
from orchestrator.daemonconfig import SecretSources
from orchestrator.engine.manager import Upgrade
from orchestrator.engine.status import summary
from orchestrator.errors import ConflictError, UsageError
from orchestrator.pipeline import Source
from orchestrator.plan import Options

IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def compact(data: Any) -> bytes:
    """`data` as the API answers it: compact JSON."""
    return json.dumps(data, separators=(",", ":")).encode()


def json_response(data: Any, status: int = 200, **kwargs: Any) -> web.Response:
    return web.Response(
        body=compact(data),
        status=status,
        content_type="application/json",
        **kwargs,
    )


# --- building a plan from a body (runs in a worker thread) -------------------


def build_plan(body: SubmitBody, sources: SecretSources | None = None) -> model.Plan:
    """The body's plan, through the one input pipeline the CLI uses too; its
    secrets only from where the daemon's configuration allows."""
    inventory = Source.of_text(body.inventory, body.inventory_name)
    if body.playbook is not None:
        playbook = Source.of_text(body.playbook, body.playbook_file)
    else:
        assert body.playbook_name is not None
        playbook = Source.shipped(body.playbook_name, field="playbook_name", where=BODY)
    options = Options(
        to_version=body.to_version,
        from_version=body.from_version,
        on_failure=body.options.on_failure,
    )
    built = pipeline.build(inventory, playbook, options)
    allowed = sources or SecretSources()
    pipeline.check_secret_sources(built, allowed.env, allowed.dirs)
    return built.plan


def plan_data(plan: model.Plan, digest: str) -> dict[str, Any]:
    return {"digest": digest, **model.to_data(plan)}


def plan_bytes(plan: model.Plan, digest: str) -> bytes:
    """The plan as the API answers it (compact JSON, `digest` first)."""
    return compact(plan_data(plan, digest))


async def encoded_plan(up: Upgrade) -> bytes:
    """`up`'s plan as JSON, encoded once, in a worker thread: at 2,000 hosts
    that is 80 ms and 1.3 MB, which the event loop the engines and every
    status read share must not spend on each GET (a plan never changes)."""
    if up.plan_json is None:
        up.plan_json = await asyncio.to_thread(plan_bytes, up.plan, up.digest)
    return up.plan_json


def with_plan(data: dict[str, Any], plan: bytes) -> bytes:
    """`data` as compact JSON with the encoded `plan` as its last field."""
    assert data, "the answers that carry a plan have other fields first"
    return compact(data)[:-1] + b',"plan":' + plan + b"}"


def _summary(up: Upgrade) -> dict[str, Any]:
    return summary(up.id, up.plan, up.view, up.digest)


# --- handlers ------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness, and this daemon's role: leader or standby, with the lease's age."""
    role = request.app[keys.ROLE].describe()
    stalled = request.app[keys.MANAGER].stalled()
    if stalled:  # a daemon that cannot journal is not healthy, whatever else it does
        return json_response({"status": "stalled", "stalled": stalled, **role}, status=503)
    stopping = request.app[keys.STOPPING].is_set()
    return json_response({"status": "stopping" if stopping else "ok", **role})


async def openapi(request: web.Request) -> web.Response:
    return json_response(SPEC)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[keys.METRICS].render(request.app[keys.MANAGER], request.app[keys.ROLE])
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def list_upgrades(request: web.Request) -> web.Response:
    ups = sorted(request.app[keys.MANAGER].upgrades.values(), key=lambda u: (u.created_at, u.id))
    return json_response({"upgrades": [_summary(up) for up in ups]})


async def submit(request: web.Request) -> web.Response:
    app = request.app
    if app[keys.STOPPING].is_set():
        raise web.HTTPServiceUnavailable(reason="the daemon is shutting down")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise UsageError("Idempotency-Key must be 1 to 200 printable ASCII characters")
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="send the body as application/json")
    body = parse_submit(await request.read())
    # off the event loop, and no more at once than the machine has cores for
    async with app[keys.PARSE_SLOTS]:
        plan = await asyncio.to_thread(build_plan, body, app[keys.SECRET_SOURCES])
    if body.dry_run:
        digest = plan.digest
        data: dict[str, Any] = {
            "id": None,
            "created": False,
            "dry_run": True,
            "digest": digest,
            "warnings": list(plan.warnings),
            "upgrade": None,
        }
        encoded = await asyncio.to_thread(plan_bytes, plan, digest)
        return web.Response(body=with_plan(data, encoded), content_type="application/json")
    manager = app[keys.MANAGER]
    # one submit at a time: the idempotency key is checked before the journal
    # creates the upgrade, which leases its hosts in the same commit (409 when held)
    async with app[keys.SUBMIT_LOCK]:
        if app[keys.STOPPING].is_set():
            raise web.HTTPServiceUnavailable(reason="the daemon is shutting down")
        up, created = await manager.submit(
            plan, idempotency_key=key, meta={"via": "api", "playbook": plan.name}
        )
    if not created and up.digest != plan.digest:
        raise ConflictError(
            f"Idempotency-Key was first used for upgrade {up.id}, whose plan differs "
            "from this request's; use a new key for a new upgrade"
        )
    data = {
        "id": up.id,
        "created": created,
        "dry_run": False,
        "digest": up.digest,
        "warnings": list(up.plan.warnings),
        "upgrade": _summary(up),
    }
    return web.Response(
        body=with_plan(data, await encoded_plan(up)),
        status=201 if created else 200,
        content_type="application/json",
        headers={"Location": f"/v1/upgrades/{up.id}"},
    )


async def get_upgrade(request: web.Request) -> web.Response:
    body = request.app[keys.MANAGER].status_json(request.match_info["id"])
    return web.Response(body=body, content_type="application/json")


async def get_plan(request: web.Request) -> web.Response:
    up = request.app[keys.MANAGER].get(request.match_info["id"])
    return web.Response(body=await encoded_plan(up), content_type="application/json")


def control(action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST /v1/upgrades/{id}/<action>: journaled by the engine before it answers."""

    async def handle(request: web.Request) -> web.Response:
        manager = request.app[keys.MANAGER]
        up = await manager.control(request.match_info["id"], action, by=who(request))
        return json_response(_summary(up))

    return handle


def control_host(action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST /v1/upgrades/{id}/hosts/{host}/<action>: retry or skip a failed host."""

    async def handle(request: web.Request) -> web.Response:
        manager = request.app[keys.MANAGER]
        info = request.match_info
        up = await manager.control_host(info["id"], action, info["host"], by=who(request))
        return json_response(_summary(up))

    return handle


def who(request: web.Request) -> str:
    """The name of the token that authenticated the request."""
    name: str = request.get(keys.WHO, "default")
    return name
