"""The embeddings edge on its own: wire body -> EmbeddingRequest, result -> OpenAI's response.
The route is a fake (named so) that answers with fixed vectors, to see exactly what the edge
sends on and how it renders what comes back."""

from __future__ import annotations

import base64
import struct
from array import array
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import EmbeddingRequest, EmbeddingResult, EngineEvent
from qwen_gateway.errors import ContentFiltered, InternalError, InvalidRequest
from qwen_gateway.service.embeddings import EmbeddingService
from qwen_gateway.service.safety import PromptReview
from support.spec import validate


class FakeRoute:
    """Answers every request with one fixed vector per input (or ``count`` vectors)."""

    def __init__(self, count: int | None = None) -> None:
        self.requests: list[EmbeddingRequest] = []
        self.count = count

    def __call__(
        self, request: Any, record: RequestRecord, user: str | None
    ) -> AsyncGenerator[EngineEvent, None]:
        self.requests.append(request)
        record.deployment = "dep"
        n = len(request.inputs) if self.count is None else self.count

        async def events() -> AsyncGenerator[EngineEvent, None]:
            vector = array("f", [0.6, 0.8]).tobytes()
            yield EmbeddingResult((vector,) * n, 7)

        return events()


@pytest.mark.parametrize(
    ("given", "inputs"),
    [
        ("hi", ("hi",)),
        (["a", "b"], ("a", "b")),
        ([1, 2, 3], ((1, 2, 3),)),
        ([[1, 2], [3]], ((1, 2), (3,))),
    ],
)
async def test_each_input_form_becomes_one_input_per_vector(given: Any, inputs: Any) -> None:
    route = FakeRoute()
    body = await EmbeddingService(route).create(
        {"model": "m", "input": given, "user": "u", "dimensions": 2}, RequestRecord("r1")
    )
    (request,) = route.requests
    assert request == EmbeddingRequest("m", inputs, dimensions=2, user="u", request_id="r1")
    validate("CreateEmbeddingResponse", body)
    assert body["model"] == "dep"
    assert [d["embedding"] for d in body["data"]] == [pytest.approx([0.6, 0.8])] * len(inputs)
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


async def test_base64_is_the_little_endian_float32_bytes() -> None:
    body = await EmbeddingService(FakeRoute()).create(
        {"model": "m", "input": "x", "encoding_format": "base64"}, RequestRecord("r")
    )
    encoded = body["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert base64.b64decode(encoded) == struct.pack("<2f", 0.6, 0.8)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": ""},
        {"model": "m", "input": []},
        {"model": "m", "input": [[]]},
        {"model": "m", "input": ["a"] * 2049},
        {"model": "m", "input": [[1], [-2]]},
        {"model": "m", "input": 5},
        {"model": "m", "input": "x", "dimensions": -1},
        {"model": "", "input": "x"},
    ],
)
async def test_bad_bodies_never_reach_the_route(body: dict[str, Any]) -> None:
    route = FakeRoute()
    with pytest.raises(InvalidRequest) as info:
        await EmbeddingService(route).create(body, RequestRecord("r"))
    assert info.value.param in ("input", "dimensions", "model")
    assert route.requests == []


async def test_a_route_answering_the_wrong_number_of_vectors_is_our_500() -> None:
    with pytest.raises(InternalError):
        await EmbeddingService(FakeRoute(count=1)).create(
            {"model": "m", "input": ["a", "b"]}, RequestRecord("r")
        )


async def test_an_input_the_policy_wants_reviewed_is_refused() -> None:
    """A finding asking for review has no answer to hold: a 400 content_filter, not served."""

    def check(request: Any, record: RequestRecord) -> Any:
        if "risky" in request.prompt:
            record.review = PromptReview("self-harm", "deliver_and_review")
        return request

    route = FakeRoute()
    service = EmbeddingService(route, input_check=check)
    await service.create({"model": "m", "input": ["fine"]}, RequestRecord("r"))
    with pytest.raises(ContentFiltered) as info:
        await service.create({"model": "m", "input": ["fine", "risky"]}, RequestRecord("r"))
    assert info.value.status_code == 400 and info.value.code == "content_filter"
    assert "self-harm" in info.value.message and "risky" not in info.value.message
    assert len(route.requests) == 1
