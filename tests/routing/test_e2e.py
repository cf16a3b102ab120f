"""End to end: the shipped example config served by a real ``qwen-gateway serve`` process
(``model="auto"`` through the openai SDK), and a real replica killed mid-run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from routing.test_intent_routing import TABLE
from support.fixtures import open_in_process
from support.metrics import sample
from support.server import free_port, running_command, running_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.e2e


def test_the_shipped_example_serves_auto_through_the_sdk(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "tiny-qwen2.5").symlink_to(tiny_model_dir)  # the embedded model, already built
    port = free_port()
    args = ["--config", str(EXAMPLES / "routing.yaml"), "--port", str(port)]
    env = {"QWEN_GATEWAY_DATA_DIR": str(data)}
    with running_command(args, port, tmp_path / "server.log", env=env) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)
        with client:
            _ask_the_example(client, server.base_url)
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log


def _ask_the_example(client: openai.OpenAI, base_url: str) -> None:
    ids = {m.id for m in client.models.list().data}
    assert ids == {"qwen-general", "qwen2.5", "gpt-4o-mini", "qwen-coder", "qwen-math",
                   "auto"}  # fmt: skip
    for prompt, expected in TABLE:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=4
        )
        assert raw.parse().model == expected, prompt
        assert f"; deployment={expected}" in raw.headers["x-qwen-gateway-route"]
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "求解方程 x^2 = 9"}],
        max_tokens=4, stream=True,
    )  # fmt: skip
    assert {chunk.model for chunk in stream} == {"qwen-math"}
    replicas = set()
    for _ in range(40):  # the general deployment's two in-process replicas both serve
        raw = client.chat.completions.with_raw_response.create(
            model="qwen2.5", messages=[{"role": "user", "content": "Hello"}], max_tokens=2
        )
        assert raw.parse().model == "qwen-general"
        replicas.add(raw.headers["x-qwen-gateway-route"].rpartition("replica=")[2])
        if replicas == {"0", "1"}:
            break
    assert replicas == {"0", "1"}
    metrics = httpx.get(base_url + "/metrics").text
    assert sample(metrics, "qwen_gateway_route_intent_total", model="auto",
                  category="math") == 5  # fmt: skip


async def test_a_killed_replica_moves_new_requests_to_the_others(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with (
        running_server(tiny_model_dir, tmp_path / "a.log") as a,
        running_server(tiny_model_dir, tmp_path / "b.log") as b,
    ):
        urls = [a.base_url + "/v1", b.base_url + "/v1"]
        settings = load_settings({
            "data_dir": str(tmp_path / "gw"), "auth": {"enabled": False},
            "deployments": [{"name": "qwen", "engine": "openai", "model": "qwen2.5-tiny",
                             "replicas": urls, "upstream": {"max_retries": 0}}],
            # health checks stay out of it: failures alone must steer the requests
            "routing": {"breaker": {"failures": 3, "cooldown_seconds": 600},
                        "health_interval_seconds": 3600},
        }, env={})  # fmt: skip
        async with open_in_process(Container(settings)) as g:

            async def ask(i: int, stream: bool = False) -> str:
                messages = [{"role": "user", "content": f"Hello {i}"}]
                if stream:
                    chunks = await g.client.chat.completions.create(
                        model="qwen",
                        messages=messages,
                        max_tokens=4,
                        stream=True,  # type: ignore[arg-type]
                    )
                    models = {c.model async for c in chunks}
                    return models.pop()
                done = await g.client.chat.completions.create(
                    model="qwen",
                    messages=messages,
                    max_tokens=4,  # type: ignore[arg-type]
                )
                return done.model

            assert set(await asyncio.gather(*(ask(i) for i in range(12)))) == {"qwen"}
            before = (await g.http.get("/metrics")).text
            for label in ("0", "1"):  # both replicas served (named by index, not URL)
                assert sample(before, "qwen_gateway_replica_attempts_total", replica=label,
                              outcome="ok") > 0  # fmt: skip
            a.process.kill()
            a.process.wait()

            def failures(text: str) -> float:
                return sample(text, "qwen_gateway_replica_attempts_total", replica="0",
                              outcome="error")  # fmt: skip

            for i in range(60):  # one by one until the breaker opened: no client error
                assert await ask(i, stream=i % 2 == 1) == "qwen"
                if failures((await g.http.get("/metrics")).text) == 3:
                    break
            after = (await g.http.get("/metrics")).text
            assert failures(after) == 3
            assert sample(after, "qwen_gateway_replica_breaker_state", replica="0") == 2
            results = await asyncio.gather(
                *(ask(i, stream=i % 2 == 1) for i in range(24)), return_exceptions=True
            )
            assert results == ["qwen"] * 24  # no client saw an error
            after = (await g.http.get("/metrics")).text
            assert failures(after) == 3  # the open breaker kept requests away from it
            assert sample(after, "qwen_gateway_replica_attempts_total", replica="1",
                          outcome="ok") >= 24  # fmt: skip
