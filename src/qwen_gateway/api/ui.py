"""The browser pages: the chat at ``/ui`` and the admin console at ``/ui/admin``.

Static files shipped in the package (``qwen_gateway/ui/``), served with a strict Content
Security Policy: scripts and styles only from the gateway's own origin, never inline, no
third-party origin anywhere, no framing. The pages hold no secret: they call the same API as
any client, with the key the user types (kept in the tab's session storage). ``server.ui:
false`` leaves the routes out (404).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

import orjson
from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

#: Every UI response carries these (404s included).
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # revalidated on every load (the ETag makes that a 304): an upgraded gateway never runs
    # yesterday's script against today's API
    "Cache-Control": "no-cache",
}

#: The only file types served, with their media types (anything else is a 404).
MEDIA_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}

#: Pages by their public path (without the trailing slash).
PAGES: dict[str, str] = {"/ui": "chat/index.html", "/ui/admin": "admin/index.html"}


def ui_root() -> Path:
    """The directory the pages are served from (``qwen_gateway/ui`` in the package)."""
    return Path(str(resources.files("qwen_gateway").joinpath("ui"))).resolve()


def resolve(root: Path, relative: str) -> Path | None:
    """The file ``relative`` names inside ``root``, or None: outside it (``..``, absolute,
    links leading out), hidden, missing, or of a type not served."""
    if not relative or "\\" in relative or "\x00" in relative:
        return None
    parts = relative.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    candidate = root.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    if real.suffix.lower() not in MEDIA_TYPES:
        return None
    return real


def not_found() -> Response:
    return Response("Not Found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)


def serve_file(path: Path) -> Response:
    return FileResponse(
        path, media_type=MEDIA_TYPES[path.suffix.lower()], headers=dict(SECURITY_HEADERS)
    )


def ui_router(root: Path | None = None, *, auth: bool = True) -> APIRouter:
    """``GET /ui`` (the chat), ``/ui/admin`` (the console), the files under ``/ui/`` and
    ``/ui/config.json`` (what the pages need to know before a key: ``auth``, whether the API
    wants one)."""
    base = (root or ui_root()).resolve()
    router = APIRouter(include_in_schema=False)
    config = orjson.dumps({"auth": auth})

    @router.get("/ui/config.json")
    async def page_config() -> Response:
        return Response(config, media_type="application/json", headers=SECURITY_HEADERS)

    def page(relative: str) -> Response:
        found = resolve(base, relative)
        return serve_file(found) if found is not None else not_found()

    def endpoint(relative: str) -> Callable[[], Awaitable[Response]]:
        async def show() -> Response:
            return page(relative)

        return show

    for public, relative in PAGES.items():
        show = endpoint(relative)
        router.add_api_route(public, show, methods=["GET", "HEAD"])
        router.add_api_route(public + "/", show, methods=["GET", "HEAD"])

    @router.api_route("/ui/{relative:path}", methods=["GET", "HEAD"])
    async def asset(relative: str) -> Response:
        return page(relative)

    return router
