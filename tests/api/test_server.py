"""End to end against a real ``qwen-gateway serve`` process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest

from qwen_gateway.api.app import create_app
from qwen_gateway.api.server import FD_RESERVE, uvicorn_options
from qwen_gateway.config import ServerSettings
from support.fixtures import MODEL, make_container
from support.metrics import sample
from support.server import Server, running_server

T = TypeVar("T")


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
    for page in ("/docs", "/redoc", "/openapi.json"):  # off unless server.docs is set
        assert httpx.get(base + page).status_code == 404, page
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


async def test_docs_setting_serves_the_openapi_document_and_no_cdn_pages(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    container = make_container(tiny_model_dir, tmp_path)
    container.settings.server.docs = True
    transport = httpx.ASGITransport(app=create_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        spec = (await http.get("/openapi.json")).json()
        assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])
        body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
        assert "messages" in json.dumps(body)
        for page in ("/docs", "/redoc"):
            assert (await http.get(page)).status_code == 404, page


def _audited_client(server: Server) -> str:
    """Create a key with a forged X-Forwarded-For; the client address the audit trail shows."""
    created = httpx.post(
        server.base_url + "/admin/keys",
        json={"name": "forwarded"},
        headers={"X-Forwarded-For": "10.9.1.1"},
    )
    assert created.status_code == 201, created.text
    audit = httpx.get(server.base_url + "/admin/audit", params={"limit": 50}).json()["data"]
    return str(next(e for e in audit if e["action"] == "key.create")["client"])


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with running_server(tiny_model_dir, tmp_path / "default.log") as s:
        assert _audited_client(s) == "127.0.0.1"
    trusted = {"QWEN_GATEWAY_SERVER__TRUSTED_PROXIES": "127.0.0.1"}
    with running_server(tiny_model_dir, tmp_path / "proxied.log", env=trusted) as s:
        assert _audited_client(s) == "10.9.1.1"


def test_a_client_that_leaves_a_full_response_is_recorded_as_cancelled(
    server: Server, tmp_path: Path
) -> None:
    rid = f"leave-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Essay"}]})
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        _wait_for(lambda: _metric(server, "qwen_gateway_engine_running_sequences") >= 1)
    entry = _wait_for(lambda: _access_entry(server, rid))
    assert entry["status"] == 499 and entry["cancelled"] is True
    log = "\n".join(server.log_lines())
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    rows = _wait_for(lambda: _usage_rows(server, rid))
    assert [(r["status"], bool(r["cancelled"])) for r in rows] == [(499, True)]


def _wait_for(condition: Callable[[], T]) -> T:
    """Poll ``condition`` until it is truthy (a bounded wait, not a synchronisation sleep)."""
    deadline = time.monotonic() + 60
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


def _access_entry(server: Server, rid: str) -> dict[str, Any] | None:
    for line in server.log_lines():
        if '"event":"access"' in line and rid in line:
            return dict(json.loads(line))
    return None


def _usage_rows(server: Server, rid: str) -> list[dict[str, Any]]:
    database = server.log_path.with_suffix(".data") / "gateway.db"
    with closing(sqlite3.connect(database)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM usage_records WHERE request_id = ?", (rid,))
        return [dict(r) for r in rows]


HALF_SENT = {
    "request line": b"POST /v1/chat/comp",
    "headers": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    "body": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
    b'\r\nContent-Length: 100\r\n\r\n{"model": ',
}


def test_idle_and_half_sent_connections_are_closed_and_requests_still_served(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"needs an open-file limit of 4096, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))  # for this process
    env = {
        "QWEN_GATEWAY_SERVER__HEADER_TIMEOUT_SECONDS": "2",
        "QWEN_GATEWAY_SERVER__IDLE_TIMEOUT_SECONDS": "2",
        "QWEN_GATEWAY_SERVER__LIMIT_CONCURRENCY": "3000",
    }
    try:
        with running_server(tiny_model_dir, tmp_path / "log", env=env) as s:
            address = ("127.0.0.1", int(s.base_url.rsplit(":", 1)[1]))
            idle = [socket.create_connection(address) for _ in range(1000)]
            half_sent = {kind: [] for kind in HALF_SENT}
            for kind, data in HALF_SENT.items():
                for _ in range(100):
                    sock = socket.create_connection(address)
                    sock.sendall(data)
                    half_sent[kind].append(sock)
            reply = httpx.post(
                s.base_url + "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                      "max_tokens": 2},
                timeout=60,
            )  # fmt: skip
            assert reply.status_code == 200
            assert sum(_closed_by_server(sock) for sock in idle) == len(idle)
            for kind, socks in half_sent.items():
                assert sum(_closed_by_server(sock) for sock in socks) == len(socks), kind
            assert httpx.get(s.base_url + "/health").status_code == 200
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) without answering; closes it."""
    with sock:
        sock.settimeout(60)  # a bound on the wait, not a timing assertion
        try:
            return sock.recv(1024) == b""
        except ConnectionResetError:
            return True


def test_uvicorn_options_trust_no_proxy_by_default_and_fit_the_open_file_limit() -> None:
    plain = uvicorn_options(ServerSettings(), fd_limit=100_000)
    assert plain["proxy_headers"] is False
    assert plain["http"].max_connections == 2048
    proxied = ServerSettings(trusted_proxies=["10.0.0.0/8", "127.0.0.1"], limit_concurrency=5000)
    options = uvicorn_options(proxied, fd_limit=1024)
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == "10.0.0.0/8,127.0.0.1/32"
    assert options["http"].max_connections == 1024 - FD_RESERVE


def test_a_request_without_max_tokens_stops_at_the_default_output_limit(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {"QWEN_GATEWAY_MODEL__DEFAULT_MAX_TOKENS": "5"}
    with running_server(tiny_model_dir, tmp_path / "log", env=env) as s:
        client = openai.OpenAI(base_url=s.base_url + "/v1", api_key="none", max_retries=0)
        ask = [{"role": "user", "content": "Write forever"}]
        chat = client.chat.completions.create(model=MODEL, messages=ask)  # type: ignore[arg-type]
        assert chat.usage is not None and chat.usage.completion_tokens == 5
        assert chat.choices[0].finish_reason == "length"
        longer = client.chat.completions.create(model=MODEL, messages=ask, max_tokens=9)  # type: ignore[arg-type]
        assert longer.usage is not None and longer.usage.completion_tokens == 9
        card = httpx.get(f"{s.base_url}/v1/models/{MODEL}").json()
        assert (card["default_max_tokens"], card["max_output_tokens"]) == (5, 8192)


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
