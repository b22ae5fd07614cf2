"""The CLI's one-shot requests, over the standard library only: where the
daemon is, one request and its answer (following a standby's 307 to the
leader), and answers turned into the package's exceptions.

`status` and the control commands need nothing more, so they start without
loading aiohttp; the event stream (`watch`) uses `orchestrator.client`.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from orchestrator.api.endpoint import ADDRESS_FILE, DEFAULT_LISTEN, TOKEN_FILE, default_state_dir
from orchestrator.errors import (
    ConflictError,
    DaemonUnavailable,
    ForbiddenError,
    InputError,
    NotFoundError,
    OrchestratorError,
    Problem,
    TooManyError,
    UsageError,
)

MAX_REDIRECTS = 3  # a standby to its leader is one


# --- where the daemon is -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    token: str | None
    cacert: str | None = None


def resolve_endpoint(
    server: str | None,
    token: str | None,
    cacert: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Endpoint:
    """--server/--token, else ORCHESTRATOR_URL/ORCHESTRATOR_TOKEN, else the
    local daemon: the address it wrote in its state directory and its token file."""
    env = os.environ if environ is None else environ
    state_dir = Path(env["ORCHESTRATOR_STATE_DIR"]) if env.get("ORCHESTRATOR_STATE_DIR") else None
    state_dir = state_dir or default_state_dir()
    url = server or env.get("ORCHESTRATOR_URL")
    if url:
        given = f"--server {url}" if server else f"ORCHESTRATOR_URL={url}"
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise UsageError(f"{given}: give the scheme too, like http://{url} or https://{url}")
        if scheme.lower() not in ("http", "https") or not rest:
            raise UsageError(f"{given}: expected http://HOST:PORT or https://HOST:PORT")
    if not url:
        try:
            url = str(json.loads((state_dir / ADDRESS_FILE).read_text())["url"])
        except (OSError, ValueError, KeyError, TypeError):
            url = f"http://{DEFAULT_LISTEN}"
    secret = token or env.get("ORCHESTRATOR_TOKEN")
    if not secret:
        try:
            secret = (state_dir / TOKEN_FILE).read_text(encoding="utf-8").strip() or None
        except OSError:
            secret = None
    return Endpoint(url.rstrip("/"), secret, cacert or env.get("ORCHESTRATOR_CACERT"))


# --- errors from answers ------------------------------------------------------------

_BY_STATUS: dict[int, type[OrchestratorError]] = {
    cls.http_status: cls
    for cls in (UsageError, InputError, NotFoundError, ConflictError, ForbiddenError, TooManyError)
}


def error_from_answer(status: int, body: bytes) -> OrchestratorError:
    try:
        error = json.loads(body)
        if "error" in error:  # a daemon from before RFC 9457 problem documents
            error = error["error"]
        message = str(error["detail"] if "detail" in error else error["message"])
        problems = [Problem(**p) for p in error.get("problems") or []]
    except (ValueError, KeyError, TypeError):
        message, problems = body.decode(errors="replace")[:500] or f"HTTP {status}", []
    if status == 401:
        return DaemonUnavailable(
            f"the daemon refused the token ({message}); pass --token or set ORCHESTRATOR_TOKEN"
        )
    if status in (400, 422) and problems:
        return InputError(problems)
    cls = _BY_STATUS.get(status)
    if cls is InputError:
        return InputError(Problem(message=message))
    if cls is not None:
        return cls(message)
    if status == 503:
        return DaemonUnavailable(message)
    if 400 <= status < 500:
        return UsageError(message)
    return OrchestratorError(f"the daemon failed (HTTP {status}): {message}")


def unreachable(url: str, reason: str) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"cannot reach the daemon at {url}: {reason}; start one with "
        "'orchestrator serve' (in another shell), or point --server or ORCHESTRATOR_URL "
        "at a running one"
    )


def request(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = 30.0,
) -> Any:
    """One request, its JSON answer; an error answer raises its exception."""
    sent = {"Accept": "application/json", **(headers or {})}
    if endpoint.token:
        sent["Authorization"] = f"Bearer {endpoint.token}"
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    url = endpoint.url + path
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=endpoint.cacert)
            conn = http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, body=payload, headers=sent)
            resp = conn.getresponse()
            raw = resp.read()
            status, location = resp.status, resp.getheader("Location")
        except ssl.SSLError as exc:  # before OSError: its errno says nothing
            raise unreachable(endpoint.url, str(exc)) from None
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise unreachable(endpoint.url, reason or type(exc).__name__) from None
        except http.client.HTTPException as exc:
            raise unreachable(endpoint.url, str(exc) or type(exc).__name__) from None
        finally:
            conn.close()
        if status not in (307, 308) or not location:
            break
        url = urljoin(url, location)  # a standby sends writes to its leader
    else:
        raise DaemonUnavailable(f"more than {MAX_REDIRECTS} redirects from {endpoint.url}")
    if status >= 400:
        raise error_from_answer(status, raw)
    return json.loads(raw)
