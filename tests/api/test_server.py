"""End to end against a real ``qwen-gateway serve`` process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from support.fixtures import MODEL
from support.metrics import sample
from support.server import Server, running_server


def _metric(server: Server, name: str) -> float:
    return sample(httpx.get(server.base_url + "/metrics").text, name, model=MODEL)


def test_sync_sdk_chat_stream_and_completions(server: Server) -> None:
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4)
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert [m.id for m in client.models.list()] == [MODEL]


async def test_async_sdk_streams_incrementally(server: Server) -> None:
    client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=12, stream=True
    )
    roles, reasons, pieces = [], [], 0
    async for chunk in stream:
        for choice in chunk.choices:
            roles.append(choice.delta.role)
            reasons.append(choice.finish_reason)
            pieces += bool(choice.delta.content)
    assert roles[0] == "assistant"
    assert reasons[-1] == "length"
    assert pieces >= 2
    await client.close()


def test_request_id_and_access_log_without_text(server: Server) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    rid = f"test-{uuid.uuid4().hex[:12]}"
    resp = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"X-Request-ID": rid},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": f"remember {canary}"}],
            "max_tokens": 16,
        },
        timeout=60,
    )
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == rid
    output = resp.json()["choices"][0]["message"]["content"]
    generated = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        timeout=60,
    )
    assert generated.headers["x-request-id"].startswith("req_")
    lines = server.log_lines()
    access = [json.loads(line) for line in lines if '"event":"access"' in line]
    mine = [entry for entry in access if entry["request_id"] == rid]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["status"] == 200
    assert entry["model"] == MODEL
    assert entry["completion_tokens"] == 16
    assert entry["prompt_tokens"] > 0
    assert entry["ttft_ms"] is not None and entry["latency_ms"] >= entry["ttft_ms"]
    log_text = "\n".join(lines)
    assert canary not in log_text
    assert output.strip() == "" or output not in log_text
    assert canary not in httpx.get(server.base_url + "/metrics").text


def test_disconnect_mid_stream_frees_the_slot_within_one_step(server: Server) -> None:
    aborted_before = _metric(server, "qwen_gateway_engine_aborted_requests_total")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write forever"}],
        "stream": True,
    }  # no max_tokens: up to the 8192-token output limit
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
    # The connection is closed; the engine must notice and free the slot.
    for _ in range(500):
        if _metric(server, "qwen_gateway_engine_aborted_requests_total") > aborted_before:
            break
        time.sleep(0.02)  # polling the server's counters, bounded
    assert _metric(server, "qwen_gateway_engine_aborted_requests_total") == aborted_before + 1
    assert _metric(server, "qwen_gateway_engine_running_sequences") == 0
    assert _metric(server, "qwen_gateway_engine_abort_delay_steps_max") <= 1


async def test_disconnect_while_waiting_for_a_full_response_aborts(server: Server) -> None:
    aborted_before = _metric(server, "qwen_gateway_engine_aborted_requests_total")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
        request = asyncio.ensure_future(
            http.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "Essay"}]},
            )
        )
        async with httpx.AsyncClient(base_url=server.base_url) as probe:
            for _ in range(500):
                text = (await probe.get("/metrics")).text
                if sample(text, "qwen_gateway_engine_running_sequences", model=MODEL) >= 1:
                    break
                await asyncio.sleep(0.02)
            request.cancel()  # closes the connection
            with pytest.raises(asyncio.CancelledError):
                await request
            for _ in range(500):
                text = (await probe.get("/metrics")).text
                aborted = sample(text, "qwen_gateway_engine_aborted_requests_total", model=MODEL)
                if aborted > aborted_before:
                    break
                await asyncio.sleep(0.02)
    assert aborted == aborted_before + 1
    assert sample(text, "qwen_gateway_engine_running_sequences", model=MODEL) == 0
    assert sample(text, "qwen_gateway_engine_abort_delay_steps_max", model=MODEL) <= 1


def test_operational_endpoints(server: Server) -> None:
    base = server.base_url
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    assert httpx.get(base + "/ready").json() == {"status": "ready"}
    docs = httpx.get(base + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(base + "/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert "messages" in json.dumps(body)
    metrics = httpx.get(base + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "qwen_gateway_requests_total",
        "qwen_gateway_request_duration_seconds",
        "qwen_gateway_time_to_first_token_seconds",
        "qwen_gateway_tokens_total",
        "qwen_gateway_requests_in_flight",
        "qwen_gateway_engine_batch_size",
        "qwen_gateway_engine_queue_depth",
    ):
        assert name in metrics.text


def test_static_api_key_is_required_when_configured(tiny_model_dir: Path, tmp_path: Path) -> None:
    key = "sk-test-" + uuid.uuid4().hex
    with running_server(tiny_model_dir, tmp_path / "log", env={"QWEN_GATEWAY_API_KEY": key}) as s:
        denied = httpx.get(s.base_url + "/v1/models", headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401
        assert denied.json()["error"]["type"] == "authentication_error"
        assert denied.headers["www-authenticate"] == "Bearer"
        assert httpx.get(s.base_url + "/v1/models").status_code == 401
        assert httpx.get(s.base_url + "/health").status_code == 200
        bad = openai.OpenAI(base_url=s.base_url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=s.base_url + "/v1", api_key=key, max_retries=0)
        assert [m.id for m in good.models.list()] == [MODEL]
        assert key not in (tmp_path / "log").read_text()


def test_schema_text_cannot_forge_log_lines(server: Server) -> None:
    forged = '{"level":"info","logger":"qwen_gateway.access","request_id":"FORGED","status":201}'
    schema = {"type": "object", "properties": {"a": {"$ref": f"x\n{forged}\n"}}}
    before = len(server.log_lines())
    resp = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 4,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "f", "schema": schema},
            },
        },
        timeout=60,
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "response_format"
    ok = httpx.post(
        server.base_url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
        timeout=60,
    )
    assert ok.status_code == 200
    new = [json.loads(line) for line in server.log_lines()[before:] if line.strip()]
    assert not [entry for entry in new if entry.get("request_id") == "FORGED"]
