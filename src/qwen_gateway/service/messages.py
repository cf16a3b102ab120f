"""The Anthropic Messages edge: an Anthropic request becomes the core chat request (the same
Qwen template, ``<tool_call>`` parsing and constrained decoding as chat completions), runs
through the pipeline's :attr:`~qwen_gateway.service.pipeline.Pipeline.generate` chain, and
the core events are rendered as Anthropic's ``Message`` or its stream events.

Streams are async iterators of event dicts (each carries its ``type``, the SSE event name);
only ``api/sse.py`` frames them. Closing an iterator closes the engine stream, which aborts
the generation.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from qwen_gateway.core.normalize import (
    MIN_TEMPERATURE,
    RequestLimits,
    check_json_schema,
    parse_wire,
)
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    ChoiceFinished,
    EngineEvent,
    FinishReason,
    GenerationRequest,
    OutputConstraint,
    RelayedChunk,
    SamplingParams,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
    UsageMeter,
)
from qwen_gateway.errors import (
    GatewayError,
    InternalError,
    InvalidModelOutput,
    InvalidRequest,
)
from qwen_gateway.policy.auth import check_model
from qwen_gateway.policy.principal import ANONYMOUS, Principal
from qwen_gateway.protocol.messages import (
    ContentBlock,
    Message,
    MessageCountTokensParams,
    MessageCreateParams,
    MessageParam,
    MessageStreamEvent,
    MessageTokensCount,
    StopReason,
    TextBlockParam,
    ToolChoiceParam,
    ToolParam,
)
from qwen_gateway.routing.router import Router
from qwen_gateway.service.completions import accounted
from qwen_gateway.service.pipeline import Generate

#: At most this many stop sequences (each matched over the streamed text).
MAX_STOP_SEQUENCES = 16

_STOP_REASONS: dict[FinishReason, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "cancelled": "end_turn",
}

#: The prompt's length in tokens, as the engine will see it (the gate's count).
CountTokens = Callable[[GenerationRequest], Awaitable[int]]


# ---- normalise: Anthropic request -> core request ------------------------------------


def _text(blocks: str | Sequence[TextBlockParam] | None) -> str:
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    return "".join(b.text for b in blocks)


def _tool(tool: ToolParam, i: int) -> dict[str, Any]:
    """An Anthropic tool as the OpenAI function dict the Qwen template renders (a server
    tool's ``type`` is refused by the wire model already)."""
    check_json_schema(tool.input_schema, f"tools.[{i}].input_schema")
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.input_schema
    return {"type": "function", "function": function}


def _tools(wire: Sequence[ToolParam] | None) -> tuple[dict[str, Any], ...]:
    tools: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, t in enumerate(wire or ()):
        if not all((c.isalnum() and c.isascii()) or c in "_-" for c in t.name):
            raise InvalidRequest(
                f"Invalid tool name {t.name!r}: use letters, digits, '_' or '-'.",
                param=f"tools.[{i}].name",
            )
        if t.name in seen:
            raise InvalidRequest(
                f"Tool names must be unique: {t.name!r} appears twice.", param=f"tools.[{i}].name"
            )
        seen.add(t.name)
        tools.append(_tool(t, i))
    return tuple(tools)


def _tool_choice(
    wire: ToolChoiceParam | None, tools: Sequence[Mapping[str, Any]]
) -> tuple[ToolChoice, OutputConstraint | None]:
    """Anthropic's auto/any/tool/none as the core's auto/required/named/none, with the
    output constraint that forces a call (constrained decoding where the engine can)."""
    if wire is None or wire.type == "auto":
        return ToolChoice("auto"), None
    if wire.type == "none":
        return ToolChoice("none"), None
    if not tools:
        raise InvalidRequest(
            f"tool_choice '{wire.type}' needs at least one tool in 'tools'.",
            param="tool_choice.type",
        )
    functions = [t["function"] for t in tools]
    if wire.type == "any":
        choice = ToolChoice("required")
    else:
        if wire.name is None:
            raise InvalidRequest(
                "tool_choice of type 'tool' needs the tool's 'name'.", param="tool_choice.name"
            )
        if wire.name not in {f["name"] for f in functions}:
            raise InvalidRequest(
                f"tool_choice names the tool {wire.name!r}, which is not in 'tools'.",
                param="tool_choice.name",
            )
        choice = ToolChoice("named", wire.name)
        functions = [f for f in functions if f["name"] == wire.name]
    parallel = not wire.disable_parallel_tool_use
    return choice, OutputConstraint("tool_calls", tools=tuple(functions), parallel=parallel)


def _messages(
    system: str | Sequence[TextBlockParam] | None, wire: Sequence[MessageParam]
) -> tuple[ChatMessage, ...]:
    """``system`` first; each user turn's ``tool_result`` blocks become tool messages (before
    its text), each assistant turn's ``tool_use`` blocks its tool calls."""
    out: list[ChatMessage] = []
    if system is not None:
        out.append(ChatMessage("system", _text(system)))
    called: set[str] = set()
    for i, m in enumerate(wire):
        if isinstance(m.content, str):
            out.append(ChatMessage(m.role, m.content))
            continue
        if not m.content:
            raise InvalidRequest(
                f"messages[{i}] has no content blocks; send at least one.",
                param=f"messages.[{i}].content",
            )
        texts: list[str] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(m.content):
            where = f"messages.[{i}].content.[{j}]"
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                if m.role != "assistant":
                    raise InvalidRequest(
                        "tool_use blocks belong in assistant messages.", param=f"{where}.type"
                    )
                calls.append(ToolCall(block.id, block.name, block.input))
                called.add(block.id)
            else:
                if m.role != "user":
                    raise InvalidRequest(
                        "tool_result blocks belong in user messages.", param=f"{where}.type"
                    )
                if block.tool_use_id not in called:
                    raise InvalidRequest(
                        f"tool_result's tool_use_id {block.tool_use_id!r} matches no earlier "
                        "tool_use block.",
                        param=f"{where}.tool_use_id",
                    )
                result = _text(block.content)
                if block.is_error:
                    result = f"Error: {result}"
                out.append(ChatMessage("tool", result, tool_call_id=block.tool_use_id))
        if m.role == "assistant":
            out.append(ChatMessage("assistant", "".join(texts) or None, tuple(calls)))
        elif texts:
            out.append(ChatMessage("user", "".join(texts)))
    return tuple(out)


def chat_request(
    wire: MessageCountTokensParams, limits: RequestLimits, request_id: str = ""
) -> ChatRequest:
    """The core request of a Messages body (sampling from ``MessageCreateParams``)."""
    tools = _tools(wire.tools)
    choice, constraint = _tool_choice(wire.tool_choice, tools)
    sampling = SamplingParams()
    stream = False
    if isinstance(wire, MessageCreateParams):
        stream = wire.stream
        if wire.thinking is not None and wire.thinking.get("type") != "disabled":
            raise InvalidRequest(
                "Extended thinking is not supported by this server: leave 'thinking' out or "
                'send {"type": "disabled"}.',
                param="thinking",
            )
        output = wire.output_config.format if wire.output_config is not None else None
        if output is not None and constraint is None:  # a forced tool call wins, as in chat
            schema = check_json_schema(output.json_schema, "output_config.format.schema")
            constraint = OutputConstraint("json", schema=schema)
        if wire.max_tokens > limits.max_output_tokens:
            raise InvalidRequest(
                f"max_tokens: {wire.max_tokens} > {limits.max_output_tokens}, which is the "
                "maximum allowed number of output tokens for this model.",
                param="max_tokens",
            )
        stops = wire.stop_sequences or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(
                f"stop_sequences may hold at most {MAX_STOP_SEQUENCES} sequences.",
                param="stop_sequences",
            )
        if any(not s for s in stops):
            raise InvalidRequest("stop_sequences may not be empty.", param="stop_sequences")
        temperature = 1.0 if wire.temperature is None else wire.temperature
        sampling = SamplingParams(
            max_tokens=wire.max_tokens,
            temperature=0.0 if temperature < MIN_TEMPERATURE else temperature,
            top_p=1.0 if wire.top_p is None else wire.top_p,
            top_k=-1 if not wire.top_k else wire.top_k,
            stop=tuple(stops),
        )
    return ChatRequest(
        model=wire.model,
        messages=_messages(wire.system, wire.messages),
        sampling=sampling,
        tools=() if choice.mode == "none" else tools,
        tool_choice=choice,
        constraint=constraint,
        request_id=request_id,
        stream=stream,
    )


# ---- render: core events -> Anthropic message or stream events --------------------


def _flat(event: EngineEvent) -> Sequence[EngineEvent]:
    """A relayed upstream chunk stands for the events it carries (its bytes are OpenAI's)."""
    return event.events if isinstance(event, RelayedChunk) else (event,)


def _stop(event: ChoiceFinished) -> tuple[StopReason, str | None]:
    """The stop reason, and the stop sequence when one ended the output (and the engine says
    which)."""
    if event.reason == "stop" and event.stop_sequence is not None:
        return "stop_sequence", event.stop_sequence
    return _STOP_REASONS[event.reason], None


def _input(arguments: str) -> dict[str, Any]:
    """A tool call's input; arguments that are not a JSON object (an upstream's model may
    write anything) are the model's fault, a 502, on both the JSON and the stream path."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        raise InvalidModelOutput("The model wrote a tool call whose input is not JSON.") from None
    if not isinstance(value, dict):
        raise InvalidModelOutput("The model wrote a tool call whose input is not a JSON object.")
    return value


class MessagesService:
    """``POST /v1/messages`` and ``POST /v1/messages/count_tokens``."""

    def __init__(
        self,
        router: Router,
        limits: RequestLimits,
        generate: Generate,
        count_tokens: CountTokens,
    ) -> None:
        self._router = router
        self._limits = limits
        self._generate = generate
        self._count_tokens = count_tokens

    async def create(
        self, raw: Mapping[str, Any], record: RequestRecord
    ) -> Message | AsyncGenerator[MessageStreamEvent, None]:
        wire = parse_wire(MessageCreateParams, raw)
        request = chat_request(wire, self._limits, record.request_id)
        record.stream = wire.stream
        user = wire.metadata.user_id if wire.metadata is not None else None
        events = self._generate(request, record, user or None)
        ident = f"msg_{secrets.token_hex(12)}"
        if wire.stream:
            return self._stream(events, ident, request, record)
        return await self._message(events, ident, request, record)

    async def count_tokens(
        self, raw: Mapping[str, Any], record: RequestRecord
    ) -> MessageTokensCount:
        """The prompt's exact length in tokens: the template and tokenizer the engines use."""
        wire = parse_wire(MessageCountTokensParams, raw)
        request = chat_request(wire, self._limits, record.request_id)
        self._router.check(request.model)
        principal = record.principal if isinstance(record.principal, Principal) else ANONYMOUS
        if not principal.allows(self._router.canonical(request.model)):
            check_model(principal, request.model)
        record.model = request.model
        return {"input_tokens": await self._count_tokens(request)}

    async def _prompt_tokens(self, request: ChatRequest) -> int:
        """The prompt's length by the gate's tokenizer; 0 where it cannot be counted."""
        try:
            return await self._count_tokens(request)
        except GatewayError:
            return 0

    async def _message(
        self,
        events: AsyncGenerator[EngineEvent, None],
        ident: str,
        request: ChatRequest,
        record: RequestRecord,
    ) -> Message:
        content: list[ContentBlock] = []
        reason: StopReason = "end_turn"
        stop_sequence: str | None = None
        recorded = accounted(events, record, request.meter)
        async with aclosing(recorded):
            async for outer in recorded:
                for event in _flat(outer):
                    if isinstance(event, TextDelta):
                        last = content[-1] if content else None
                        if last is not None and last["type"] == "text":
                            last["text"] += event.text
                        elif event.text:
                            content.append({"type": "text", "text": event.text})
                    elif isinstance(event, ToolCallDelta):
                        content.append(
                            {
                                "type": "tool_use",
                                "id": event.id,
                                "name": event.name,
                                "input": _input(event.arguments),
                            }
                        )
                    elif isinstance(event, ChoiceFinished):
                        reason, stop_sequence = _stop(event)
                    elif isinstance(event, Usage):
                        return {
                            "id": ident,
                            "type": "message",
                            "role": "assistant",
                            "content": content,
                            "model": record.deployment or request.model,
                            "stop_reason": reason,
                            "stop_sequence": stop_sequence,
                            "usage": {
                                "input_tokens": event.prompt_tokens,
                                "output_tokens": event.completion_tokens,
                            },
                        }
        raise InternalError("The engine stream ended without usage.")

    async def _stream(
        self,
        events: AsyncGenerator[EngineEvent, None],
        ident: str,
        request: ChatRequest,
        record: RequestRecord,
    ) -> AsyncGenerator[MessageStreamEvent, None]:
        """message_start (once the first event is in: failures before it keep their status),
        ping, content blocks (start, deltas, stop), message_delta, message_stop."""
        meter: UsageMeter = request.meter
        recorded = accounted(events, record, meter)
        index = -1
        open_block: str | None = None  # "text" while a text block is open
        reason: StopReason = "end_turn"
        stop_sequence: str | None = None
        started = False
        async with aclosing(recorded):
            async for outer in recorded:
                if not started:
                    started = True
                    # an upstream engine reports the prompt's tokens only at the end: count them
                    prompt_tokens = meter.prompt_tokens or await self._prompt_tokens(request)
                    yield {
                        "type": "message_start",
                        "message": {
                            "id": ident,
                            "type": "message",
                            "role": "assistant",
                            "content": [],
                            "model": record.deployment or request.model,
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
                        },
                    }
                    yield {"type": "ping"}
                for event in _flat(outer):
                    if isinstance(event, TextDelta):
                        if not event.text:
                            continue
                        if open_block != "text":
                            index += 1
                            open_block = "text"
                            yield {
                                "type": "content_block_start",
                                "index": index,
                                "content_block": {"type": "text", "text": ""},
                            }
                        yield {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": event.text},
                        }
                    elif isinstance(event, ToolCallDelta):
                        _input(event.arguments)  # refused as on the JSON path
                        if open_block is not None:
                            yield {"type": "content_block_stop", "index": index}
                        index += 1
                        open_block = None
                        yield {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {
                                "type": "tool_use",
                                "id": event.id,
                                "name": event.name,
                                "input": {},
                            },
                        }
                        yield {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": event.arguments},
                        }
                        yield {"type": "content_block_stop", "index": index}
                    elif isinstance(event, ChoiceFinished):
                        reason, stop_sequence = _stop(event)
                    elif isinstance(event, Usage):
                        if open_block is not None:
                            yield {"type": "content_block_stop", "index": index}
                        yield {
                            "type": "message_delta",
                            "delta": {"stop_reason": reason, "stop_sequence": stop_sequence},
                            "usage": {
                                "input_tokens": event.prompt_tokens,
                                "output_tokens": event.completion_tokens,
                            },
                        }
                        yield {"type": "message_stop"}
                        return
