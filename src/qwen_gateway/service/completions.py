"""The chat completions and legacy completions edges: normalise, generate through the
pipeline (``service/pipeline.py``), shape the response.

Streaming results are async iterators of OpenAI chunk dicts; only ``api/sse.py`` frames
them. Closing an iterator closes the engine stream, which aborts the generation.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from typing import Any

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    ModelInfo,
    PromptLogprobs,
    RelayedChunk,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
    Usage,
    UsageMeter,
)
from qwen_gateway.errors import InternalError
from qwen_gateway.policy.principal import Principal
from qwen_gateway.policy.ratelimit import Permit
from qwen_gateway.protocol.chat import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionResponseMessage,
    ChoiceDelta,
    ResponseToolCall,
)
from qwen_gateway.protocol.common import CompletionUsage
from qwen_gateway.protocol.completions import Completion, CompletionChoice, CompletionLogprobs
from qwen_gateway.routing.router import Router
from qwen_gateway.service.logprobs import CompletionLogprobsBuilder, chat_logprobs, merge
from qwen_gateway.service.normalise import Normalise
from qwen_gateway.service.pipeline import Generate


def _usage(u: Usage) -> CompletionUsage:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }


class CompletionService:
    """The chat completions and legacy completions edges: each normalises its body, runs the
    pipeline's :attr:`~qwen_gateway.service.pipeline.Pipeline.generate` chain and renders the
    events as OpenAI's response or chunks."""

    def __init__(
        self,
        router: Router,
        normalise: Normalise,
        generate: Generate,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._router = router
        self._normalise = normalise
        self._generate = generate
        self._clock = clock

    # ---- models -------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every public name: deployments, aliases, splits and the intent model."""
        return [self._router.info(name) for name in self._router.public_names()]

    def model(self, name: str) -> ModelInfo:
        return self._router.info(name)

    def allowed(self, principal: object, model: str) -> bool:
        """The caller's allowlist admits the model (an alias when its deployment is)."""
        if not isinstance(principal, Principal):
            return True  # authentication is off
        return principal.allows(model) or principal.allows(self._router.canonical(model))

    def _events(
        self, raw: Mapping[str, Any], record: RequestRecord, request: GenerationRequest
    ) -> AsyncGenerator[EngineEvent, None]:
        user = raw.get("user")
        return self._generate(request, record, user if isinstance(user, str) and user else None)

    # ---- chat -------------------------------------------------------------

    async def chat(
        self, raw: Mapping[str, Any], record: RequestRecord
    ) -> ChatCompletion | AsyncGenerator[ChatCompletionChunk | bytes, None]:
        wire, request = self._normalise.chat(raw, record)
        events = self._events(raw, record, request)
        ident = f"chatcmpl-{secrets.token_hex(16)}"
        created = int(self._clock())
        wants = request.sampling.logprobs is not None
        if wire.stream:
            include_usage = bool(wire.stream_options and wire.stream_options.include_usage)
            return self._chat_chunks(
                events, ident, created, request.n, include_usage, record, request.meter, wants
            )
        texts = [""] * request.n
        reasons = ["stop"] * request.n
        calls: list[list[ResponseToolCall]] = [[] for _ in range(request.n)]
        tokens: list[list[TokenLogprob]] = [[] for _ in range(request.n)]
        usage = await _collect(events, texts, reasons, record, request.meter, calls, tokens)
        choices: list[ChatCompletionChoice] = [
            {
                "index": i,
                "message": _message(texts[i], calls[i]),
                "logprobs": chat_logprobs(tokens[i]) if wants else None,
                "finish_reason": reasons[i],
            }
            for i in range(request.n)
        ]
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": record.deployment or request.model,
            "choices": choices,
            "usage": _usage(usage),
        }

    async def _chat_chunks(
        self,
        events: AsyncGenerator[EngineEvent, None],
        ident: str,
        created: int,
        n: int,
        include_usage: bool,
        record: RequestRecord,
        meter: UsageMeter,
        wants_logprobs: bool = False,
    ) -> AsyncGenerator[ChatCompletionChunk | bytes, None]:
        """Chunks as dicts, or as JSON bytes when an upstream's chunk is relayed unchanged.
        They name the deployment that answers, known once the first event is in."""

        relayed: RelayedChunk | None = None  # the last chunk relayed as it came, if any
        model = ""

        def chunk(choices: list[ChatCompletionChunkChoice]) -> ChatCompletionChunk:
            c: ChatCompletionChunk = {
                "id": relayed.chunk_id or ident if relayed is not None else ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage:
                c["usage"] = None
            return c

        def choice(
            index: int, delta: ChoiceDelta, reason: str | None = None
        ) -> ChatCompletionChunkChoice:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

        recorded = accounted(events, record, meter)
        async with aclosing(recorded):
            started = False
            async for event in recorded:
                model = model or record.deployment or record.model or ""
                if isinstance(event, RelayedChunk):  # the upstream's chunk, as it is
                    started = True
                    relayed = event
                    if event.usage is None or include_usage:
                        yield event.data
                    continue
                if not started:
                    started = True
                    yield chunk([choice(i, {"role": "assistant", "content": ""}) for i in range(n)])
                if isinstance(event, TextDelta):
                    piece = choice(event.index, {"content": event.text})
                    if wants_logprobs:
                        piece["logprobs"] = chat_logprobs(event.logprobs)
                    yield chunk([piece])
                elif isinstance(event, ToolCallDelta):
                    head = {
                        "index": event.call_index,
                        "id": event.id,
                        "type": "function",
                        "function": {"name": event.name, "arguments": ""},
                    }
                    yield chunk([choice(event.index, {"tool_calls": [head]})])
                    args = {"index": event.call_index, "function": {"arguments": event.arguments}}
                    yield chunk([choice(event.index, {"tool_calls": [args]})])
                elif isinstance(event, ChoiceFinished):
                    yield chunk([choice(event.index, {}, event.reason)])
                elif isinstance(event, Usage) and include_usage:
                    if relayed is not None and relayed.usage is not None:
                        continue  # the upstream's usage chunk went out already
                    last = chunk([])
                    last["usage"] = _usage(event)
                    yield last

    # ---- legacy completions -------------------------------------------------

    async def complete(
        self, raw: Mapping[str, Any], record: RequestRecord
    ) -> Completion | AsyncGenerator[Completion, None]:
        wire, request = self._normalise.text(raw, record)
        events = self._events(raw, record, request)
        ident = f"cmpl-{secrets.token_hex(16)}"
        created = int(self._clock())
        echo = request.prompt if wire.echo and isinstance(request.prompt, str) else None
        wants = request.sampling.logprobs is not None
        if wire.stream:
            include_usage = bool(wire.stream_options and wire.stream_options.include_usage)
            return self._completion_chunks(
                events, ident, created, request.n, echo, include_usage, record, request.meter,
                wants,
            )  # fmt: skip
        texts = [""] * request.n
        reasons = ["stop"] * request.n
        tokens: list[list[TokenLogprob]] = [[] for _ in range(request.n)]
        prompt: list[PromptLogprobs] = []
        usage = await _collect(
            events, texts, reasons, record, request.meter, tokens=tokens, prompt=prompt
        )
        head = _echo_text(echo, prompt[0] if prompt else None) if wire.echo else ""
        choices: list[CompletionChoice] = []
        for i in range(request.n):
            logprobs: CompletionLogprobs | None = None
            if wants:
                builder = CompletionLogprobsBuilder()
                if prompt:
                    logprobs = builder.add(prompt[0].tokens)
                else:
                    builder.skip(head)
                    logprobs = builder.add(())
                merge(logprobs, builder.add(tokens[i]))
            choices.append(
                {
                    "index": i,
                    "text": head + texts[i],
                    "logprobs": logprobs,
                    "finish_reason": reasons[i],
                }
            )
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": record.deployment or request.model,
            "choices": choices,
            "usage": _usage(usage),
        }

    async def _completion_chunks(
        self,
        events: AsyncGenerator[EngineEvent, None],
        ident: str,
        created: int,
        n: int,
        echo: str | None,
        include_usage: bool,
        record: RequestRecord,
        meter: UsageMeter,
        wants_logprobs: bool = False,
    ) -> AsyncGenerator[Completion, None]:
        def chunk(choices: list[CompletionChoice]) -> Completion:
            c: Completion = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": record.deployment or record.model or "",
                "choices": choices,
            }
            if include_usage:
                c["usage"] = None
            return c

        def choice(
            index: int,
            text: str,
            reason: str | None = None,
            entries: tuple[TokenLogprob, ...] = (),
        ) -> CompletionChoice:
            logprobs = builders[index].add(entries) if wants_logprobs else None
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

        builders = [CompletionLogprobsBuilder() for _ in range(n)]
        recorded = accounted(events, record, meter)
        async with aclosing(recorded):
            started = False
            async for event in recorded:
                if not started:
                    started = True
                    prompt = event if isinstance(event, PromptLogprobs) else None
                    head = _echo_text(echo, prompt)
                    if prompt is not None:
                        yield chunk([choice(i, head, entries=prompt.tokens) for i in range(n)])
                        continue
                    if head:
                        for b in builders:
                            b.skip(head)
                        yield chunk([choice(i, head) for i in range(n)])
                if isinstance(event, TextDelta):
                    yield chunk([choice(event.index, event.text, entries=event.logprobs)])
                elif isinstance(event, ChoiceFinished):
                    yield chunk([choice(event.index, "", event.reason)])
                elif isinstance(event, Usage) and include_usage:
                    last = chunk([])
                    last["usage"] = _usage(event)
                    yield last


def _echo_text(echo: str | None, prompt: PromptLogprobs | None) -> str:
    """The prompt as echoed: as sent, or (a token-id prompt) decoded from its tokens."""
    if echo is not None:
        return echo
    if prompt is None:
        return ""
    return b"".join(bytes(t.bytes) for t in prompt.tokens).decode("utf-8", errors="replace")


def _message(text: str, calls: list[ResponseToolCall]) -> ChatCompletionResponseMessage:
    message: ChatCompletionResponseMessage = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return message


async def accounted(
    events: AsyncGenerator[EngineEvent, None], record: RequestRecord, meter: UsageMeter
) -> AsyncGenerator[EngineEvent, None]:
    """Pass events through, noting first token, finish reason and usage in ``record``.

    Ends right after the :class:`Usage` event, which every engine stream sends last. A stream
    cut off before it (client gone, engine failure) is accounted from the engine's meter.
    """
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, RelayedChunk):
                    for inner in event.events:
                        _note(inner, record)
                elif isinstance(event, Usage):
                    record.prompt_tokens = event.prompt_tokens
                    record.completion_tokens = event.completion_tokens
                    yield event
                    return
                else:
                    _note(event, record)
                yield event
    finally:
        if record.prompt_tokens == record.completion_tokens == 0:
            record.prompt_tokens = meter.prompt_tokens
            record.completion_tokens = meter.completion_tokens
        if isinstance(record.permit, Permit):  # limits are settled on the usage recorded
            record.permit.prompt_tokens = record.prompt_tokens
    raise InternalError("The engine stream ended without usage.")


def _note(event: EngineEvent, record: RequestRecord) -> None:
    if isinstance(event, TextDelta | ToolCallDelta):
        record.mark_first_token()
    elif isinstance(event, ChoiceFinished):
        record.finish_reason = event.reason


async def _collect(
    events: AsyncGenerator[EngineEvent, None],
    texts: list[str],
    reasons: list[str],
    record: RequestRecord,
    meter: UsageMeter,
    calls: list[list[ResponseToolCall]] | None = None,
    tokens: list[list[TokenLogprob]] | None = None,
    prompt: list[PromptLogprobs] | None = None,
) -> Usage:
    recorded = accounted(events, record, meter)
    async with aclosing(recorded):
        async for event in recorded:
            if isinstance(event, TextDelta):
                texts[event.index] += event.text
                if tokens is not None:
                    tokens[event.index].extend(event.logprobs)
            elif isinstance(event, PromptLogprobs) and prompt is not None:
                prompt.append(event)
            elif isinstance(event, ToolCallDelta) and calls is not None:
                calls[event.index].append(
                    {
                        "id": event.id,
                        "type": "function",
                        "function": {"name": event.name, "arguments": event.arguments},
                    }
                )
            elif isinstance(event, ChoiceFinished):
                reasons[event.index] = event.reason
            elif isinstance(event, Usage):
                return event
    raise InternalError("The engine stream ended without usage.")
