"""Graceful drain of a real ``serve`` process on SIGTERM, seen through the openai SDK: /ready
flips to 503 first, new requests are refused with 503, a stream in flight finishes, a stream
still running at the end of the grace period ends with an in-stream ``server_shutting_down``
error, each request's usage is written, and the process exits 0."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from support.faulty_upstream import FaultyUpstream
from support.server import free_port, running_command

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream().running() as faulty:
        yield faulty


def test_sigterm_drains_then_cuts_off_what_is_still_streaming(
    upstream: FaultyUpstream, tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "data"
    config = tmp_path / "gateway.yaml"
    deployments = [
        {"name": name, "engine": "openai", "upstream": {"base_url": upstream.base_url}}
        for name in ("stall", "endless", "ok")
    ]
    config.write_text(yaml.safe_dump({"deployments": deployments}))
    args = ["--config", str(config), "--port", str(port),
            "--drain-seconds", "5", "--shutdown-grace", "2"]  # fmt: skip
    env = {"QWEN_GATEWAY_DATA_DIR": str(data)}
    outcome: dict[str, object] = {}
    first = {name: threading.Event() for name in ("finishes", "cut")}

    def consume(name: str, model: str, client: openai.OpenAI) -> None:
        text: list[str] = []
        try:
            with client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True,
                extra_headers={"x-request-id": f"req-{name}"},
            ) as stream:  # fmt: skip
                for chunk in stream:
                    first[name].set()
                    if chunk.choices:
                        text.append(chunk.choices[0].delta.content or "")
            outcome[name] = "".join(text)
        except openai.APIError as exc:
            outcome[name] = exc
        finally:
            first[name].set()

    with (
        running_command(args, port, tmp_path / "serve.log", env=env) as server,
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0) as client,
    ):
        threads = [
            threading.Thread(target=consume, args=("finishes", "stall", client)),  # waits
            threading.Thread(target=consume, args=("cut", "endless", client)),  # never ends
        ]
        for t in threads:
            t.start()
        for event in first.values():
            assert event.wait(60)  # both streams are in flight
        server.process.send_signal(signal.SIGTERM)

        deadline = time.monotonic() + 30  # a bound against hangs, not a timing assertion
        while (ready := httpx.get(server.base_url + "/ready", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "server_shutting_down"
        assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200

        with pytest.raises(openai.InternalServerError) as refused:  # a new request
            client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503
        assert refused.value.code == "server_shutting_down"
        assert refused.value.response.headers["retry-after"] == "1"

        upstream.release.set()  # the 'stall' stream may finish now
        for t in threads:
            t.join(timeout=60)
        assert server.process.wait(timeout=60) == 0

    assert outcome["finishes"] == "Hello"  # the whole text, no error: it finished
    cut = outcome["cut"]
    assert isinstance(cut, openai.APIError), cut
    assert isinstance(cut.body, dict) and cut.body.get("code") == "server_shutting_down", cut.body
    with sqlite3.connect(data / "gateway.db") as db:
        rows = dict(db.execute("SELECT request_id, cancelled FROM usage_records").fetchall())
    assert rows == {"req-finishes": 0, "req-cut": 1}  # each written once, before the exit


async def test_the_gate_refuses_in_each_apis_shape_while_draining() -> None:
    from starlette.types import Receive, Scope, Send

    from qwen_gateway.api.drain import DrainGate, DrainState

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    state = DrainState()
    transport = httpx.ASGITransport(app=DrainGate(app, state))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        assert (await http.get("/ready")).text == "served"  # not draining: passed through
        state.draining = True
        for path in ("/health", "/metrics"):  # probes and the scraper still answer
            assert (await http.get(path)).text == "served"
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        chat = await http.post("/v1/chat/completions", json={})
        assert chat.status_code == 503 and chat.headers["connection"] == "close"
        assert chat.json()["error"]["code"] == "server_shutting_down"
        messages = await http.post("/v1/messages", json={})
        assert messages.status_code == 503
        assert messages.json()["type"] == "error"  # Anthropic's envelope
        assert messages.json()["error"]["type"] == "overloaded_error"
