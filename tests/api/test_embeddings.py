"""POST /v1/embeddings against real ``qwen-gateway serve`` processes, through the official
openai SDK and LangChain: the embedded default (``qwen-tiny-embed`` beside the tiny chat
model), and a second gateway relaying to it as its upstream."""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from support.server import Server, free_port, running_command
from support.spec import validate

pytestmark = pytest.mark.e2e

EMBED = "qwen-tiny-embed"
CHAT = "qwen2.5-tiny"
TEXTS = ["The quick brown fox", "jumps over the lazy dog.", "你好，世界"]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``serve`` with no model and no config: the embedded default, both tiny models made at
    its first start."""
    where = tmp_path_factory.mktemp("embedded-default")
    env = {"QWEN_GATEWAY_DATA_DIR": str(where / "data")}
    port = free_port()
    with running_command(["--port", str(port)], port, where / "serve.log", env=env) as server:
        yield server


@pytest.fixture(scope="module")
def relay_server(
    default_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A second gateway whose embedding deployments are the first one's, over ``engine: openai``
    (the model name mapped); one of them does not take ``dimensions``."""
    where = tmp_path_factory.mktemp("relay")
    upstream = {"base_url": default_server.base_url + "/v1", "model": EMBED}
    config = {
        "deployments": [
            {"name": "remote-embed", "aliases": ["embedder"], "engine": "openai", "task": "embed",
             "supports_dimensions": True, "upstream": upstream},
            {"name": "remote-fixed", "engine": "openai", "task": "embed", "upstream": upstream},
        ]
    }  # fmt: skip
    path = where / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    with running_command(["--port", str(port), "--config", str(path)], port, where / "serve.log",
                         env={"QWEN_GATEWAY_DATA_DIR": str(where / "data")}) as server:  # fmt: skip
        yield server


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


def _raw(server: Server, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        return http.post("/v1/embeddings", json=body)


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "given",
    [
        "The quick brown fox",
        TEXTS,
        [785, 3974, 13876, 38835],
        [[785, 3974], [13876, 38835, 13]],
    ],
    ids=["string", "strings", "token-ids", "token-id-lists"],
)
def test_every_input_form_answers_the_openai_schema(default_server: Server, given: Any) -> None:
    for encoding in ("float", "base64"):
        resp = _raw(default_server, {"model": EMBED, "input": given, "encoding_format": encoding})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        if encoding == "float":
            validate("CreateEmbeddingResponse", body)
        else:  # the published schema describes the float form only: the same, but strings
            assert all(len(base64.b64decode(d["embedding"])) == 64 * 4 for d in body["data"])
            floats = [{**d, "embedding": [0.0]} for d in body["data"]]
            validate("CreateEmbeddingResponse", {**body, "data": floats})
        count = 1 if isinstance(given, str) or isinstance(given[0], int) else len(given)
        assert [d["index"] for d in body["data"]] == list(range(count))
        assert body["model"] == EMBED and body["object"] == "list"
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    with _client(default_server) as client:
        result = client.embeddings.create(model=EMBED, input=given)
    assert len(result.data) == count
    assert all(len(d.embedding) == 64 for d in result.data)


def test_float_and_base64_give_the_same_unit_vectors(default_server: Server) -> None:
    with _client(default_server) as client:
        floats = client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
        decoded = client.embeddings.create(model=EMBED, input=TEXTS)  # the SDK asks for base64
    body = _raw(default_server, {"model": EMBED, "input": TEXTS, "encoding_format": "base64"})
    raw_b64 = body.json()["data"][0]["embedding"]
    assert isinstance(raw_b64, str)
    by_hand = array("f")
    by_hand.frombytes(base64.b64decode(raw_b64))  # little-endian float32, as OpenAI sends
    assert _close(by_hand.tolist(), floats.data[0].embedding, 0.0)
    for f, d in zip(floats.data, decoded.data, strict=True):
        assert _close(f.embedding, d.embedding, 0.0)
        assert abs(_norm(f.embedding) - 1.0) < 1e-5
    assert not _close(floats.data[0].embedding, floats.data[1].embedding, 1e-3)


def test_a_text_has_the_same_vector_alone_and_in_a_batch(default_server: Server) -> None:
    with _client(default_server) as client:
        batch = client.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
        for i, text in enumerate(TEXTS):
            alone = client.embeddings.create(model=EMBED, input=text, encoding_format="float")
            assert _close(alone.data[0].embedding, batch.data[i].embedding)


def test_dimensions_truncate_and_renormalise(default_server: Server) -> None:
    with _client(default_server) as client:
        full = client.embeddings.create(model=EMBED, input=TEXTS[0], encoding_format="float")
        short = client.embeddings.create(model=EMBED, input=TEXTS[0], dimensions=16,
                                         encoding_format="float")  # fmt: skip
    head = full.data[0].embedding[:16]
    scale = _norm(head)
    assert len(short.data[0].embedding) == 16
    assert _close(short.data[0].embedding, [v / scale for v in head])
    assert abs(_norm(short.data[0].embedding) - 1.0) < 1e-5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": EMBED, "input": ""}, "input"),
        ({"model": EMBED, "input": []}, "input"),
        ({"model": EMBED, "input": ["ok", ""]}, "input"),
        ({"model": EMBED, "input": [[]]}, "input"),
        ({"model": EMBED, "input": ["x"] * 2049}, "input"),
        ({"model": EMBED, "input": "word " * 33_000}, "input"),  # past the 32768-token window
        ({"model": EMBED, "input": [1, "mixed"]}, "input"),
        ({"model": EMBED, "input": [-1]}, "input"),
        ({"model": EMBED}, "input"),
        ({"model": EMBED, "input": "x", "dimensions": 65}, "dimensions"),
        ({"model": EMBED, "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": EMBED, "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": CHAT, "input": "x"}, "model"),
    ],
)
def test_bad_requests_are_openai_400s_naming_the_param(
    default_server: Server, body: dict[str, Any], param: str
) -> None:
    resp = _raw(default_server, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]


def test_the_sdk_sees_a_chat_model_refused_and_an_embedding_model_refused_in_chat(
    default_server: Server,
) -> None:
    with _client(default_server) as client:
        with pytest.raises(openai.BadRequestError) as embed:
            client.embeddings.create(model=CHAT, input="hello")
        assert "does not support embeddings" in embed.value.message
        with pytest.raises(openai.BadRequestError) as chat:
            client.chat.completions.create(
                model=EMBED, messages=[{"role": "user", "content": "hi"}]
            )
        assert chat.value.body["param"] == "model"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="no-such-model", input="hello")
        models = {m.id for m in client.models.list()}
    assert {CHAT, EMBED} <= models


def test_metrics_count_embedding_requests_and_inputs(default_server: Server) -> None:
    with _client(default_server) as client:
        client.embeddings.create(model=EMBED, input=["a", "b", "c"])
    with httpx.Client(base_url=default_server.base_url) as http:
        text = http.get("/metrics").text
    requests = [ln for ln in text.splitlines()
                if ln.startswith(f'qwen_gateway_embedding_requests_total{{model="{EMBED}"}}')]  # fmt: skip
    inputs = [ln for ln in text.splitlines()
              if ln.startswith(f'qwen_gateway_embedding_inputs_total{{model="{EMBED}"}}')]  # fmt: skip
    assert requests and float(requests[0].split()[-1]) >= 1
    assert inputs and float(inputs[0].split()[-1]) >= 3


def test_langchain_openai_embeddings(default_server: Server) -> None:
    from langchain_openai import OpenAIEmbeddings

    with httpx.Client() as http:
        embeddings = OpenAIEmbeddings(
            model=EMBED,
            base_url=default_server.base_url + "/v1",
            api_key="unused",  # type: ignore[arg-type]
            check_embedding_ctx_length=False,
            http_client=http,
            max_retries=0,
        )
        docs = embeddings.embed_documents(TEXTS)
        query = embeddings.embed_query(TEXTS[1])
    assert len(docs) == 3 and all(len(v) == 64 for v in docs)
    assert _close(query, docs[1])
    assert abs(_norm(query) - 1.0) < 1e-5


def test_an_upstream_gateway_serves_the_same_vectors(
    default_server: Server, relay_server: Server
) -> None:
    with _client(default_server) as direct, _client(relay_server) as relayed:
        want = direct.embeddings.create(model=EMBED, input=TEXTS, encoding_format="float")
        for name in ("remote-embed", "embedder"):  # the deployment and its alias
            got = relayed.embeddings.create(model=name, input=TEXTS, encoding_format="float")
            assert got.model == "remote-embed"
            for g, w in zip(got.data, want.data, strict=True):
                assert _close(g.embedding, w.embedding, 0.0)
            assert got.usage.prompt_tokens == want.usage.prompt_tokens
        ids = relayed.embeddings.create(model="remote-embed", input=[[785, 3974]])
        assert len(ids.data[0].embedding) == 64
        short = relayed.embeddings.create(model="remote-embed", input=TEXTS[0], dimensions=8)
        assert len(short.data[0].embedding) == 8
        with pytest.raises(openai.BadRequestError) as fixed:
            relayed.embeddings.create(model="remote-fixed", input="x", dimensions=8)
        assert fixed.value.body["param"] == "dimensions"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as upstream_400:
            relayed.embeddings.create(model="remote-embed", input="x", dimensions=65)
        assert upstream_400.value.body["param"] == "dimensions"  # type: ignore[index]
    resp = _raw(relay_server, {"model": "remote-embed", "input": "x"})
    validate("CreateEmbeddingResponse", resp.json())
