"""Browser fixtures for the pages under /ui: Playwright driving the system's Chromium.

No browser is downloaded: Playwright launches Debian's ``chromium`` (``make test`` installs it
when missing; ``QG_CHROMIUM`` names another binary). Without it, or without the ``playwright``
package, the browser tests are skipped, except under CI, where they fail.

Fixtures:
- ``browser``: one headless Chromium per test module. Module, not session: Playwright's sync
  API runs its own event loop in the main thread while it is started, and pytest-asyncio's
  loop cannot run beside it, so a module of browser tests holds no async test, and the browser
  is gone before the next module's async tests run;
- ``open_page``: ``open_page(url, **context_options) -> Tab``, a fresh context (its own
  session and local storage) with a collector of console errors and uncaught page errors,
  closed after the test;
- ``ui_gateway``: a real ``qwen-gateway serve`` (auth on) with the tiny model and scripted
  deployments, an alias, a split and ``auto``, and an admin and a user key (``UIGateway``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.server import Server, free_port, running_command

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

#: What the scripted deployment ``md`` answers (Markdown with a fenced code block).
MARKDOWN_REPLY = (
    "# Heading\n\nSome **bold** text and a [link](https://example.com/docs).\n\n"
    "```python\ndef add(a, b):\n    return a + b\n```\n"
)

#: Scripted deployments the gateway serves, by name: each answers its one reply, always.
#: Tests add theirs (``xss-*``) through ``UI_SCRIPTED`` before the session fixture starts.
UI_SCRIPTED: dict[str, str] = {"md": MARKDOWN_REPLY}

#: A prompt the gateway's content policy blocks (400 content_filter).
BLOCKED_PHRASE = "forbidden-ui-phrase"

#: The gateway's ``safety:`` section: one inline keyword, blocked in prompts and answers.
UI_SAFETY: dict[str, Any] = {
    "rule_sets": {"ui": {"keywords": {"fraud": [BLOCKED_PHRASE]}}},
    "policies": [{"name": "ui-block", "rule_sets": ["ui"], "actions": {"*": "block"}}],
}


def chromium_path() -> str | None:
    named = os.environ.get("QG_CHROMIUM")
    if named:
        return named
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser tests cannot run: {reason}")
    pytest.skip(f"browser tests skipped: {reason}")


@dataclass
class Tab:
    """A page in its own browser context, with what went wrong in it."""

    page: Any  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    def assert_no_errors(self, allowed: Callable[[str], bool] = lambda _: False) -> None:
        unexpected = [e for e in self.errors if not allowed(e)]
        assert not unexpected, f"errors in the page: {unexpected}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (the dev extra)")
    executable = chromium_path()
    if executable is None or not Path(executable).exists():
        _unavailable("no Chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)  # a busy CI machine: auto-waiting, never a sleep
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Tab]]:
    contexts: list[Any] = []

    def open_(url: str, **context_options: Any) -> Tab:
        context = browser.new_context(**context_options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        tab = Tab(page)
        page.on(
            "console",
            lambda m: tab.errors.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: tab.errors.append(f"pageerror: {e}"))
        page.goto(url)
        return tab

    yield open_
    for context in contexts:
        context.close()


@dataclass
class UIGateway:
    server: Server
    admin_key: str
    user_key: str
    data_dir: Path
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def cli(self, *args: str) -> str:
        """``qwen-gateway *args`` against this gateway's data directory (keys, usage...)."""
        out = subprocess.run(
            [sys.executable, "-m", "qwen_gateway.cli.main", *args],
            env={**os.environ, **self.env}, capture_output=True, text=True, check=True,
            timeout=120,
        )  # fmt: skip
        return out.stdout


def ui_config(
    model_dir: Path,
    scripted: dict[str, str],
    safety: dict[str, Any] | None = None,
    embed_dir: Path | None = None,
) -> dict[str, Any]:
    """The gateway the UI tests run against: ``tiny`` (the random tiny model, for streaming
    and Stop: it writes until max_tokens), the scripted deployments, an alias, a split,
    ``auto``, the content policy, and ``vectors`` (an embedding model the chat page must not
    offer) when ``embed_dir`` is given."""
    deployments: list[dict[str, Any]] = [
        {
            "name": "tiny",
            "aliases": ["tiny-alias"],
            "engine": "transformers",
            "model": str(model_dir),
            "context_window": 4096,
            "max_output_tokens": 4096,
            "max_batch_size": 4,
        }
    ]
    for name, reply in scripted.items():
        deployments.append({"name": name, "engine": "scripted", "options": {"replies": [reply]}})
    if embed_dir is not None:
        deployments.append(
            {"name": "vectors", "engine": "transformers", "task": "embed", "model": str(embed_dir)}
        )
    return {
        "deployments": deployments,
        "routing": {
            "splits": {"ab": {"arms": {"tiny": 1, "md": 1}}},
            "intent": {
                "model": "auto",
                "classifier": "rules",
                "default": "general",
                "routes": {"general": "md", "code": "md", "math": "md"},
            },
        },
        **({"safety": safety} if safety else {}),
    }


@pytest.fixture(scope="session")
def ui_gateway(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UIGateway]:
    from qwen_gateway.engines.transformers.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("ui-gateway")
    vectors = build_tiny_model(root / "tiny-embed", embedding=True)
    config = root / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(ui_config(tiny_model_dir, UI_SCRIPTED, UI_SAFETY, vectors)),
        encoding="utf-8",
    )
    env = {"QWEN_GATEWAY_DATA_DIR": str(root / "data")}

    def create(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "qwen_gateway.cli.main", "keys", "create", "--json", *args],
            env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return str(json.loads(out.stdout)["key"])

    admin = create("--name", "ui-admin", "--admin")
    user = create("--name", "ui-user")
    port = free_port()
    args = ["--config", str(config), "--port", str(port)]
    with running_command(args, port, root / "server.log", env=env, auth=True) as server:
        yield UIGateway(server, admin, user, root / "data", env)
