"""Serving the pages: files, security headers, path traversal, ``server.ui: false``."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from qwen_gateway.api.ui import SECURITY_HEADERS, resolve, ui_root, ui_router
from qwen_gateway.cli.main import _banner
from qwen_gateway.config import load_settings
from tenancy.helpers import secured

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "ui"
    (root / "chat").mkdir(parents=True)
    (root / "admin").mkdir()
    (root / "chat" / "index.html").write_text("<p>chat</p>")
    (root / "chat" / "chat.js").write_text("export {};")
    (root / "admin" / "index.html").write_text("<p>admin</p>")
    (root / "chat" / "notes.py").write_text("secret = 1")
    (root / ".hidden.js").write_text("hidden")
    (tmp_path / "outside.js").write_text("outside")
    os.symlink(tmp_path / "outside.js", root / "chat" / "link.js")
    return root


def client(root: Path) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(ui_router(root))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_pages_and_assets_with_security_headers(site: Path) -> None:
    async with client(site) as http:
        for path, body, media in [
            ("/ui", "<p>chat</p>", "text/html"),
            ("/ui/", "<p>chat</p>", "text/html"),
            ("/ui/admin", "<p>admin</p>", "text/html"),
            ("/ui/admin/", "<p>admin</p>", "text/html"),
            ("/ui/chat/chat.js", "export {};", "text/javascript"),
        ]:
            r = await http.get(path)
            assert r.status_code == 200, path
            assert r.text == body
            assert r.headers["content-type"].startswith(media)
            assert r.headers["content-security-policy"] == CSP
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../outside.js",
        "/ui/%2e%2e/outside.js",
        "/ui/chat/%2e%2e/%2e%2e/outside.js",
        "/ui/chat/..%2f..%2foutside.js",
        "/ui/chat/link.js",  # a link leading out of the folder
        "/ui/chat/notes.py",  # a type not served
        "/ui/.hidden.js",
        "/ui/chat/missing.js",
        "/ui/chat",  # a folder
        "/ui/%2fetc%2fpasswd",
        "/ui/chat\\..\\..\\outside.js",
    ],
)
async def test_nothing_outside_the_folder_or_of_another_type(site: Path, path: str) -> None:
    async with client(site) as http:
        r = await http.get(path)
    assert r.status_code == 404
    assert "outside" not in r.text and "secret" not in r.text
    if r.url.path.startswith("/ui/"):  # the client may have normalised the dots away
        assert r.headers["content-security-policy"] == CSP


def test_resolve_refuses_escapes(site: Path) -> None:
    root = site.resolve()
    assert resolve(root, "chat/chat.js") == root / "chat" / "chat.js"
    for bad in ["", "/etc/passwd", "../outside.js", "chat/../../outside.js", "chat//chat.js"]:
        assert resolve(root, bad) is None, bad


def test_the_package_ships_the_pages_and_vendored_libraries() -> None:
    root = ui_root()
    for relative in [
        "chat/index.html",
        "chat/chat.js",
        "chat/chat.css",
        "vendor/marked/marked.esm.js",
        "vendor/dompurify/purify.es.js",
        "vendor/highlight/highlight.min.js",
    ]:
        assert resolve(root, relative) is not None, relative
    for lib in ["marked", "dompurify", "highlight"]:
        assert (root / "vendor" / lib / "LICENSE").is_file()
    page = (root / "chat" / "index.html").read_text(encoding="utf-8")
    # no inline script or style, nothing from another origin
    assert "<script>" not in page and "style=" not in page and "<style" not in page
    assert "http://" not in page and "https://" not in page


async def test_the_gateway_serves_the_pages_unless_turned_off(tmp_path: Path) -> None:
    async with secured(tmp_path / "on") as g:
        r = await g.http.get("/ui")
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        assert (await g.http.get("/ui/vendor/marked/marked.esm.js")).status_code == 200
    async with secured(tmp_path / "off", server={"ui": False}) as g:
        for path in ["/ui", "/ui/", "/ui/admin", "/ui/chat/chat.js"]:
            assert (await g.http.get(path)).status_code == 404, path
        # the API is unaffected
        assert (await g.http.get("/health")).status_code == 200


async def test_page_config_says_whether_a_key_is_needed(site: Path) -> None:
    for auth in (True, False):
        app = FastAPI()
        app.include_router(ui_router(site, auth=auth))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.get("/ui/config.json")
        assert r.json() == {"auth": auth}
        assert r.headers["content-security-policy"] == CSP


def test_ready_banner_names_the_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for ui in (True, False):
        settings = load_settings({"server": {"port": 8123, "ui": ui}}, env={})
        _banner(settings, None, tmp_path / "admin-key")
        err = capsys.readouterr().err
        assert ("http://127.0.0.1:8123/ui " in err) is ui
        assert ("http://127.0.0.1:8123/ui/admin" in err) is ui
