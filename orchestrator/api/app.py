"""The aiohttp application: routes, the bearer-token check, and the one place
where errors become HTTP answers.

Resources live on the app under typed keys (`orchestrator.api.keys`), and the
manager's lifecycle is tied to the app's with `cleanup_ctx`: the manager
starts (and resumes unfinished upgrades) when the app starts, and closes
when it is cleaned up.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from orchestrator.access import Tokens, required_role
from orchestrator.api import handlers, keys, page, sse
from orchestrator.api.endpoint import ACTIONS, HOST_ACTIONS
from orchestrator.api.feed import Feeds
from orchestrator.api.limits import StreamSlots
from orchestrator.api.metrics import Metrics
from orchestrator.daemonconfig import SecretSources
from orchestrator.engine.manager import UpgradeManager
from orchestrator.errors import ForbiddenError, NotLeaderError, OrchestratorError
from orchestrator.store.role import Role, SoleDaemon

log = structlog.get_logger("orchestrator.api")

MAX_BODY = 8 * 1024 * 1024
PUBLIC = frozenset({"/healthz", "/"})  # and /static/: the page asks for a token itself
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


PROBLEM_TYPE = "urn:rolling-orchestrator:error:"
PROBLEM_JSON = "application/problem+json"


def error_response(
    status: int,
    kind: str,
    message: str,
    problems: list[dict[str, Any]] | None = None,
    *,
    instance: str | None = None,
) -> web.Response:
    """An RFC 9457 problem document: `type` names the error class, `detail`
    says what happened, `problems` (an extension) locates bad input."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = kind
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + kind,
        "title": title,
        "status": status,
        "detail": message,
        "problems": problems or [],
    }
    if instance is not None:
        body["instance"] = instance
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type=PROBLEM_JSON,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as `application/problem+json` (RFC 9457)."""
    try:
        return await handler(request)
    except OrchestratorError as exc:
        problems = [p.to_dict() for p in getattr(exc, "problems", ())]
        if exc.http_status >= 500:
            log.error("request failed", method=request.method, path=request.path, error=str(exc))
        kind = type(exc).__name__
        return error_response(exc.http_status, kind, str(exc), problems, instance=request.path)
    except web.HTTPException as exc:
        if isinstance(exc, web.HTTPTemporaryRedirect):  # a standby's 307 to the leader
            response = error_response(
                exc.status, "Redirect", f"the leader is at {exc.location}", instance=request.path
            )
            response.headers["Location"] = str(exc.location)
            return response
        if exc.status < 400:
            raise
        response = error_response(exc.status, "HTTPError", exc.reason, instance=request.path)
        for header in ("Allow", "WWW-Authenticate"):
            if header in exc.headers:
                response.headers[header] = exc.headers[header]
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("request crashed", method=request.method, path=request.path)
        return error_response(
            500,
            "InternalError",
            "internal error; the daemon log has details",
            instance=request.path,
        )


# documents parsed at once in worker threads: a burst of submits must not
# take every core from the engines and the event loop
PARSE_CONCURRENCY = max(1, min(4, (os.cpu_count() or 1) // 2))


def auth_middleware(tokens: Tokens) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC and not request.path.startswith("/static/"):
            header = request.headers.get("Authorization", "")
            scheme, _, given = header.partition(" ")
            # header bytes that are not UTF-8 arrive as surrogates: hashed as given
            presented = given.strip().encode("utf-8", "surrogateescape")
            token = tokens.identify(presented) if scheme.lower() == "bearer" else None
            if token is None:
                raise web.HTTPUnauthorized(
                    reason="a valid bearer token is required",
                    headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'},
                )
            needed = required_role(request.method, request.path)
            if token.role < needed:
                raise ForbiddenError(
                    f"token '{token.name}' ({token.role.label}) may not {request.method} "
                    f"{request.path}: that needs the {needed.label} role"
                )
            request[keys.WHO] = token.name
        return await handler(request)

    return check


class AccessLogger(AbstractAccessLogger):
    """One structured line per request: method, path (no query), status, time.
    Never headers or bodies: they carry the token and operator input."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round(time * 1000, 1),
            remote=request.remote,
        )

    @property
    def enabled(self) -> bool:
        return True


def leader_middleware(role: Role) -> Any:
    """A standby takes no writes: an authorized POST is answered 307 to the
    leader (same method, same body, same token), or 503 while none is known."""

    @web.middleware
    async def redirect(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and not role.leading:
            leader = role.leader_address
            if leader is None:
                raise NotLeaderError(
                    "this daemon is a standby and no leader holds the lease right now; "
                    "retry in a few seconds"
                )
            raise web.HTTPTemporaryRedirect(leader.rstrip("/") + request.path_qs)
        return await handler(request)

    return redirect


def make_app(
    manager: UpgradeManager,
    token: str | Tokens,
    *,
    role: Role | None = None,
    metrics: Metrics | None = None,
    max_body: int = MAX_BODY,
    secret_sources: SecretSources | None = None,
    streams_per_token: int = 16,
) -> web.Application:
    """The API over `manager`. Starting the app starts the manager (resuming
    unfinished upgrades); cleaning it up closes the manager (not its journal,
    which whoever opened it closes). A plain `token` is the one approver."""
    tokens = Tokens.single(token) if isinstance(token, str) else token
    role = role or SoleDaemon()
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(tokens), leader_middleware(role)],
        client_max_size=max_body,
    )
    app[keys.MANAGER] = manager
    app[keys.ROLE] = role
    app[keys.SECRET_SOURCES] = secret_sources or SecretSources()
    app[keys.STREAMS] = StreamSlots(streams_per_token)
    app[keys.FEEDS] = Feeds(manager.journal, sse.format_event)
    app[keys.METRICS] = metrics or Metrics()
    app[keys.STOPPING] = asyncio.Event()
    app[keys.SUBMIT_LOCK] = asyncio.Lock()
    app[keys.PARSE_SLOTS] = asyncio.Semaphore(PARSE_CONCURRENCY)
    app.cleanup_ctx.append(_manager_lifecycle)
    app.on_shutdown.append(_stop_streams)
    app.router.add_get("/", page.index)
    app.router.add_get("/static/{name}", page.static)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/v1/openapi.json", handlers.openapi)
    app.router.add_get("/v1/upgrades", handlers.list_upgrades)
    app.router.add_post("/v1/upgrades", handlers.submit)
    app.router.add_get("/v1/upgrades/{id}", handlers.get_upgrade)
    app.router.add_get("/v1/upgrades/{id}/plan", handlers.get_plan)
    app.router.add_get("/v1/upgrades/{id}/events", sse.events)
    for action in ACTIONS:
        app.router.add_post(f"/v1/upgrades/{{id}}/{action}", handlers.control(action))
    for action in HOST_ACTIONS:
        app.router.add_post(
            f"/v1/upgrades/{{id}}/hosts/{{host}}/{action}", handlers.control_host(action)
        )
    return app


async def _manager_lifecycle(app: web.Application) -> AsyncIterator[None]:
    manager = app[keys.MANAGER]
    started = time.monotonic()
    await manager.start(lead=app[keys.ROLE].leading)
    log.info(
        "manager started",
        upgrades=len(manager.upgrades),
        ms=round((time.monotonic() - started) * 1000, 1),
    )
    yield
    app[keys.STOPPING].set()
    await app[keys.FEEDS].close()
    await manager.close()


async def _stop_streams(app: web.Application) -> None:
    app[keys.STOPPING].set()
