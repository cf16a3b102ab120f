"""The in-process engine: exact forward pass, continuous batching, overload and readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest
import torch

from qwen_gateway.api.app import create_app
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
        engine = container.engines[MODEL]
        long = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4000}
        # One request takes the only slot, the next one queues behind it, a third is refused.
        # (Polling counters that the scheduler thread updates, within a bound.)
        running = asyncio.ensure_future(g.client.chat.completions.create(**long))
        async with asyncio.timeout(120):
            while engine.stats().running < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(g.client.chat.completions.create(**long))
        async with asyncio.timeout(120):
            while engine.stats().waiting < 1:  # noqa: ASYNC110
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
        assert engine_is_idle(container)


def engine_is_idle(container: object) -> bool:
    stats = container.engines[MODEL].stats()  # type: ignore[attr-defined]
    return bool(stats.running == 0 and stats.waiting == 0)
