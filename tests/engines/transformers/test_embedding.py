"""The in-process embedding engine on the tiny random embedding model: its vectors equal a
direct computation with transformers (last-token pooling, L2 normalisation), batching does
not change them, and its bounds answer 400 naming the parameter."""

from __future__ import annotations

import asyncio
import threading
from array import array
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from qwen_gateway.core.types import EmbeddingRequest
from qwen_gateway.engines.base import Embedder, Engine
from qwen_gateway.engines.plugin import EngineContext
from qwen_gateway.engines.transformers.embedding import TransformersEmbedder
from qwen_gateway.engines.transformers.engine import TransformersConfig, create_engine
from qwen_gateway.engines.transformers.tiny import build_tiny_model
from qwen_gateway.errors import EngineUnavailable, InternalError, InvalidRequest

TEXTS = ["The quick brown fox", "jumps over the lazy dog.", "你好，世界", "a"]


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-embed"), seed=1, embedding=True)


async def _engine(embed_dir: Path, **config: object) -> TransformersEmbedder:
    cfg = TransformersConfig(task="embed", model=str(embed_dir), **config)  # type: ignore[arg-type]
    engine = await create_engine(cfg, EngineContext(served_name="tiny-embed"))
    assert isinstance(engine, TransformersEmbedder)
    return engine


@pytest.fixture(scope="module")
async def embedder(embed_dir: Path) -> AsyncIterator[TransformersEmbedder]:
    engine = await _engine(embed_dir, supports_dimensions=True, context_window=64,
                           max_embedding_tokens=200)  # fmt: skip
    yield engine
    await engine.aclose()


def _floats(vector: bytes) -> list[float]:
    values = array("f")
    values.frombytes(vector)
    return values.tolist()


def oracle(embed_dir: Path, texts: list[str]) -> torch.Tensor:
    """gte-Qwen2's recipe with transformers directly: the tokenizer appends <|endoftext|>,
    right padding, the last real token's hidden state, L2-normalised."""
    tokenizer = AutoTokenizer.from_pretrained(str(embed_dir))
    model = AutoModel.from_pretrained(str(embed_dir)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    last = batch["attention_mask"].sum(dim=1) - 1
    pooled = hidden[torch.arange(len(texts)), last]
    return F.normalize(pooled, p=2, dim=1)


async def test_the_engine_is_an_embedder_and_refuses_generation(
    embedder: TransformersEmbedder,
) -> None:
    assert isinstance(embedder, Embedder) and isinstance(embedder, Engine)
    info = embedder.info
    assert (info.task, info.embedding_dimensions, info.supports_dimensions) == ("embed", 64, True)
    assert (await embedder.health()).ready


async def test_vectors_equal_a_direct_transformers_computation(
    embedder: TransformersEmbedder, embed_dir: Path
) -> None:
    result = await embedder.embed(EmbeddingRequest("tiny-embed", tuple(TEXTS)))
    expected = oracle(embed_dir, TEXTS)
    got = torch.tensor([_floats(v) for v in result.vectors])
    assert got.shape == expected.shape == (len(TEXTS), 64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(str(embed_dir))
    assert result.prompt_tokens == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)


async def test_token_ids_give_the_vector_of_their_text(
    embedder: TransformersEmbedder, embed_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(embed_dir))
    ids = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    by_ids, by_text = (
        await embedder.embed(EmbeddingRequest("tiny-embed", (tuple(ids),))),
        await embedder.embed(EmbeddingRequest("tiny-embed", (TEXTS[0],))),
    )
    torch.testing.assert_close(
        torch.tensor(_floats(by_ids.vectors[0])), torch.tensor(_floats(by_text.vectors[0]))
    )


async def test_concurrent_requests_are_batched_without_changing_vectors(
    embedder: TransformersEmbedder,
) -> None:
    alone = {t: _floats((await embedder.embed(EmbeddingRequest("m", (t,)))).vectors[0])
             for t in TEXTS}  # fmt: skip
    before = sum(n * c for n, c in embedder.batch_sizes.items() if n > 1)
    requests = [EmbeddingRequest("m", (TEXTS[i % len(TEXTS)],)) for i in range(24)]
    results = await asyncio.gather(*(embedder.embed(r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        text = request.inputs[0]
        assert isinstance(text, str)
        torch.testing.assert_close(
            torch.tensor(_floats(result.vectors[0])), torch.tensor(alone[text]),
            atol=1e-5, rtol=1e-4,
        )  # fmt: skip
    # the 24 requests were queued before the worker could take them one by one: some forward
    # passes held inputs of several requests
    assert sum(n * c for n, c in embedder.batch_sizes.items() if n > 1) > before


async def test_dimensions_truncate_then_renormalise(
    embedder: TransformersEmbedder, embed_dir: Path
) -> None:
    result = await embedder.embed(EmbeddingRequest("m", (TEXTS[1],), dimensions=16))
    full = oracle(embed_dir, [TEXTS[1]])[0]
    hidden_prefix = F.normalize(full[:16], p=2, dim=0)  # normalising twice keeps direction
    got = torch.tensor(_floats(result.vectors[0]))
    assert got.shape == (16,)
    torch.testing.assert_close(got, hidden_prefix, atol=1e-5, rtol=1e-4)
    assert abs(float(got.norm()) - 1.0) < 1e-5


async def test_bounds_are_400s_naming_the_parameter(embedder: TransformersEmbedder) -> None:
    cases = [
        (EmbeddingRequest("m", ("word " * 100,)), "input"),  # past the 64-token window
        (EmbeddingRequest("m", ("word " * 40,) * 6), "input"),  # past 200 tokens in all
        (EmbeddingRequest("m", ("x" * 600,)), "input"),  # refused untokenised: > 64 x 8 chars
        (EmbeddingRequest("m", ("y" * 500,) * 4), "input"),  # likewise: > 200 x 8 in all
        (EmbeddingRequest("m", ((1, 2, 10**7),)), "input"),  # outside the vocabulary
        (EmbeddingRequest("m", ("x",), dimensions=65), "dimensions"),
        (EmbeddingRequest("m", ("x",), dimensions=0), "dimensions"),
    ]
    for request, param in cases:
        with pytest.raises(InvalidRequest) as info:
            await embedder.embed(request)
        assert info.value.param == param, request
    assert (await embedder.health()).ready  # nothing of that hurt the engine


async def test_a_closed_engine_refuses_requests_with_503(embed_dir: Path) -> None:
    engine = await _engine(embed_dir)
    await engine.aclose()
    with pytest.raises(EngineUnavailable):
        await engine.embed(EmbeddingRequest("m", ("x",)))
    assert not (await engine.health()).ready


async def test_a_model_without_truncation_refuses_dimensions(embed_dir: Path) -> None:
    engine = await _engine(embed_dir)
    try:
        with pytest.raises(InvalidRequest) as info:
            await engine.embed(EmbeddingRequest("m", ("x",), dimensions=8))
        assert info.value.param == "dimensions"
        full = await engine.embed(EmbeddingRequest("m", ("x",), dimensions=64))  # the width
        assert len(full.vectors[0]) == 64 * 4
    finally:
        await engine.aclose()


def test_the_tiny_embedding_checkpoint_is_made_like_gte_qwen2(
    embed_dir: Path, tmp_path: Path
) -> None:
    model = AutoModel.from_pretrained(str(embed_dir))
    assert type(model).__name__ == "Qwen2Model"  # the decoder, no LM head
    tokenizer = AutoTokenizer.from_pretrained(str(embed_dir))
    assert tokenizer("hello")["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.padding_side == "right"
    again = build_tiny_model(tmp_path / "again", seed=1, embedding=True)
    assert (again / "model.safetensors").read_bytes() == (
        embed_dir / "model.safetensors"
    ).read_bytes()


class _FaultyObserver:
    """A fault injector in place of the engine's observer: the first ``decode_step`` (after
    a forward pass) waits for ``release``; the second raises."""

    def __init__(self, real: object) -> None:
        self.real, self.calls = real, 0
        self.entered, self.release = threading.Event(), threading.Event()

    def decode_step(self, size: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.release.wait()
        elif self.calls == 2:
            raise RuntimeError("injected fault after the forward pass")

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


async def test_a_failure_outside_the_forward_pass_fails_only_its_batch(embed_dir: Path) -> None:
    engine = await _engine(embed_dir, max_batch_size=1)
    fault = _FaultyObserver(engine._observer)
    engine._observer = fault  # type: ignore[assignment]
    try:
        first = asyncio.create_task(engine.embed(EmbeddingRequest("m", ("first",))))
        await asyncio.to_thread(fault.entered.wait)  # the worker holds the first batch
        # queued while the worker is busy (tasks run in the order they were made)
        failing = asyncio.create_task(engine.embed(EmbeddingRequest("m", ("failing",))))
        other = asyncio.create_task(engine.embed(EmbeddingRequest("m", ("other",))))
        asyncio.get_running_loop().call_soon(fault.release.set)
        assert len((await first).vectors) == 1
        with pytest.raises(InternalError):
            await failing
        assert len((await other).vectors) == 1  # another request's input is not failed
    finally:
        fault.release.set()
        await engine.aclose()


async def test_a_request_closed_while_tokenising_fails_instead_of_waiting(
    embed_dir: Path,
) -> None:
    engine = await _engine(embed_dir)
    entered, release = threading.Event(), threading.Event()
    real = engine._tokenise

    def slow_tokenise(request: EmbeddingRequest) -> list[list[int]]:  # a fault: waits
        entered.set()
        release.wait()
        return real(request)

    engine._tokenise = slow_tokenise  # type: ignore[method-assign]
    long = "word " * 2000  # long enough to be tokenised in a worker thread
    task = asyncio.create_task(engine.embed(EmbeddingRequest("m", (long,))))
    try:
        await asyncio.to_thread(entered.wait)
        await engine.aclose()
    finally:
        release.set()
    with pytest.raises(EngineUnavailable):
        await asyncio.wait_for(task, timeout=60)  # a guard: without the check it never ends


async def test_bidirectional_attention_masks_padding_only(embed_dir: Path) -> None:
    """``bidirectional``: every token sees every other; batched (padded) inputs give the
    vectors each gives alone, which equal a direct pass with an all-visible mask."""
    engine = await _engine(embed_dir, bidirectional=True, max_batch_size=8)
    causal = await _engine(embed_dir)
    try:
        batched = await engine.embed(EmbeddingRequest("m", tuple(TEXTS)))
        alone = [(await engine.embed(EmbeddingRequest("m", (t,)))).vectors[0] for t in TEXTS]
        plain = await causal.embed(EmbeddingRequest("m", tuple(TEXTS)))
    finally:
        await engine.aclose()
        await causal.aclose()
    for got, want in zip(batched.vectors, alone, strict=True):
        assert _floats(got) == pytest.approx(_floats(want), abs=1e-5)
    assert _floats(batched.vectors[0]) != pytest.approx(_floats(plain.vectors[0]), abs=1e-3)
    tokenizer = AutoTokenizer.from_pretrained(str(embed_dir))
    model = AutoModel.from_pretrained(str(embed_dir)).eval()
    ids = tokenizer([TEXTS[0]], return_tensors="pt")["input_ids"]
    visible = torch.zeros((1, 1, ids.shape[1], ids.shape[1]))
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=visible).last_hidden_state[0, -1]
    want = F.normalize(hidden, p=2, dim=0).tolist()
    assert _floats(batched.vectors[0]) == pytest.approx(want, abs=1e-4)
