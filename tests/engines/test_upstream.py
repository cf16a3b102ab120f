"""The OpenAI-upstream engine: against our own real server, and the fault-injection suite
against FaultyUpstream (a deliberately misbehaving server)."""

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
from qwen_gateway.core.types import ChatMessage, ChatRequest, RelayedChunk
from qwen_gateway.engines.base import QUIET
from qwen_gateway.engines.openai_upstream import PLUGIN, UpstreamConfig, _error_from_body
from qwen_gateway.engines.plugin import EngineContext
from support.faulty_upstream import BEHAVIOURS, LARGE_BYTES, FaultyUpstream
from support.fixtures import MODEL, InProcess, open_in_process
from support.metrics import sample
from support.observer import RecordingObserver
from support.server import Server

ASK = [{"role": "user", "content": "Hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
LIMITS = {"backoff": 0.01, "first_token_timeout": 0.5, "idle_timeout": 0.5, "total_timeout": 3,
          "max_response_bytes": 1024 * 1024}  # fmt: skip


@asynccontextmanager
async def relay(
    base_url: str,
    tmp_path: Path,
    *,
    names: tuple[str, ...] | list[str] = ("relayed",),
    model: str | None = None,
    health_interval: float = 5.0,
    observer: RecordingObserver | None = None,
    **cfg: Any,
) -> AsyncIterator[InProcess]:
    """The gateway relaying each of ``names`` to the upstream, built by the openai plug-in."""
    engines = {}
    for name in names:
        config = UpstreamConfig(base_url=base_url, model=model or name, **cfg)
        ctx = EngineContext(name, health_interval=health_interval, observer=observer or QUIET)
        engines[name] = await PLUGIN.create(config, ctx)
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with open_in_process(Container(settings, engines=engines)) as g:  # type: ignore[arg-type]
        yield g


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    with FaultyUpstream().running() as upstream:
        yield upstream


def established_to(port: int) -> int:
    """Open (ESTABLISHED) client sockets of this machine to 127.0.0.1:``port``."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and remote == f"0100007F:{port:04X}":
            count += 1
    return count


async def tokens(g: InProcess, model: str, kind: str) -> float:
    text = (await g.http.get("/metrics")).text
    return sample(text, "qwen_gateway_tokens_total", model=model, kind=kind)


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
        stream = await g.client.chat.completions.create(
            model="relayed", stream=True, stream_options={"include_usage": True}, **args
        )
        chunks = [c async for c in stream]
        assert {c.model for c in chunks} == {"relayed"}  # relayed chunks carry our name
        assert len({c.id for c in chunks}) == 1
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected.choices[0].message.content
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == expected.usage.completion_tokens
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


CASES = ["ok", "no-usage", "429-then-ok", "502-then-ok", "raw-tool-call", "native-tool-call"]


@pytest.mark.parametrize("stream", [False, True])
async def test_well_behaved_and_recoverable_upstreams(
    faulty: FaultyUpstream, tmp_path: Path, stream: bool
) -> None:
    async def ask(model: str, **extra: Any) -> tuple[str, list[Any], str, Any]:
        """(content, tool calls, finish reason, usage) however the answer came."""
        if not stream:
            c = await g.client.chat.completions.create(model=model, messages=ASK, **extra)
            msg = c.choices[0].message
            return msg.content or "", msg.tool_calls or [], str(c.choices[0].finish_reason), c.usage
        text, calls, reason, usage = "", [], "", None
        s = await g.client.chat.completions.create(
            model=model, messages=ASK, stream=True, stream_options={"include_usage": True}, **extra
        )
        async for chunk in s:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                calls += choice.delta.tool_calls or []
                reason = choice.finish_reason or reason
        return text, calls, reason, usage

    before = dict(faulty.attempts)
    async with relay(faulty.base_url, tmp_path, names=CASES, backoff=0.01) as g:
        text, _, reason, usage = await ask("ok")
        assert (text, reason, usage.completion_tokens) == ("Hello world", "stop", 3)
        text, _, _, counted = await ask("no-usage")
        assert text == "Hello world"
        assert counted.completion_tokens == 2  # "Hello world", counted here
        assert counted.prompt_tokens > 0
        for model in ("429-then-ok", "502-then-ok"):
            text, *_ = await ask(model)
            assert text == "Hello world"
            assert faulty.attempts[model] - before.get(model, 0) == 2, model
        for model, city in (("raw-tool-call", "Paris"), ("native-tool-call", "Oslo")):
            text, calls, reason, _ = await ask(model, tools=TOOLS)
            assert reason == "tool_calls", model
            assert text == ""
            named = [c for c in calls if c.function and c.function.name]
            args = "".join(c.function.arguments or "" for c in calls if c.function)
            assert [c.function.name for c in named] == ["get_weather"]
            assert json.loads(args) == {"city": city}
            assert named[0].id.startswith("call_")


# model, status for the client, SDK exception, upstream attempts per request
BEFORE_FIRST_BYTE = [
    ("503-always", 503, openai.InternalServerError, 3),
    ("429-always", 429, openai.RateLimitError, 3),
    ("503-retry-later", 503, openai.InternalServerError, 1),  # Retry-After too long to wait
    ("500", 502, openai.InternalServerError, 1),  # a plain 500 is not retried
    ("400-context", 400, openai.BadRequestError, 1),
    ("404", 404, openai.NotFoundError, 1),
    ("slow-first", 504, openai.InternalServerError, 1),
    ("garbage", 502, openai.InternalServerError, 1),
]


@pytest.mark.parametrize(("model", "status", "sdk_error", "tries"), BEFORE_FIRST_BYTE)
async def test_failures_before_the_first_byte_keep_their_status(
    faulty: FaultyUpstream,
    tmp_path: Path,
    model: str,
    status: int,
    sdk_error: type[Exception],
    tries: int,
) -> None:
    before = faulty.attempts[model]
    async with relay(faulty.base_url, tmp_path, names=[model], **LIMITS) as g:
        resp = await g.http.post("/v1/chat/completions", json={"model": model, "messages": ASK})
        assert resp.status_code == status, resp.text
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        if model == "503-retry-later":
            assert resp.headers["retry-after"] == "120"
        with pytest.raises(sdk_error):
            await g.client.chat.completions.create(model=model, messages=ASK, stream=True)
    assert faulty.attempts[model] - before == 2 * tries


@pytest.mark.parametrize("model", ["huge", "reset", "truncated"])
async def test_broken_whole_answers_are_clean_502s(
    faulty: FaultyUpstream, tmp_path: Path, model: str
) -> None:
    async with relay(faulty.base_url, tmp_path, names=[model], **LIMITS) as g:
        resp = await g.http.post("/v1/chat/completions", json={"model": model, "messages": ASK})
        assert resp.status_code == 502, resp.text
        assert resp.json()["error"]["code"] == "upstream_error"


async def test_a_whole_answer_sent_in_small_writes_is_read_whole(
    faulty: FaultyUpstream, tmp_path: Path
) -> None:
    async with relay(faulty.base_url, tmp_path, names=["large-split"], **LIMITS) as g:
        got = await g.client.chat.completions.create(model="large-split", messages=ASK)
    assert got.choices[0].message.content == "y" * LARGE_BYTES


MID_STREAM = ["stall", "reset", "truncated", "bad-json-mid", "huge"]


@pytest.mark.parametrize("model", MID_STREAM)
async def test_failures_after_the_first_byte_end_with_an_error_event_and_are_accounted(
    faulty: FaultyUpstream, tmp_path: Path, model: str
) -> None:
    async with relay(faulty.base_url, tmp_path, names=[model], **LIMITS) as g:
        body = {"model": model, "messages": ASK, "stream": True}
        async with g.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            frames = [f for f in (await resp.aread()).decode().split("\n\n") if f]
        assert resp.status_code == 200
        error = json.loads(frames[-1].removeprefix("data: "))["error"]
        assert error["type"] == "server_error"
        assert error["code"] == ("timeout" if model == "stall" else "upstream_error")
        assert "data: [DONE]" not in frames
        # what was generated before the failure is accounted: the prompt, and "Hello" where
        # the gateway got it (a reset can arrive with the data still unread: it is lost then)
        assert await tokens(g, model, "prompt") >= 1
        if model != "reset":
            assert await tokens(g, model, "completion") >= 1
        with pytest.raises(openai.APIError):  # the SDK raises on the in-stream error
            async for _ in await g.client.chat.completions.create(
                model=model, messages=ASK, stream=True
            ):
                pass


async def test_forced_tool_calls_cut_short_are_invalid_output(
    faulty: FaultyUpstream, tmp_path: Path
) -> None:
    async with relay(faulty.base_url, tmp_path, names=["cut-tool-call"], **LIMITS) as g:
        body = {"model": "cut-tool-call", "messages": ASK, "tools": TOOLS,
                "tool_choice": "required"}  # fmt: skip
        resp = await g.http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "invalid_model_output"
        auto = await g.http.post("/v1/chat/completions", json={**body, "tool_choice": "auto"})
        assert auto.status_code == 200  # not forced: the call is passed on, as OpenAI would
        assert auto.json()["choices"][0]["finish_reason"] == "tool_calls"


async def test_client_disconnect_closes_the_upstream_connection(
    faulty: FaultyUpstream, tmp_path: Path
) -> None:
    observer = RecordingObserver()
    async with relay(faulty.base_url, tmp_path, names=["endless"], observer=observer) as g:
        engine = g.container.engines["endless"]
        request = ChatRequest("endless", (ChatMessage("user", "x"),), stream=True)
        stream = engine.stream(request)
        async for event in stream:  # up to the first text ("Hello")
            if isinstance(event, RelayedChunk) and event.events:
                break
        await stream.aclose()  # what the SSE response does when the client leaves
        assert await asyncio.to_thread(faulty.disconnected.wait, 10)
        assert observer.running == 0
        assert len(observer.aborts) == 1
        assert request.meter.completion_tokens >= 1  # accounted although cut off


# its own event loop: the session loop also runs the session fixtures' background tasks
@pytest.mark.asyncio(loop_scope="function")
async def test_the_fault_suite_leaves_no_tasks_or_connections(
    faulty: FaultyUpstream, tmp_path: Path
) -> None:
    """Every behaviour, streamed and not, twice; then nothing is left open."""
    names = [b for b in BEHAVIOURS if b not in ("endless", "slow-first", "stall")]
    tasks_before = len(asyncio.all_tasks())
    # no probe overlaps a request here; none of these behaviours waits on a timeout, so they
    # are generous (a loaded machine's GC pauses once outlasted the 0.5 s first-token limit)
    quiet = {**LIMITS, "health_interval": 3600.0, "first_token_timeout": 10.0,
             "idle_timeout": 10.0, "total_timeout": 30.0}  # fmt: skip
    observer = RecordingObserver()
    async with relay(faulty.base_url, tmp_path, names=names, observer=observer, **quiet) as g:
        baseline = asyncio.all_tasks()
        pooled: list[int] = []
        for _ in range(2):
            for model in names:
                for stream in (False, True):
                    body = {"model": model, "messages": ASK, "stream": stream}
                    resp = await g.http.post("/v1/chat/completions", json=body)
                    assert resp.status_code in (200, 400, 404, 429, 502, 503), (model, resp.text)
            # each engine has its own pool and requests run one at a time: at most one
            # connection per engine stays pooled, and a second round opens no more than the
            # first: failed connections were closed, not leaked
            pooled.append(established_to(faulty.port))
            assert pooled[-1] <= len(names)
            assert observer.running == 0
        assert pooled[1] <= pooled[0]
        # the usage writer stores in the background (a batch's session closes in a task of
        # its own): wait until what is queued is written
        await g.container.store.writer.flush()
        assert asyncio.all_tasks() <= baseline, asyncio.all_tasks() - baseline
    assert established_to(faulty.port) == 0
    assert len(asyncio.all_tasks()) == tasks_before


async def test_connections_are_reused(faulty: FaultyUpstream, tmp_path: Path) -> None:
    """Answers read to the end give their connection back to the pool: one serves them all."""
    async with relay(faulty.base_url, tmp_path, names=["ok"], health_interval=3600.0) as g:
        for stream in (False, True, False, True, False):
            body = {"model": "ok", "messages": ASK, "stream": stream}
            assert (await g.http.post("/v1/chat/completions", json=body)).status_code == 200
        assert established_to(faulty.port) == 1  # not 0 (closed each time), not 5 (leaked)


async def test_replica_urls_and_credentials_reach_neither_clients_nor_metrics(
    faulty: FaultyUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = f"127.0.0.1:{faulty.port}"
    replicas = [f"http://svc:TOPSECRET@{host}/v1", f"http://other:TOPSECRET@{host}/v1"]
    tree = {
        "data_dir": str(tmp_path), "auth": {"enabled": False},
        "deployments": [{"name": "up", "engine": "openai", "replicas": replicas,
                         "upstream": {"model": "ok"}}],
    }  # fmt: skip
    async with open_in_process(Container(load_settings(tree, env={}))) as g:
        routes = set()
        for _ in range(4):
            resp = await g.http.post("/v1/chat/completions", json={"model": "up", "messages": ASK})
            assert resp.status_code == 200, resp.text
            routes.add(resp.headers["x-qwen-gateway-route"])
        metrics = (await g.http.get("/metrics")).text
    assert routes <= {"deployment=up; replica=0", "deployment=up; replica=1"}
    assert 'replica="0"' in metrics or 'replica="1"' in metrics
    for shown in (*routes, metrics, caplog.text):
        assert "TOPSECRET" not in shown and host not in shown


@pytest.mark.parametrize(
    ("status", "raw", "code", "message"),
    [
        (401, {"error": {"message": "Incorrect API key provided: sk-up****"}},
         "upstream_auth_failed", "The upstream refused the gateway's credentials (401)."),
        (403, {"error": {"message": "forbidden", "code": "forbidden"}},
         "upstream_auth_failed", "The upstream refused the gateway's credentials (403)."),
        (500, {"error": {"message": "CUDA OOM at /srv/model on 10.0.0.7"}},
         "upstream_error", "The upstream answered 500."),
        (503, {"error": {"message": "pod qwen-7b-2 draining"}},
         "engine_unavailable", "The upstream answered 503."),
        (400, {"error": {"message": "bad image_url http://u:pw@img.internal/x.png"}},
         None, "bad image_url http://img.internal/x.png"),
    ],
)  # fmt: skip
def test_upstream_errors_neither_blame_the_clients_key_nor_leak_upstream_details(
    status: int, raw: dict[str, Any], code: str | None, message: str
) -> None:
    error = _error_from_body(status, raw)
    assert (error.code, error.message) == (code, message)
    assert error.status_code not in (401, 403) and "WWW-Authenticate" not in (error.headers or {})


async def test_the_default_output_limit_is_sent_when_the_prompt_leaves_room_for_it(
    faulty: FaultyUpstream, tmp_path: Path
) -> None:
    """No max_tokens from the client: the upstream is asked for the default (2048) when the
    window (4096) surely has room for it, for what the window leaves when that is less, and the
    bytes of a CJK prompt (3 per character) do not hide the room its tokens leave."""
    async with relay(faulty.base_url, tmp_path, context_window=4096) as g:
        for content, fits in (("Hello", True), ("你好" * 500, True), ("你好" * 2500, False)):
            ask = [{"role": "user", "content": content}]
            await g.client.chat.completions.create(model="relayed", messages=ask)  # type: ignore[arg-type]
            sent = faulty.max_tokens["relayed"]
            if fits:
                assert sent == 2048, (len(content), sent)
            else:
                assert sent is None or sent < 2048, sent
        await g.client.chat.completions.create(model="relayed", messages=ASK, max_tokens=7)  # type: ignore[arg-type]
        assert faulty.max_tokens["relayed"] == 7
