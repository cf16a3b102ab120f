"""Intent routing through the openai SDK with ``model="auto"``: the table of prompts in
Chinese, English and mixed text, follow-ups, the rule classifier and the confidence floor."""

from __future__ import annotations

import threading
from pathlib import Path

import openai
import pytest

from qwen_gateway.core.types import ChatMessage, ChatRequest
from qwen_gateway.routing.intent import INLINE_CHARS, Intent
from qwen_gateway.routing.registry import IntentRoute
from routing.helpers import routed
from support.metrics import sample

DEPLOYMENTS = [{"name": "qwen-general"}, {"name": "qwen-coder"}, {"name": "qwen-math"}]
ROUTES = {"code": "qwen-coder", "math": "qwen-math", "general": "qwen-general"}
TABLE = [
    ("用 Python 写一个快速排序", "qwen-coder"),
    ("Write a SQL query that returns the top 5 customers by total revenue", "qwen-coder"),
    ("帮我写一个正则表达式匹配邮箱地址", "qwen-coder"),
    ("这个 bug 怎么修：TypeError: 'NoneType' object is not subscriptable", "qwen-coder"),
    ("用 matrix exponentiation 求 Fibonacci 数列的第 n 项，写 Python 代码", "qwen-coder"),
    ("Prove that the square root of 2 is irrational", "qwen-math"),
    ("求解方程 x^2 - 5x + 6 = 0", "qwen-math"),
    ("Compute the integral of x * e^x from 0 to 1", "qwen-math"),
    ("一个数的三倍减去七等于二十，这个数是多少？", "qwen-math"),
    ("What is the capital of Australia?", "qwen-general"),
    ("推荐几本适合周末读的小说", "qwen-general"),
    ("How do I make a good cup of pour-over coffee?", "qwen-general"),
]


@pytest.mark.parametrize("stream", [False, True])
async def test_auto_routes_each_prompt_to_its_category(tmp_path: Path, stream: bool) -> None:
    async with routed(tmp_path, DEPLOYMENTS, routing={"intent": {"routes": ROUTES}}) as g:
        for prompt, expected in TABLE:
            messages = [{"role": "user", "content": prompt}]
            raw = await g.client.chat.completions.with_raw_response.create(
                model="auto",
                messages=messages,
                stream=stream,  # type: ignore[arg-type]
            )
            route = raw.headers["x-qwen-gateway-route"]
            if stream:
                models = {chunk.model async for chunk in raw.parse()}  # type: ignore[union-attr]
                assert models == {expected}, prompt
            else:
                assert raw.parse().model == expected, prompt  # type: ignore[union-attr]
            category = expected.removeprefix("qwen-").replace("coder", "code")
            assert route.startswith(f"intent={category} (learned "), route
            assert route.endswith(f"deployment={expected}")
        metrics = (await g.http.get("/metrics")).text
        assert sample(metrics, "qwen_gateway_route_intent_total", model="auto",
                      category="code") == 5  # fmt: skip


async def test_a_follow_up_is_classified_with_the_turn_before(tmp_path: Path) -> None:
    async with routed(tmp_path, DEPLOYMENTS, routing={"intent": {"routes": ROUTES}}) as g:
        messages = [
            {"role": "user", "content": "Write a Python function that reverses a linked list"},
            {"role": "assistant", "content": "def reverse(head): ..."},
            {"role": "user", "content": "now in Go"},
        ]
        completion = await g.client.chat.completions.create(model="auto", messages=messages)  # type: ignore[arg-type]
        assert completion.model == "qwen-coder"
        legacy = await g.client.completions.create(model="auto", prompt="求解方程 2x + 3 = 11")
        assert legacy.model == "qwen-math"


async def test_the_rule_classifier_and_the_confidence_floor(tmp_path: Path) -> None:
    # an operator's own categories: "chat" is the default, and no rule names it
    routes = {"code": "qwen-coder", "math": "qwen-math", "chat": "qwen-general"}
    rules = {"classifier": "rules", "routes": routes, "default": "chat",
             "rules": {"code": [r"\bgolang\b"], "math": ["方程"]}}  # fmt: skip
    async with routed(tmp_path, DEPLOYMENTS, routing={"intent": rules}) as g:
        for prompt, expected in [("golang generics?", "qwen-coder"), ("解方程", "qwen-math"),
                                 ("用 Python 写排序", "qwen-general")]:  # fmt: skip
            completion = await g.client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": prompt}]
            )
            assert completion.model == expected, prompt
    # nearly nothing is that sure: the default category, here an operator's own
    floor = {"routes": {**ROUTES, "chat": "qwen-math"}, "threshold": 0.9999, "default": "chat"}
    async with routed(tmp_path / "floor", DEPLOYMENTS, routing={"intent": floor}) as g:
        completion = await g.client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "帮我写一个正则表达式匹配邮箱地址"}]
        )
        assert completion.model == "qwen-math"


async def test_an_intent_route_may_lead_to_a_split(tmp_path: Path) -> None:
    deployments = [*DEPLOYMENTS, {"name": "qwen-coder-next"}]
    routing = {
        "intent": {"routes": {**ROUTES, "code": "coder"}},
        "splits": {"coder": {"arms": {"qwen-coder": 1, "qwen-coder-next": 1}, "sticky": "user"}},
    }
    async with routed(tmp_path, deployments, routing=routing) as g:
        raw = await g.client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "用 Python 写一个快速排序"}],
            user="alice",
        )  # fmt: skip
        assert raw.parse().model in ("qwen-coder", "qwen-coder-next")
        assert "; split=coder:qwen-coder" in raw.headers["x-qwen-gateway-route"]
        with pytest.raises(openai.NotFoundError):
            await g.client.chat.completions.create(
                model="auto-unknown", messages=[{"role": "user", "content": "hi"}]
            )


class _Where:
    """A classifier that notes the thread it runs in."""

    name = "where"

    def __init__(self) -> None:
        self.threads: list[int] = []

    def classify(self, text: str) -> Intent:
        self.threads.append(threading.get_ident())
        return Intent("code", 1.0, self.name)


async def test_a_prompt_is_classified_on_the_event_loop_unless_it_is_long() -> None:
    where = _Where()
    route = IntentRoute("auto", ROUTES, classifier=where)
    for text in ("用 Python 写一个快速排序", "x" * (INLINE_CHARS + 1)):
        request = ChatRequest("auto", (ChatMessage("user", text),))
        assert (await route.classify(request)).category == "code"
    loop_thread = threading.get_ident()
    assert where.threads[0] == loop_thread  # no hop to a worker thread: no wait for the GIL
    assert where.threads[1] != loop_thread  # a long text would hold up the event loop
