"""The admin console at /ui/admin in Chromium, against a real ``qwen-gateway serve`` with
scripted deployments and a ``safety:`` section that holds risky answers for review: sign in,
create a key (its secret shown once), use it, revoke it (then 401), the usage chart, the review
queue (approve, reject; the held answer shown as text only), live stats, configuration, audit;
a non-admin key is refused (403) by every admin route and told so by the page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import expect

from support.browser import Tab
from support.server import Server, free_port, running_command

PLAIN = "Hello from the scripted deployment."
# what the review policy holds; the markup in it must reach the reviewer as text
RISKY = 'Buy this fund for guaranteed returns. <img src=x onerror="window.__xss=1"> 稳赚不赔'
CONFIG: dict[str, Any] = {
    "deployments": [
        {"name": "plain", "engine": "scripted", "options": {"replies": [PLAIN]}},
        {"name": "risky", "engine": "scripted", "options": {"replies": [RISKY]}},
    ],
    "safety": {
        "rule_sets": {"risky": {"keywords": {"finance": ["guaranteed returns"]}}},
        "policies": [
            {
                "name": "r",
                "rule_sets": ["risky"],
                "actions": {"finance": "review"},
                "review": "hold",
            }
        ],
    },
}
ASK = [{"role": "user", "content": "What should I do?"}]


@dataclass
class Console:
    server: Server
    admin_key: str
    user_key: str

    @property
    def url(self) -> str:
        return self.server.base_url + "/ui/admin"

    def api(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.request(method, self.server.base_url + path, headers=headers, timeout=30,
                             **kwargs)  # fmt: skip

    def chat(self, key: str, model: str = "plain") -> httpx.Response:
        return self.api("POST", "/v1/chat/completions", key, json={"model": model, "messages": ASK})


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("admin-ui")
    config = root / "gateway.yaml"
    config.write_text(yaml.safe_dump(CONFIG, allow_unicode=True), encoding="utf-8")
    env = {"QWEN_GATEWAY_DATA_DIR": str(root / "data")}

    def create(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "qwen_gateway.cli.main", "keys", "create", "--json", *args],
            env={**os.environ, **env}, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return str(json.loads(out.stdout)["key"])

    admin, user = create("--name", "console-admin", "--admin"), create("--name", "console-user")
    port = free_port()
    args = ["--config", str(config), "--port", str(port)]
    with running_command(args, port, root / "server.log", env=env, auth=True) as server:
        yield Console(server, admin, user)


def signed_in(open_page: Callable[..., Tab], console: Console, **options: Any) -> Tab:
    tab = open_page(console.url, **options)
    tab.page.fill("#signin-key", console.admin_key)
    tab.page.click("#signin-form button[type=submit]")
    expect(tab.page.locator("#tabs")).to_be_visible()
    expect(tab.page.locator("#keys-table tbody tr").first).to_be_visible()
    return tab


def until(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling a condition, bounded


def test_create_a_key_use_it_see_its_usage_and_revoke_it(
    open_page: Callable[..., Tab], console: Console
) -> None:
    tab = signed_in(open_page, console)
    page = tab.page
    assert page.evaluate("sessionStorage.length") == 1
    assert page.context.cookies() == []

    page.fill("#key-form [name=name]", "created-in-ui")
    page.fill("#key-form [name=rpm]", "100")
    page.click("#key-submit")
    secret_box = page.locator("#secret-value")
    expect(secret_box).to_contain_text("sk-qg-")
    secret = secret_box.inner_text().strip()
    row = page.locator("#keys-table tbody tr", has_text="created-in-ui")
    expect(row).to_contain_text("rpm=100")
    assert secret not in row.inner_text()  # the list shows the prefix only

    page.click("#secret-done")  # shown once: gone from the page
    expect(page.locator("#secret-box")).to_be_hidden()
    assert secret not in page.content()

    # the new key in the chat page, in a tab of its own: it answers
    chat = open_page(console.server.base_url + "/ui").page
    chat.get_by_test_id("api-key").fill(secret)
    chat.get_by_test_id("sign-in").click()
    chat.get_by_test_id("model").select_option("plain")
    chat.get_by_test_id("prompt").fill("Hello?")
    chat.get_by_test_id("send").click()
    expect(chat.locator("article.message.assistant").last).to_contain_text(PLAIN)
    for _ in range(2):
        assert console.chat(secret).status_code == 200
    key_id = row.get_attribute("data-key-id")

    row.get_by_role("button", name="Edit").click()
    expect(page.locator("#key-form [name=rpm]")).to_have_value("100")
    page.fill("#key-form [name=rpm]", "50")
    page.fill("#key-form [name=tier]", "gold")
    page.click("#key-submit")
    expect(row).to_contain_text("rpm=50")
    expect(row.locator("td").nth(4)).to_have_text("gold")
    shown = console.api("GET", f"/admin/keys/{key_id}", console.admin_key).json()
    assert (shown["rpm"], shown["tier"]) == (50, "gold")

    row.get_by_role("button", name="Rotate").click()
    row.get_by_role("button", name="Confirm rotate").click()
    expect(secret_box).to_contain_text("sk-qg-")
    rotated = secret_box.inner_text().strip()
    assert rotated != secret
    until(lambda: console.chat(secret).status_code == 401, "the old secret to be refused")
    chat.get_by_test_id("prompt").fill("Still there?")  # the chat tab holds the old secret
    chat.get_by_test_id("send").click()
    expect(chat.locator("article.message.error").last).to_contain_text("401")
    chat = open_page(console.server.base_url + "/ui").page  # signed in with the new secret
    chat.get_by_test_id("api-key").fill(rotated)
    chat.get_by_test_id("sign-in").click()
    chat.get_by_test_id("model").select_option("plain")
    chat.get_by_test_id("prompt").fill("Hello again?")
    chat.get_by_test_id("send").click()
    expect(chat.locator("article.message.assistant").last).to_contain_text(PLAIN)
    secret = rotated

    page.click("[data-tab=usage]")
    page.select_option("#usage-form [name=group]", "key")
    page.click("#usage-form button[type=submit]")
    bars = page.locator(
        f'svg[data-chart=requests] rect[data-series="created-in-ui (key:{key_id})"]'
    )
    expect(bars.first).to_be_visible()
    assert sum(int(b.get_attribute("data-value") or 0) for b in bars.all()) == 4
    totals = page.locator(f'#usage-table tr[data-series="created-in-ui (key:{key_id})"]')
    expect(totals.locator("td").nth(1)).to_have_text("4")
    with page.expect_download() as download:
        page.click("#usage-csv")
    csv_text = Path(download.value.path()).read_text(encoding="utf-8")
    assert csv_text.startswith("hour,key,requests,")
    assert f"key:{key_id}," in csv_text

    page.click("[data-tab=keys]")
    page.wait_for_load_state("networkidle")  # the list reloaded: no re-render under the click
    revoke = row.get_by_role("button", name="Revoke")
    revoke.click()
    row.get_by_role("button", name="Confirm revoke").click()
    expect(row.locator(".badge")).to_have_text("revoked")
    until(lambda: console.chat(secret).status_code == 401, "the revoked key to be refused")
    chat.get_by_test_id("prompt").fill("And now?")  # the chat tab shows the refusal
    chat.get_by_test_id("send").click()
    expect(chat.locator("article.message.error").last).to_contain_text("401")

    page.click("[data-tab=audit]")
    page.fill("#audit-form [name=action]", "key.revoke")
    page.click("#audit-form button[type=submit]")
    expect(page.locator("#audit-table tbody tr").first).to_contain_text(f"key:{key_id}")
    expect(page.locator("#audit-table tbody tr")).to_have_count(1)
    tab.assert_no_errors()


def test_review_queue_approve_and_reject(open_page: Callable[..., Tab], console: Console) -> None:
    held = [console.chat(console.user_key, "risky") for _ in range(2)]
    for resp in held:
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["finish_reason"] == "content_filter"

    tab = signed_in(open_page, console)
    page = tab.page
    page.click("[data-tab=reviews]")
    rows = page.locator("#reviews-table tbody tr")
    expect(rows).to_have_count(2)
    first, second = (r.get_attribute("data-review-id") for r in rows.all())

    rows.nth(0).get_by_role("button").click()
    expect(page.locator("#review-answer")).to_have_text(RISKY)  # as text, markup and all
    assert page.locator("#review-detail img").count() == 0
    assert page.evaluate("window.__xss") is None
    page.fill("#review-reason", "checked with the fund's prospectus")
    page.click("#review-approve")
    expect(rows).to_have_count(1)

    rows.nth(0).get_by_role("button").click()
    expect(page.locator("#review-id")).to_have_text(str(second))
    page.fill("#review-reason", "no guarantees")
    page.click("#review-reject")
    expect(rows).to_have_count(0)

    decided = {
        status: console.api("GET", f"/admin/reviews?status={status}", console.admin_key).json()
        for status in ("approved", "rejected")
    }
    assert [(r["id"], r["reason"]) for r in decided["approved"]["data"]] == [
        (first, "checked with the fund's prospectus")
    ]
    assert [(r["id"], r["reason"]) for r in decided["rejected"]["data"]] == [
        (second, "no guarantees")
    ]
    assert page.evaluate("window.__xss") is None
    tab.assert_no_errors()


ADMIN_CALLS = [
    ("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/keys/1"),
    ("PATCH", "/admin/keys/1"), ("POST", "/admin/keys/1/revoke"), ("POST", "/admin/keys/1/rotate"),
    ("GET", "/admin/usage"), ("GET", "/admin/audit"), ("GET", "/admin/stats"),
    ("GET", "/admin/config"), ("GET", "/admin/reviews"), ("GET", "/admin/reviews/rev_0"),
    ("POST", "/admin/reviews/rev_0/approve"), ("POST", "/admin/reviews/rev_0/reject"),
    ("GET", "/admin/safety"), ("POST", "/admin/safety/reload"),
]  # fmt: skip


def test_a_non_admin_key_is_refused_and_told_so(
    open_page: Callable[..., Tab], console: Console
) -> None:
    for method, path in ADMIN_CALLS:
        resp = console.api(method, path, console.user_key, json={})
        assert resp.status_code == 403, (method, path, resp.text)

    tab = open_page(console.url)
    page = tab.page
    page.fill("#signin-key", console.user_key)
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("403")
    expect(page.locator("#signin-error")).to_contain_text("not an admin key")
    expect(page.locator("#tabs")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0

    page.fill("#signin-key", "sk-qg-not-a-real-key")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#signin-error")).to_contain_text("401")
    tab.assert_no_errors(lambda e: "403" in e or "401" in e)  # the browser logs the refusals


def test_live_view_configuration_and_themes(
    open_page: Callable[..., Tab], console: Console, tmp_path: Path
) -> None:
    assert console.chat(console.user_key).status_code == 200
    tab = signed_in(open_page, console, viewport={"width": 375, "height": 800})
    page = tab.page
    page.click("[data-tab=live]")
    replicas = page.locator("#live-replicas tbody tr")
    expect(replicas).to_have_count(2)
    expect(replicas.first).to_contain_text("closed")
    expect(page.locator("#live-models tbody tr", has_text="plain")).to_be_visible()
    expect(page.locator("[data-stat=tps]")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375

    page.click("[data-tab=config]")
    expect(page.locator("#config-text")).to_contain_text('"deployments"')
    shown = json.loads(page.locator("#config-text").inner_text())
    assert [d["name"] for d in shown["deployments"]] == ["plain", "risky"]

    page.click("#lang")
    expect(page.locator("[data-tab=keys]")).to_have_text("密钥")
    page.click("#lang")
    expect(page.locator("[data-tab=keys]")).to_have_text("Keys")
    before = page.evaluate("document.documentElement.dataset.theme")
    page.click("#theme")
    after = page.evaluate("document.documentElement.dataset.theme")
    assert {before, after} == {"light", "dark"}
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.click("#theme")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != background
    tab.assert_no_errors()


def test_screenshots_of_both_themes(
    open_page: Callable[..., Tab], console: Console, tmp_path: Path
) -> None:
    """The console in light (usage) and dark (live view); ``QG_UI_SCREENSHOTS=docs/img
    pytest tests/ui -k themes`` writes them where the README shows them."""
    for model in ("plain", "plain", "risky"):
        console.chat(console.user_key, model)
    tab = signed_in(open_page, console, viewport={"width": 1280, "height": 900},
                    color_scheme="light")  # fmt: skip
    page = tab.page
    page.click("[data-tab=usage]")
    page.select_option("#usage-form [name=group]", "model")
    page.click("#usage-form button[type=submit]")
    expect(page.locator('svg[data-chart=requests] rect[data-series="plain"]')).to_be_visible()
    out = Path(os.environ.get("QG_UI_SCREENSHOTS") or tmp_path)
    page.screenshot(path=str(out / "admin-light.png"), full_page=True)
    page.click("#theme")
    page.click("[data-tab=live]")
    expect(page.locator("#live-replicas tbody tr")).to_have_count(2)
    expect(page.locator("[data-stat=rps] strong")).not_to_have_text("—")  # a second poll
    page.screenshot(path=str(out / "admin-dark.png"), full_page=True)
    assert (out / "admin-light.png").stat().st_size > 10_000
    assert (out / "admin-dark.png").stat().st_size > 10_000
    tab.assert_no_errors()


def test_a_gateway_without_authentication_needs_no_key(
    open_page: Callable[..., Tab], tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"deployments": CONFIG["deployments"][:1]}), encoding="utf-8")
    port = free_port()
    args = ["--config", str(config), "--port", str(port)]
    with running_command(args, port, tmp_path / "server.log") as server:  # --no-auth
        tab = open_page(server.base_url + "/ui/admin")
        page = tab.page
        expect(page.locator("#tabs")).to_be_visible()
        expect(page.locator("#signin")).to_be_hidden()
        expect(page.locator("[data-tab=reviews]")).to_be_hidden()  # no safety: section
        page.click("[data-tab=live]")
        expect(page.locator("#live-replicas tbody tr")).to_have_count(1)
        assert page.evaluate("sessionStorage.length") == 0
        tab.assert_no_errors()
