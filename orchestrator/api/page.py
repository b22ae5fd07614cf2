"""The status page: three static files from the package, no build step.

Served without a token (the page asks for one and keeps it in the tab's
sessionStorage), under a Content-Security-Policy that allows only this
origin's own script, style and API: no inline script, no framing.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from orchestrator.errors import NotFoundError

WEB = Path(__file__).resolve().parent.parent / "web"
FILES = {"app.js": "text/javascript", "style.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str, content_type: str) -> web.Response:
    body = (WEB / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)


async def index(request: web.Request) -> web.Response:
    return _file("index.html", "text/html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = FILES.get(name)  # a fixed list: no path ever reaches the disk
    if content_type is None:
        raise NotFoundError(f"no file {name!r}")
    return _file(name, content_type)
