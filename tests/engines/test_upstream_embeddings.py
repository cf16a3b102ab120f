"""The ``openai`` engine's embeddings against a real uvicorn server that misbehaves on purpose
(a fault injector, named so): the body it sends, vectors put back in ``index`` order, and each
broken answer an :class:`UpstreamError` (502), never a wrong vector."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qwen_gateway.core.types import EmbeddingRequest
from qwen_gateway.engines.openai_upstream import PLUGIN, OpenAIUpstreamEngine, UpstreamConfig
from qwen_gateway.engines.plugin import EngineContext
from qwen_gateway.errors import InvalidRequest, UpstreamError
from support.server import free_port


class FaultyEmbeddingUpstream:
    """/v1/embeddings whose ``model`` picks the behaviour: ``ok``, ``reversed`` (data in
    reverse order, with indices), ``short`` (one vector missing), ``garbage`` (not JSON),
    ``500``, ``400`` (names ``input``), ``large`` (1536 floats per input, the body sent in
    many small writes), ``no-usage`` (no ``usage``). Bodies it got are kept in ``bodies``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()

        async def embeddings(request: Request) -> Response:
            body = json.loads(await request.body())
            self.bodies.append(body)
            model, n = body["model"], len(body["input"])
            data = [{"object": "embedding", "index": i, "embedding": [float(i), 0.5]}
                    for i in range(n)]  # fmt: skip
            usage = {"prompt_tokens": 3 * n, "total_tokens": 3 * n}
            if model == "large":
                data = [{"object": "embedding", "index": i,
                         "embedding": [i + k / 1536.123 for k in range(1536)]}
                        for i in range(n)]  # fmt: skip
                whole = json.dumps({"object": "list", "data": data, "usage": usage}).encode()

                async def pieces() -> AsyncIterator[bytes]:
                    for at in range(0, len(whole), 16 * 1024):
                        yield whole[at : at + 16 * 1024]

                return StreamingResponse(pieces(), media_type="application/json")
            if model == "no-usage":
                return JSONResponse({"object": "list", "data": data, "model": model})
            if model == "reversed":
                data.reverse()
            elif model == "short":
                data.pop()
            elif model == "garbage":
                return Response(b"{not json", media_type="application/json")
            elif model == "500":
                return JSONResponse({"error": {"message": "internal detail"}}, status_code=500)
            elif model == "400":
                error = {"message": "bad input", "type": "invalid_request_error",
                         "param": "input", "code": None}  # fmt: skip
                return JSONResponse({"error": error}, status_code=400)
            return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})

        async def models(_: Request) -> Response:
            return JSONResponse({"object": "list", "data": []})

        app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                                Route("/v1/models", models)])  # fmt: skip
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                lifespan="off")  # fmt: skip
        self._server = uvicorn.Server(config)

    @contextmanager
    def running(self) -> Iterator[FaultyEmbeddingUpstream]:
        thread = threading.Thread(target=self._server.run, daemon=True)
        thread.start()
        try:
            while not self._server.started:
                if not thread.is_alive():
                    raise RuntimeError("FaultyEmbeddingUpstream failed to start")
                threading.Event().wait(0.02)  # polling for start-up, not synchronising steps
            yield self
        finally:
            self._server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultyEmbeddingUpstream]:
    with FaultyEmbeddingUpstream().running() as server:
        yield server


@pytest.fixture
async def engines(upstream: FaultyEmbeddingUpstream) -> AsyncIterator[dict[str, Any]]:
    built: dict[str, Any] = {}

    async def engine(model: str, **cfg: Any) -> OpenAIUpstreamEngine:
        config = UpstreamConfig(base_url=f"http://127.0.0.1:{upstream.port}/v1", model=model,
                                task="embed", max_retries=0, **cfg)  # fmt: skip
        made = await PLUGIN.create(config, EngineContext("served"))
        assert isinstance(made, OpenAIUpstreamEngine)
        built[f"{model}{len(built)}"] = made
        return made

    yield {"make": engine}
    for made in built.values():
        await made.aclose()


def _floats(vector: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(vector) // 4}f", vector)


async def test_the_body_maps_the_model_and_vectors_come_back_in_order(
    upstream: FaultyEmbeddingUpstream, engines: dict[str, Any]
) -> None:
    ok = await engines["make"]("ok", supports_dimensions=True)
    assert ok.info.task == "embed" and not ok.info.supports_tools
    result = await ok.embed(
        EmbeddingRequest("served", ("a", (1, 2)), dimensions=2, user="u1", request_id="r")
    )
    assert upstream.bodies[-1] == {
        "model": "ok", "input": ["a", [1, 2]], "encoding_format": "float", "dimensions": 2,
        "user": "u1",
    }  # fmt: skip
    assert [_floats(v) for v in result.vectors] == [(0.0, 0.5), (1.0, 0.5)]
    assert result.prompt_tokens == 6
    rev = await engines["make"]("reversed")
    result = await rev.embed(EmbeddingRequest("served", ("a", "b", "c")))
    assert [_floats(v)[0] for v in result.vectors] == [0.0, 1.0, 2.0]


async def test_dimensions_are_refused_before_the_upstream_when_not_supported(
    upstream: FaultyEmbeddingUpstream, engines: dict[str, Any]
) -> None:
    fixed = await engines["make"]("ok")
    sent = len(upstream.bodies)
    with pytest.raises(InvalidRequest) as info:
        await fixed.embed(EmbeddingRequest("served", ("a",), dimensions=1))
    assert info.value.param == "dimensions"
    assert len(upstream.bodies) == sent


@pytest.mark.parametrize("model", ["short", "garbage", "500"])
async def test_a_broken_answer_is_an_upstream_error(engines: dict[str, Any], model: str) -> None:
    engine = await engines["make"](model)
    with pytest.raises(UpstreamError) as info:
        await engine.embed(EmbeddingRequest("served", ("a", "b")))
    assert info.value.status_code == 502
    assert "internal detail" not in info.value.message


async def test_an_upstream_400_keeps_its_param(engines: dict[str, Any]) -> None:
    engine = await engines["make"]("400")
    with pytest.raises(InvalidRequest) as info:
        await engine.embed(EmbeddingRequest("served", ("a",)))
    assert info.value.param == "input"


async def test_a_large_body_sent_in_small_writes_is_read_whole(engines: dict[str, Any]) -> None:
    engine = await engines["make"]("large")
    result = await engine.embed(EmbeddingRequest("served", tuple(f"t{i}" for i in range(64))))
    assert len(result.vectors) == 64
    assert all(len(v) == 1536 * 4 for v in result.vectors)
    assert _floats(result.vectors[63])[0] == 63.0
    assert result.prompt_tokens == 3 * 64


async def test_a_large_body_over_the_cap_is_an_upstream_error(engines: dict[str, Any]) -> None:
    engine = await engines["make"]("large", max_response_bytes=100_000)
    with pytest.raises(UpstreamError) as info:
        await engine.embed(EmbeddingRequest("served", tuple(f"t{i}" for i in range(64))))
    assert "size limit" in info.value.message


async def test_without_usage_the_inputs_are_counted_here(engines: dict[str, Any]) -> None:
    engine = await engines["make"]("no-usage")
    result = await engine.embed(EmbeddingRequest("served", ("Hello world", (1, 2, 3))))
    # "Hello world" is 2 Qwen tokens; each input ends with <|endoftext|>
    assert result.prompt_tokens == (2 + 1) + (3 + 1)
