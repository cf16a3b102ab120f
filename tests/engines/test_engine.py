"""The in-process engine: exact forward pass, continuous batching, overload and readiness."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
import torch

from qwen_gateway.api.app import create_app
from qwen_gateway.core.types import OutputConstraint, SamplingParams, Usage
from qwen_gateway.engines.base import GenerationJob
from qwen_gateway.engines.transformers.engine import MAX_CRASHES_IN_A_ROW
from qwen_gateway.errors import InternalError, InvalidRequest
from support.blocking_compiler import BlockingCompiler
from support.fixtures import MODEL, InProcess, make_container, open_in_process
from support.metrics import sample


def test_slot_model_matches_transformers_generate(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from qwen_gateway.engines.transformers.model import CacheShape, SlotModel

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    model = SlotModel(hf, CacheShape(slots=4, max_len=256))
    a, b = [9707, 11, 1879, 0], [40, 1079, 264, 3460, 13, 220]
    with torch.inference_mode():
        ref_a = hf.generate(torch.tensor([a]), max_new_tokens=12, do_sample=False)[0, len(a) :]
        ref_b = hf.generate(torch.tensor([b]), max_new_tokens=12, do_sample=False)[0, len(b) :]
        out_a = [int(model.prefill(2, a).argmax())]
        out_b = [int(model.prefill(0, b).argmax())]
        for step in range(11):  # both sequences share every decode step, at different lengths
            logits = model.decode([0, 2], [out_b[-1], out_a[-1]], [len(b) + step, len(a) + step])
            out_b.append(int(logits[0].argmax()))
            out_a.append(int(logits[1].argmax()))
        # a prompt prefilled in two chunks gives the same next token
        model.prefill(3, a[:2])
        assert int(model.prefill(3, a[2:], start=2).argmax()) == out_a[0]
    assert out_a == ref_a.tolist()
    assert out_b == ref_b.tolist()


async def test_32_concurrent_requests_are_batched(gateway: InProcess) -> None:
    async def one(i: int) -> str:
        c = await gateway.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"request {i}"}],
            max_tokens=24,
            temperature=0,
        )
        assert c.choices[0].finish_reason == "length"
        assert c.usage is not None and c.usage.completion_tokens == 24
        return c.choices[0].message.content or ""

    results = await asyncio.gather(*(one(i) for i in range(32)))
    assert len(results) == 32
    text = (await gateway.http.get("/metrics")).text
    peak = sample(text, "qwen_gateway_engine_max_batch_size", model=MODEL)
    assert peak >= 16, f"requests were not batched together (peak batch {peak})"
    assert sample(text, "qwen_gateway_requests_total", model=MODEL, status="200") >= 32


async def test_full_queue_answers_503_with_retry_after(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    container = make_container(tiny_model_dir, tmp_path, max_batch_size=1, max_waiting=1)
    async with open_in_process(container) as g:
        long = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4000}
        # One request takes the only slot, the next one queues behind it, a third is refused.
        # (Polling gauges that the scheduler thread updates, within a bound.)
        running = asyncio.ensure_future(g.client.chat.completions.create(**long))
        async with asyncio.timeout(120):
            while (await load(g))[0] < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(g.client.chat.completions.create(**long))
        async with asyncio.timeout(120):
            while (await load(g))[1] < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        resp = await g.http.post("/v1/chat/completions", json=long)
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "engine_overloaded"
        with pytest.raises(openai.InternalServerError):
            await g.client.chat.completions.create(**long)
        for task in (running, waiting):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_not_ready_until_the_engine_has_loaded(tiny_model_dir: Path, tmp_path: Path) -> None:
    container = make_container(tiny_model_dir, tmp_path)
    app = create_app(container)  # lifespan not started: nothing loaded
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        ready = await http.get("/ready")
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "5"
        assert (await http.get("/health")).status_code == 200
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        assert chat.status_code == 503
        assert chat.json()["error"]["code"] == "engine_unavailable"


async def test_a_failing_decode_step_fails_its_requests_and_the_engine_goes_on(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    container = make_container(tiny_model_dir, tmp_path)
    async with open_in_process(container) as g:
        backend = container.engines[MODEL]._backend  # type: ignore[attr-defined]
        model = backend._model
        real_decode = model.decode

        def broken_decode(*args: object) -> object:  # fault injection, one step only
            model.decode = real_decode
            raise RuntimeError("simulated device error")

        model.decode = broken_decode
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
        failed = await g.http.post("/v1/chat/completions", json=body)
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "server_error"
        assert "simulated" not in failed.text
        ok = await g.client.chat.completions.create(**body)
        assert ok.usage is not None and ok.usage.completion_tokens == 5
        assert await load(g) == (0, 0)


async def load(g: InProcess) -> tuple[float, float]:
    """The engine's (running, waiting) requests, as /metrics shows them."""
    text = (await g.http.get("/metrics")).text
    return (
        sample(text, "qwen_gateway_engine_running_sequences", model=MODEL),
        sample(text, "qwen_gateway_engine_queue_depth", model=MODEL),
    )


async def restarts(g: InProcess) -> float:
    text = (await g.http.get("/metrics")).text
    return sample(text, "qwen_gateway_engine_restarts_total", model=MODEL)


# ---- one request cannot stop the engine ---------------------------------------------------

STAGES = ["admit", "prefill", "sample", "constrain", "detokenise"]
PROMPT = [9707, 11, 1879]


class Faults:
    """An engine probe: raises at ``stage`` for requests whose id starts with "victim"."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def __call__(self, stage: str, request_id: str) -> None:
        if stage == self.stage and request_id.startswith("victim"):
            raise RuntimeError("injected fault")


async def generate(backend: Any, request_id: str, **sampling: Any) -> list[Any]:
    constraint = OutputConstraint(kind="json")  # every stage, "constrain" included, runs
    params = SamplingParams(**{"max_tokens": 6, "temperature": 0.0, **sampling})
    return [
        e async for e in backend.generate(GenerationJob(PROMPT, params, 1, request_id, constraint))
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def own_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A gateway of its own, for tests that break its engine."""
    container = make_container(tiny_model_dir, tmp_path_factory.mktemp("faults"))
    async with open_in_process(container) as g:
        yield g


async def test_a_failure_at_any_stage_fails_only_that_request(own_engine: InProcess) -> None:
    backend = own_engine.container.engines[MODEL]._backend  # type: ignore[attr-defined]
    try:
        for stage in STAGES:
            backend.probe = Faults(stage)
            victim, bystander = await asyncio.gather(
                generate(backend, "victim"), generate(backend, "bystander"), return_exceptions=True
            )
            assert isinstance(victim, InternalError), (stage, victim)
            assert isinstance(bystander, list) and isinstance(bystander[-1], Usage), stage
            assert isinstance((await generate(backend, "next"))[-1], Usage), stage
            assert await restarts(own_engine) == 0 and not (await backend.health()).down
    finally:
        backend.probe = None
    assert await load(own_engine) == (0, 0)


async def test_extreme_sampling_parameters_leave_the_engine_serving(
    own_engine: InProcess,
) -> None:
    backend = own_engine.container.engines[MODEL]._backend  # type: ignore[attr-defined]
    # The audit's requests, at the engine itself (whatever the wire lets through).
    for seed in (2**70, 2**64 - 1, -(2**70)):
        events = await generate(backend, "seed", temperature=1.0, seed=seed)
        assert isinstance(events[-1], Usage) and events[-1].completion_tokens > 0
    events = await generate(backend, "cold", temperature=1e-300)
    assert isinstance(events[-1], Usage)
    with pytest.raises(InvalidRequest) as info:
        await generate(backend, "penalty", temperature=1.0, repetition_penalty=1e-300)
    assert info.value.param == "repetition_penalty"
    # ... and through the API, followed by a normal request.
    http = own_engine.http
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert (
        await http.post("/v1/chat/completions", json={**chat, "temperature": 1e-300})
    ).status_code == 200
    text = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    refused = await http.post("/v1/completions", json={**text, "repetition_penalty": 1e-300})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "repetition_penalty"
    ok = await http.post("/v1/completions", json=text)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
    assert (await http.get("/health")).status_code == 200
    assert await restarts(own_engine) == 0


async def test_a_crashed_scheduler_is_restarted(own_engine: InProcess) -> None:
    backend = own_engine.container.engines[MODEL]._backend  # type: ignore[attr-defined]
    http = own_engine.http
    restarted = threading.Event()
    crashed = []

    def probe(stage: str, request_id: str) -> None:
        if stage == "loop" and not crashed:
            crashed.append(True)
            raise RuntimeError("injected scheduler bug")
        if stage == "restart":
            restarted.wait(60)  # held down until the test has looked

    backend.probe = probe
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
        failed = await http.post("/v1/chat/completions", json=body)
        assert failed.status_code == 503  # the request in flight ends with an error
        assert failed.json()["error"]["code"] == "engine_unavailable"
        assert (await backend.health()).down
        health = await http.get("/health")
        assert health.status_code == 503
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        restarted.set()
        async with asyncio.timeout(60):
            while (await backend.health()).down:  # noqa: ASYNC110 - polled, bounded
                await asyncio.sleep(0.01)
        ok = await own_engine.client.chat.completions.create(**body)
        assert ok.usage is not None and ok.usage.completion_tokens == 3
    finally:
        backend.probe = None
        restarted.set()
    assert (await http.get("/health")).status_code == 200
    assert (await http.get("/ready")).json() == {"status": "ready"}
    metrics = (await http.get("/metrics")).text
    assert sample(metrics, "qwen_gateway_engine_restarts_total", model=MODEL) == 1


async def test_an_engine_that_keeps_crashing_stays_down(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    container = make_container(tiny_model_dir, tmp_path)
    async with open_in_process(container) as g:
        backend = container.engines[MODEL]._backend  # type: ignore[attr-defined]

        def probe(stage: str, request_id: str) -> None:
            if stage == "loop":
                raise RuntimeError("injected scheduler bug")

        backend.probe = probe
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
        for _ in range(MAX_CRASHES_IN_A_ROW):
            assert (await g.http.post("/v1/chat/completions", json=body)).status_code == 503
            async with asyncio.timeout(60):  # wait out the restart, if there is one
                while (await backend.health()).down and backend._failed is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        assert (await backend.health()).down and backend._failed is not None
        assert await restarts(g) == MAX_CRASHES_IN_A_ROW - 1
        assert (await g.http.get("/health")).status_code == 503
        assert (await g.http.get("/ready")).json()["status"] == "failed"
        refused = await g.http.post("/v1/chat/completions", json=body)
        assert refused.status_code == 503


async def test_a_slow_compile_delays_only_its_own_tenant(own_engine: InProcess) -> None:
    backend = own_engine.container.engines[MODEL]._backend  # type: ignore[attr-defined]
    original = backend._grammars
    blocking = BlockingCompiler(backend.tokenizer, original.model_vocab_size, compile_timeout_s=120)
    params = SamplingParams(max_tokens=6, temperature=0.0)

    def schema(name: str) -> OutputConstraint:
        return OutputConstraint(kind="json", schema={"type": "object", "properties": {name: {}}})

    async def run(request_id: str, tenant: str, constraint: OutputConstraint) -> Any:
        events = backend.generate(
            GenerationJob(PROMPT, params, 1, request_id, constraint, tenant=tenant)
        )
        return [e async for e in events][-1]

    backend._grammars = blocking
    try:
        first = asyncio.ensure_future(run("a1", "a", schema("slow")))
        async with asyncio.timeout(60):
            while not blocking._flights:  # noqa: ASYNC110 - until a's compile runs
                await asyncio.sleep(0.01)
        second = asyncio.ensure_future(run("a2", "a", schema("quick_a")))
        # b is served while a's compile is stuck: a new schema, then the same one (cached)
        assert isinstance(await run("b1", "b", schema("quick_b")), Usage)
        assert isinstance(await run("b2", "b", schema("quick_b")), Usage)
        assert not first.done() and not second.done()  # a's next compile waits for a's first
        blocking.release.set()
        assert isinstance(await first, Usage)
        assert isinstance(await second, Usage)
    finally:
        blocking.release.set()
        backend._grammars = original
