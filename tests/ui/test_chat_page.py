"""The chat page in Chromium against a real ``qwen-gateway serve`` (auth on).

Deployments (tests/support/browser.py): ``tiny`` (the random tiny model: it writes until
max_tokens, for streaming and Stop), ``md`` (scripted Markdown), ``tiny-alias``, the split
``ab``, ``auto``, and the scripted ``xss-*`` answers of the table below.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from support.browser import BLOCKED_PHRASE, UI_SCRIPTED, Tab, UIGateway
from support.server import Server

pytestmark = pytest.mark.e2e

# Each answer tries to run ``window.__xss = ...`` (or open a dialog) when rendered or clicked.
XSS: dict[str, str] = {
    "script": "Hi <script>window.__xss = 'script'</script> there",
    "img-onerror": "Look: <img src=x onerror=\"window.__xss = 'img'\">",
    # void(): a javascript: URL that evaluates to a string would replace the whole document
    "md-js-link": "[click me](javascript:void(window.__xss='md-link'))",
    "html-js-link": "<a href=\"javascript:void(window.__xss='a')\">click me</a>",
    "entity-js-link": '<a href="jav&#x61;script:window.__xss=1">click me</a>',
    "svg-onload": "<svg onload=\"window.__xss='svg'\"><circle r=5 /></svg>",
    "svg-script": "<svg><script>window.__xss='svg-script'</script></svg>",
    "svg-link": (
        '<svg><a xlink:href="javascript:window.__xss=\'svg-a\'" href="javascript:window.'
        "__xss='svg-a'\"><text x=10 y=20>click me</text></a></svg>"
    ),
    "iframe-srcdoc": "<iframe srcdoc=\"<script>parent.__xss='iframe'</script>\"></iframe>",
    "details-ontoggle": "<details open ontoggle=\"window.__xss='details'\">x</details>",
    "md-image": "![pic](x\" onerror=\"window.__xss='md-img')",
    "form": '<form action="javascript:window.__xss=1"><button>click me</button></form>',
    "meta-refresh": '<meta http-equiv="refresh" content="0;url=javascript:window.__xss=1">',
    "style": '<style>body { display: none }</style><p style="display:none">hidden</p>',
    "alert": "<img src=x onerror=alert(1)><a href='javascript:alert(2)'>click me</a>",
    "code-fence": "```html\n<img src=x onerror=\"window.__xss='fence'\">\n```",
    "tool-call": (
        '<tool_call>\n{"name": "lookup", "arguments": {"q": "<img src=x onerror=\\"window.__xss'
        '=\'tool\'\\"><script>window.__xss=\'tool\'</script>", "url": "javascript:window.__xss'
        "='tool'\"}}\n</tool_call>"
    ),
}
UI_SCRIPTED.update({f"xss-{name}": reply for name, reply in XSS.items()})
UI_SCRIPTED["json"] = '{"answer": 42, "note": "<b>not bold</b>"}'

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "url": {"type": "string"}},
            },
        },
    }
]


def sign_in(open_page: Callable[..., Tab], gw: UIGateway, key: str, **options: Any) -> Tab:
    tab = open_page(gw.base_url + "/ui", **options)
    page = tab.page
    page.get_by_test_id("api-key").fill(key)
    page.get_by_test_id("sign-in").click()
    expect(page.get_by_test_id("prompt")).to_be_visible()
    return tab


def send(page: Page, text: str, model: str | None = None) -> None:
    if model is not None:
        page.get_by_test_id("model").select_option(model)
    page.get_by_test_id("prompt").fill(text)
    page.get_by_test_id("send").click()


def last_answer(page: Page) -> Any:
    return page.locator("article.message.assistant").last


def wait_idle(page: Page) -> None:
    expect(page.get_by_test_id("send")).to_be_visible()
    expect(page.locator("article.streaming")).to_have_count(0)


def metric(gw: UIGateway, name: str, model: str) -> float:
    text = httpx.get(gw.base_url + "/metrics", timeout=10).text
    pattern = re.compile(rf'^{re.escape(name)}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$')
    for line in text.splitlines():
        found = pattern.match(line)
        if found:
            return float(found.group(1))
    return 0.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling the server's gauges, bounded by the deadline


def test_sign_in_send_markdown_code_and_stats(
    open_page: Callable[..., Tab], ui_gateway: UIGateway
) -> None:
    tab = sign_in(open_page, ui_gateway, ui_gateway.user_key)
    page = tab.page
    # the key lives in this tab's session storage, never in local storage
    assert page.evaluate("sessionStorage.getItem('qg.key')") == ui_gateway.user_key
    assert ui_gateway.user_key not in page.evaluate("JSON.stringify(localStorage)")
    options = page.get_by_test_id("model").locator("option").all_inner_texts()
    for model in ["tiny", "tiny-alias", "md", "ab"]:
        assert model in options
    assert any(o.startswith("auto") for o in options)
    assert "vectors" not in options  # an embedding model is served, but cannot chat

    send(page, "Show me some Markdown", model="md")
    wait_idle(page)
    answer = last_answer(page)
    expect(answer.locator("h1")).to_have_text("Heading")
    expect(answer.locator("strong")).to_have_text("bold")
    link = answer.locator("a")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("rel", re.compile("noopener"))
    code = answer.locator("pre code.hljs")
    expect(code).to_have_attribute("data-language", "python")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    meta = answer.locator(".meta")
    expect(meta).to_contain_text("md")
    expect(meta).to_contain_text(re.compile(r"\d+ prompt \+ \d+ completion tokens"))
    expect(meta).to_contain_text("TTFT")
    expect(meta).to_contain_text("tokens/s")
    expect(page.get_by_test_id("route")).to_contain_text("md")
    # kept in the browser: the conversation is listed and survives a reload
    expect(page.get_by_test_id("conversations")).to_contain_text("Show me some Markdown")
    page.reload()
    expect(last_answer(page).locator("h1")).to_have_text("Heading")
    tab.assert_no_errors()


def test_stop_cancels_generation_on_the_server(
    open_page: Callable[..., Tab], ui_gateway: UIGateway
) -> None:
    tab = sign_in(open_page, ui_gateway, ui_gateway.user_key)
    page = tab.page
    page.locator("#settings summary").click()
    page.get_by_test_id("max-tokens").fill("3500")
    aborted = metric(ui_gateway, "qwen_gateway_engine_aborted_requests_total", "tiny")
    send(page, "Write forever", model="tiny")
    expect(page.get_by_test_id("stop")).to_be_visible()
    # streaming: text arrives while the answer is still being generated
    expect(last_answer(page).locator(".body")).not_to_be_empty()
    wait_for(
        lambda: metric(ui_gateway, "qwen_gateway_engine_running_sequences", "tiny") >= 1,
        "the engine to run the request",
    )
    page.get_by_test_id("stop").click()
    wait_idle(page)
    expect(last_answer(page).locator(".meta")).to_contain_text("stopped")
    # the server cancelled the generation: the running count drops back, counted as aborted
    wait_for(
        lambda: metric(ui_gateway, "qwen_gateway_engine_running_sequences", "tiny") == 0,
        "the running count to drop",
    )
    wait_for(
        lambda: (
            metric(ui_gateway, "qwen_gateway_engine_aborted_requests_total", "tiny") == aborted + 1
        ),
        "the abort to be counted",
    )
    tab.assert_no_errors()


def test_bad_key_is_refused_with_401(open_page: Callable[..., Tab], ui_gateway: UIGateway) -> None:
    tab = open_page(ui_gateway.base_url + "/ui")
    page = tab.page
    expect(page.get_by_test_id("api-key")).to_be_visible()  # auth on: no way round the key
    page.get_by_test_id("api-key").fill("sk-qg-not-a-real-key")
    page.get_by_test_id("sign-in").click()
    error = page.get_by_test_id("sign-in-error")
    expect(error).to_contain_text("401")
    expect(error).to_contain_text("invalid_api_key")
    expect(page.get_by_test_id("prompt")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('qg.key')") is None
    tab.assert_no_errors(allowed=lambda e: "401" in e)


def test_rate_limit_and_content_filter_are_shown(
    open_page: Callable[..., Tab], ui_gateway: UIGateway
) -> None:
    made = json.loads(ui_gateway.cli("keys", "create", "--json", "--name", "slow", "--rpm", "1"))
    tab = sign_in(open_page, ui_gateway, made["key"])
    page = tab.page
    send(page, f"please say {BLOCKED_PHRASE}", model="md")
    error = page.locator("article.message.error").last
    expect(error).to_contain_text("content_filter")
    expect(error).to_contain_text("Blocked by the content policy")
    # the refused prompt was not charged: one request passes, the next is over 1/minute
    send(page, "hello", model="md")
    wait_idle(page)
    expect(last_answer(page).locator("h1")).to_have_text("Heading")
    send(page, "hello again", model="md")
    wait_idle(page)
    expect(page.locator("article.message.error").last).to_contain_text("429")
    expect(page.locator("article.message.error").last).to_contain_text("rate_limit_exceeded")
    tab.assert_no_errors(allowed=lambda e: "400" in e or "429" in e)


def test_model_switch_alias_split_and_auto(
    open_page: Callable[..., Tab], ui_gateway: UIGateway
) -> None:
    tab = sign_in(open_page, ui_gateway, ui_gateway.user_key)
    page = tab.page
    page.locator("#settings summary").click()
    page.get_by_test_id("max-tokens").fill("4")
    routes = {}
    for model in ["tiny-alias", "ab", "auto"]:
        send(page, "def add(a, b): return a + b", model=model)
        wait_idle(page)
        expect(last_answer(page).locator(".meta")).to_contain_text(model)
        routes[model] = page.get_by_test_id("route").inner_text()
    assert "tiny" in routes["tiny-alias"]
    assert "tiny" in routes["ab"] or "md" in routes["ab"]
    assert "md" in routes["auto"]
    # the choice is remembered
    page.reload()
    expect(page.get_by_test_id("model")).to_have_value("auto")
    tab.assert_no_errors()


def test_json_mode_answer_is_shown_as_code(
    open_page: Callable[..., Tab], ui_gateway: UIGateway
) -> None:
    tab = sign_in(open_page, ui_gateway, ui_gateway.user_key)
    page = tab.page
    page.locator("#settings summary").click()
    page.get_by_test_id("json-mode").check()
    send(page, "answer in JSON", model="json")
    wait_idle(page)
    code = last_answer(page).locator("pre code.hljs")
    expect(code).to_have_attribute("data-language", "json")
    expect(code).to_contain_text('"answer": 42')  # pretty-printed
    expect(code).to_contain_text("<b>not bold</b>")  # text, not markup
    expect(last_answer(page).locator("b")).to_have_count(0)
    tab.assert_no_errors()


def test_retry_and_edit_last_message(open_page: Callable[..., Tab], ui_gateway: UIGateway) -> None:
    tab = sign_in(open_page, ui_gateway, ui_gateway.user_key)
    page = tab.page
    send(page, "first question", model="md")
    wait_idle(page)
    messages = page.locator("article.message")
    expect(messages).to_have_count(2)
    page.get_by_test_id("retry").click()
    wait_idle(page)
    expect(messages).to_have_count(2)  # the answer replaced, not added
    expect(last_answer(page).locator("h1")).to_have_text("Heading")
    page.get_by_test_id("edit").click()
    expect(messages).to_have_count(0)
    expect(page.get_by_test_id("prompt")).to_have_value("first question")
    tab.assert_no_errors()


def test_export_and_import_conversations(
    open_page: Callable[..., Tab], ui_gateway: UIGateway, tmp_path: Path
) -> None:
    tab = sign_in(open_page, ui_gateway, ui_gateway.user_key)
    page = tab.page
    send(page, "remember this conversation", model="md")
    wait_idle(page)
    with page.expect_download() as download:
        page.get_by_test_id("export").click()
    saved = tmp_path / "export.json"
    download.value.save_as(saved)
    exported = json.loads(saved.read_text(encoding="utf-8"))
    assert exported["conversations"][0]["messages"][0]["content"] == "remember this conversation"
    assert ui_gateway.user_key not in saved.read_text(encoding="utf-8")

    other = sign_in(open_page, ui_gateway, ui_gateway.user_key)  # a fresh browser profile
    expect(other.page.locator("article.message")).to_have_count(0)
    other.page.get_by_test_id("import").set_input_files(str(saved))
    expect(other.page.get_by_test_id("conversations")).to_contain_text("remember this")
    expect(last_answer(other.page).locator("h1")).to_have_text("Heading")
    bad = tmp_path / "bad.json"
    bad.write_text('{"conversations": [{"id": 1}]}', encoding="utf-8")
    other.page.get_by_test_id("import").set_input_files(str(bad))
    expect(other.page.locator("article.message.error").last).to_contain_text("not a conversation")
    tab.assert_no_errors()
    other.assert_no_errors()


@pytest.mark.parametrize("name", list(XSS))
def test_model_output_never_executes(
    open_page: Callable[..., Tab], ui_gateway: UIGateway, name: str
) -> None:
    # bypass_csp: the page's CSP would stop most payloads on its own; here the sanitiser
    # alone must (the CSP header is asserted separately)
    tab = sign_in(open_page, ui_gateway, ui_gateway.user_key, bypass_csp=True)
    page = tab.page
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    if name == "tool-call":
        page.locator("#settings summary").click()
        page.get_by_test_id("tools").fill(json.dumps(TOOLS))
        page.get_by_test_id("tools").dispatch_event("change")
    send(page, "show me", model=f"xss-{name}")
    wait_idle(page)
    answer = last_answer(page)
    expect(answer).to_be_visible()
    if name == "tool-call":
        expect(answer.locator(".tool-call summary")).to_contain_text("lookup")
        expect(answer.locator(".tool-call code")).to_contain_text("<script>")  # shown as text
    for link in answer.locator("a, svg text").all():
        link.click(no_wait_after=True)
    expect(answer).to_be_visible()  # still the same document
    body = page.locator("#messages")
    # nothing executable made it into the DOM ...
    assert body.locator("script, iframe, form, meta, style, object, embed").count() == 0
    handlers = page.evaluate(
        """() => [...document.querySelectorAll('#messages *')].flatMap(el =>
            [...el.attributes].filter(a => /^on/i.test(a.name) || /^\\s*javascript:/i.test(a.value))
              .map(a => el.tagName + ' ' + a.name))"""
    )
    assert handlers == []
    # ... and nothing ran
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    assert page.url.startswith(ui_gateway.base_url + "/ui")
    tab.assert_no_errors()


def test_the_xss_hook_sees_an_unsanitised_payload(
    open_page: Callable[..., Tab], ui_gateway: UIGateway
) -> None:
    """The check above can fail: the same payload inserted without the sanitiser runs."""
    tab = open_page(ui_gateway.base_url + "/ui", bypass_csp=True)
    tab.page.evaluate(
        """() => { const d = document.createElement('div');
        d.innerHTML = '<img src=x onerror="window.__xss = \\'raw\\'">';
        document.body.append(d); }"""
    )
    tab.page.wait_for_function("window.__xss === 'raw'")


def test_security_headers_on_the_pages(ui_gateway: UIGateway) -> None:
    for path in ["/ui", "/ui/chat/chat.js", "/ui/vendor/dompurify/purify.es.js", "/ui/nope.js"]:
        r = httpx.get(ui_gateway.base_url + path, timeout=10)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "http" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"


def test_the_csp_refuses_inline_script(
    open_page: Callable[..., Tab], ui_gateway: UIGateway
) -> None:
    tab = open_page(ui_gateway.base_url + "/ui")
    tab.page.evaluate(
        """() => {
        document.addEventListener('securitypolicyviolation', e => {
            window.__refused = e.effectiveDirective; });
        const d = document.createElement('div');
        d.innerHTML = '<img src=x onerror="window.__xss = 1">';
        document.body.append(d); }"""
    )
    # the browser refused the handler under the page's policy, and it did not run
    tab.page.wait_for_function("window.__refused !== undefined")
    assert tab.page.evaluate("window.__refused").startswith("script-src")
    assert tab.page.evaluate("window.__xss") is None


def test_phone_width_language_and_attribution(
    open_page: Callable[..., Tab], ui_gateway: UIGateway
) -> None:
    tab = sign_in(
        open_page, ui_gateway, ui_gateway.user_key,
        viewport={"width": 375, "height": 740}, locale="zh-CN",
    )  # fmt: skip
    page = tab.page
    expect(page.get_by_test_id("send")).to_have_text("发送")  # navigator.language
    expect(page.locator("footer")).to_contain_text("由 Qwen 提供支持")
    send(page, "手机上的问题", model="md")
    wait_idle(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    for control in ["prompt", "send", "model"]:
        box = page.get_by_test_id(control).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, control
    page.locator("#toggle-sidebar").click()
    expect(page.get_by_test_id("new-chat")).to_be_in_viewport()
    page.get_by_test_id("new-chat").click()  # closes the sidebar again
    expect(page.get_by_test_id("new-chat")).not_to_be_in_viewport()
    page.get_by_test_id("lang").click()
    expect(page.get_by_test_id("send")).to_have_text("Send")
    expect(page.locator("footer")).to_contain_text("Powered by Qwen")
    tab.assert_no_errors()


def test_light_and_dark_themes(
    open_page: Callable[..., Tab], ui_gateway: UIGateway, tmp_path: Path
) -> None:
    tab = sign_in(
        open_page, ui_gateway, ui_gateway.user_key,
        viewport={"width": 1100, "height": 720}, color_scheme="light", locale="en-US",
    )  # fmt: skip
    page = tab.page
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    send(page, "Show me some Markdown", model="md")
    wait_idle(page)
    background = "getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    page.screenshot(path=str(tmp_path / "chat-light.png"))
    page.get_by_test_id("theme").click()
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    dark = page.evaluate(background)
    assert light != dark
    page.screenshot(path=str(tmp_path / "chat-dark.png"))
    page.reload()  # the choice is remembered
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    # prefers-color-scheme is the default
    other = open_page(ui_gateway.base_url + "/ui", color_scheme="dark")
    expect(other.page.locator("html")).to_have_attribute("data-theme", "dark")
    out = os.environ.get("QG_UI_SCREENSHOTS")  # e.g. docs/img, to refresh the README's images
    if out:
        for name in ["chat-light.png", "chat-dark.png"]:
            shutil.copy(tmp_path / name, Path(out) / name)
    tab.assert_no_errors()


def test_no_auth_gateway_needs_no_key(open_page: Callable[..., Tab], server: Server) -> None:
    tab = open_page(server.base_url + "/ui")  # the suite's --no-auth server
    page = tab.page
    expect(page.get_by_test_id("prompt")).to_be_visible()
    expect(page.get_by_test_id("sign-out")).to_be_hidden()
    expect(page.get_by_test_id("model")).to_have_value("qwen2.5-tiny")
    page.locator("#settings summary").click()
    page.get_by_test_id("max-tokens").fill("5")
    send(page, "hello")
    wait_idle(page)
    expect(last_answer(page).locator(".meta")).to_contain_text("5 completion tokens")
    tab.assert_no_errors()
