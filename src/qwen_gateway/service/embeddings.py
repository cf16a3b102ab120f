"""The embeddings edge: the wire body becomes an :class:`EmbeddingRequest`, which passes the
same stages as generation (authenticate at the edge; input policy when one is configured;
route, with admission for the deployment that serves; account when the request ends) and
comes back as OpenAI's ``CreateEmbeddingResponse``.

The input policy reads each text input as it reads a raw prompt (a block is a 400
``content_filter``, and so is a finding that asks for review: an embedding has no answer to
hold or review later; a redaction changes the text embedded); token-id inputs are refused while
a policy applies, as token prompts are. Limits count the inputs' tokens as prompt tokens
(requests, tokens, budgets); the usage row has them, with no completion tokens.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import Any, Protocol

from qwen_gateway.core.normalize import parse_wire
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineEvent,
    GenerationRequest,
    TextRequest,
)
from qwen_gateway.errors import ContentFiltered, InternalError, InvalidRequest
from qwen_gateway.policy.ratelimit import Permit
from qwen_gateway.protocol.embeddings import (
    MAX_INPUTS,
    CreateEmbeddingRequest,
    CreateEmbeddingResponse,
    Embedding,
)

#: The route stage (``service.route.Route``): the routed event stream of a request.
RouteCall = Callable[[Any, RequestRecord, str | None], AsyncGenerator[EngineEvent, None]]
#: The input policy's check (``InputPolicy.check``): the request as the engine may see it.
InputCheck = Callable[[GenerationRequest, RequestRecord], GenerationRequest]


class EmbeddingObserver(Protocol):
    def embedding_request(self, model: str, inputs: int) -> None: ...


class EmbeddingService:
    def __init__(
        self,
        route: RouteCall,
        input_check: InputCheck | None = None,
        observer: EmbeddingObserver | None = None,
    ) -> None:
        self._route = route
        self._input_check = input_check
        self._observer = observer

    async def create(
        self, raw: Mapping[str, Any], record: RequestRecord
    ) -> CreateEmbeddingResponse:
        wire = parse_wire(CreateEmbeddingRequest, raw)
        request = EmbeddingRequest(
            model=wire.model,
            inputs=_inputs(wire.input),
            dimensions=wire.dimensions,
            user=wire.user or None,
            request_id=record.request_id,
        )
        record.model = request.model
        request = self._checked(request, record)
        if self._observer is not None:
            self._observer.embedding_request(request.model, len(request.inputs))
        result = await self._embed(request, record)
        if len(result.vectors) != len(request.inputs):
            raise InternalError("The engine did not return one vector per input.")
        data: list[Embedding] = [
            {"object": "embedding", "index": i, "embedding": _encoded(v, wire.encoding_format)}
            for i, v in enumerate(result.vectors)
        ]
        tokens = result.prompt_tokens
        return {
            "object": "list",
            "data": data,
            "model": record.deployment or request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _embed(self, request: EmbeddingRequest, record: RequestRecord) -> EmbeddingResult:
        events = self._route(request, record, request.user)
        async with aclosing(events):
            async for event in events:
                if isinstance(event, EmbeddingResult):
                    record.prompt_tokens = event.prompt_tokens
                    if isinstance(record.permit, Permit):  # limits settle on the usage
                        record.permit.prompt_tokens = event.prompt_tokens
                    return event
        raise InternalError("The engine answered an embeddings request without vectors.")

    def _checked(self, request: EmbeddingRequest, record: RequestRecord) -> EmbeddingRequest:
        """Each text input through the input policy (redacted, or a 400 content_filter)."""
        check = self._input_check
        if check is None:
            return request
        inputs: list[str | tuple[int, ...]] = []
        for item in request.inputs:
            try:
                seen = check(TextRequest(request.model, item), record)
            except InvalidRequest as exc:
                if exc.code != "token_prompt_not_allowed":
                    raise
                raise InvalidRequest(
                    "Token-id input cannot be checked by the content policy: send text.",
                    param="input",
                    code="token_prompt_not_allowed",
                ) from None
            assert isinstance(seen, TextRequest)
            inputs.append(seen.prompt)
        if record.review is not None:  # no answer to hold or review later: refused instead
            category = getattr(record.review, "category", "review")
            raise ContentFiltered(
                f"The request was refused by the content policy (category: {category})."
            )
        return replace(request, inputs=tuple(inputs))


def _inputs(
    raw: str | list[str] | list[int] | list[list[int]],
) -> tuple[str | tuple[int, ...], ...]:
    """The inputs, one per vector: bounded in number, none empty (400 ``input``)."""
    items: list[str | tuple[int, ...]]
    if isinstance(raw, str):
        items = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [tuple(x for x in raw if isinstance(x, int))]  # one input of token ids
    else:
        items = [x if isinstance(x, str) else tuple(x) for x in raw if not isinstance(x, int)]
    if not items:
        raise InvalidRequest("'input' must not be empty.", param="input", code="invalid_value")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' holds {len(items)} items; at most {MAX_INPUTS} are allowed per request.",
            param="input",
            code="invalid_value",
        )
    for i, item in enumerate(items):
        if not item:
            raise InvalidRequest(
                f"Input {i} is empty; every input needs at least one character or token.",
                param="input",
                code="invalid_value",
            )
        if not isinstance(item, str) and any(t < 0 for t in item):
            raise InvalidRequest(
                f"Input {i} holds a negative token id.", param="input", code="invalid_value"
            )
    return tuple(items)


def _encoded(vector: bytes, encoding: str) -> list[float] | str:
    """A float32 little-endian vector as OpenAI sends it: floats, or their bytes in base64."""
    if encoding == "base64":
        return base64.b64encode(vector).decode("ascii")
    values = array("f")
    values.frombytes(vector)
    return values.tolist()
