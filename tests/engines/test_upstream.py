"""The OpenAI-upstream engine: against our own real server, and against FaultyUpstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.openai_upstream import OpenAIUpstreamEngine, UpstreamConfig
from support.faulty_upstream import FaultyUpstream
from support.fixtures import MODEL, InProcess, open_in_process
from support.server import Server

ASK = [{"role": "user", "content": "Hello"}]


@asynccontextmanager
async def relay(base_url: str, tmp_path: Path, **cfg: Any) -> AsyncIterator[InProcess]:
    names = cfg.pop("names", ["relayed"])
    engines = {
        name: OpenAIUpstreamEngine(
            UpstreamConfig(base_url=base_url, served_name=name, model=cfg.get("model", name),
                           **{k: v for k, v in cfg.items() if k != "model"})
        )
        for name in names
    }  # fmt: skip
    settings = load_settings({"data_dir": str(tmp_path)}, env={})
    async with open_in_process(Container(settings, engines=engines)) as g:  # type: ignore[arg-type]
        yield g


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    with FaultyUpstream().running() as upstream:
        yield upstream


async def test_relaying_a_real_gateway_gives_the_same_answers(
    server: Server, tmp_path: Path
) -> None:
    args: dict[str, Any] = {"messages": ASK, "max_tokens": 12, "temperature": 0}
    async with openai.AsyncOpenAI(
        base_url=server.base_url + "/v1", api_key="x", max_retries=0
    ) as direct:
        expected = await direct.chat.completions.create(model=MODEL, **args)
    async with relay(server.base_url + "/v1", tmp_path, model=MODEL) as g:
        got = await g.client.chat.completions.create(model="relayed", **args)
        assert got.model == "relayed"
        assert got.choices[0].message.content == expected.choices[0].message.content
        assert got.usage is not None and expected.usage is not None
        assert got.usage.prompt_tokens == expected.usage.prompt_tokens
        assert got.usage.completion_tokens == expected.usage.completion_tokens
        stream = await g.client.chat.completions.create(model="relayed", stream=True, **args)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == expected.choices[0].message.content
        forced = await g.client.chat.completions.create(
            model="relayed", messages=ASK, max_tokens=80, tool_choice="required",
            tools=[{"type": "function", "function": {"name": "ping", "parameters": {
                "type": "object", "properties": {"n": {"type": "integer"}},
                "required": ["n"], "additionalProperties": False}}}],
        )  # fmt: skip
        call = (forced.choices[0].message.tool_calls or [])[0]
        assert call.function.name == "ping"
        assert isinstance(json.loads(call.function.arguments)["n"], int)
        too_long = await g.http.post(
            "/v1/chat/completions",
            json={"model": "relayed", "messages": [{"role": "user", "content": "hi " * 33_000}]},
        )
        assert too_long.status_code == 400
        assert too_long.json()["error"]["code"] == "context_length_exceeded"
        assert (await g.http.get("/ready")).status_code == 200


CASES = ["ok", "no-usage", "429-then-ok", "raw-tool-call", "native-tool-call"]


async def test_well_behaved_and_recoverable_upstreams(
    faulty: FaultyUpstream, tmp_path: Path
) -> None:
    async with relay(faulty.base_url, tmp_path, names=CASES, backoff=0.01) as g:
        ok = await g.client.chat.completions.create(model="ok", messages=ASK)
        assert ok.choices[0].message.content == "Hello world"
        assert ok.usage is not None and ok.usage.completion_tokens == 3
        counted = await g.client.chat.completions.create(model="no-usage", messages=ASK)
        assert counted.usage is not None
        assert counted.usage.completion_tokens == 2  # "Hello world", counted here
        assert counted.usage.prompt_tokens > 0
        retried = await g.client.chat.completions.create(model="429-then-ok", messages=ASK)
        assert retried.choices[0].message.content == "Hello world"
        assert faulty.attempts["429-then-ok"] == 2
        tools = [{"type": "function", "function": {"name": "get_weather"}}]
        for model, city in (("raw-tool-call", "Paris"), ("native-tool-call", "Oslo")):
            c = await g.client.chat.completions.create(model=model, messages=ASK, tools=tools)  # type: ignore[arg-type]
            assert c.choices[0].finish_reason == "tool_calls", model
            assert c.choices[0].message.content in (None, "")
            call = (c.choices[0].message.tool_calls or [])[0]
            assert (call.function.name, json.loads(call.function.arguments)) == (
                "get_weather", {"city": city},
            )  # fmt: skip


FAILURES = [
    ("503-always", 503, openai.InternalServerError),
    ("400-context", 400, openai.BadRequestError),
    ("404", 404, openai.NotFoundError),
    ("slow-first", 504, openai.InternalServerError),
]


@pytest.mark.parametrize(("model", "status", "sdk_error"), FAILURES)
async def test_failures_before_the_first_byte_keep_their_status(
    faulty: FaultyUpstream, tmp_path: Path, model: str, status: int, sdk_error: type[Exception]
) -> None:
    async with relay(
        faulty.base_url, tmp_path, names=[model], backoff=0.01, first_token_timeout=0.5
    ) as g:
        resp = await g.http.post("/v1/chat/completions", json={"model": model, "messages": ASK})
        assert resp.status_code == status, resp.text
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        with pytest.raises(sdk_error):
            await g.client.chat.completions.create(model=model, messages=ASK, stream=True)
    if model == "503-always":
        assert faulty.attempts[model] == 6  # 1 + 2 retries, twice


@pytest.mark.parametrize("model", ["stall", "reset", "garbage"])
async def test_failures_after_the_first_byte_end_with_an_error_event(
    faulty: FaultyUpstream, tmp_path: Path, model: str
) -> None:
    async with relay(faulty.base_url, tmp_path, names=[model], idle_timeout=0.5) as g:
        body = {"model": model, "messages": ASK, "stream": True}
        async with g.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            frames = [f for f in (await resp.aread()).decode().split("\n\n") if f]
        if model == "garbage":  # nothing valid came: a proper error status instead
            assert resp.status_code == 502
            return
        assert resp.status_code == 200
        error = json.loads(frames[-1][6:])["error"]
        assert error["type"] == "server_error"
        assert error["code"] == ("timeout" if model == "stall" else "upstream_error")
        assert "data: [DONE]" not in frames


async def test_client_disconnect_closes_the_upstream_connection(
    faulty: FaultyUpstream, tmp_path: Path
) -> None:
    async with relay(faulty.base_url, tmp_path, names=["endless"]) as g:
        engine = g.container.engines["endless"]
        stream = engine.stream(
            __import__("qwen_gateway.core.types", fromlist=["ChatRequest"]).ChatRequest(
                "endless",
                (
                    __import__("qwen_gateway.core.types", fromlist=["ChatMessage"]).ChatMessage(
                        "user", "x"
                    ),
                ),
            )
        )
        first = await anext(stream)
        assert first is not None
        await stream.aclose()  # what the SSE response does when the client leaves
        assert await asyncio.to_thread(faulty.disconnected.wait, 10)
        assert engine.stats().running == 0
        assert engine.stats().aborted == 1
