"""/v1/messages wire types (Anthropic's Messages API), named as Anthropic's API reference
names them: request parameters are pydantic models (``...Param``), responses and stream
events are TypedDicts."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict

from pydantic import Field

from qwen_gateway.protocol.common import INT32_MAX, WireModel

# ---- request ----------------------------------------------------------------


class TextBlockParam(WireModel):
    type: Literal["text"]
    text: str


class ToolUseBlockParam(WireModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=64)
    input: dict[str, Any]


class ToolResultBlockParam(WireModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[TextBlockParam] | None = None
    is_error: bool | None = None


ContentBlockParam = Annotated[
    TextBlockParam | ToolUseBlockParam | ToolResultBlockParam, Field(discriminator="type")
]


class MessageParam(WireModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlockParam]


class ToolParam(WireModel):
    """A client tool. Server tools (with another ``type``) are not offered."""

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoiceParam(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class MetadataParam(WireModel):
    user_id: str | None = Field(default=None, max_length=256)


class JSONOutputFormatParam(WireModel):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfigParam(WireModel):
    """Structured output (``format``); ``effort`` is accepted and has no effect."""

    format: JSONOutputFormatParam | None = None


class MessageCountTokensParams(WireModel):
    """The body of ``POST /v1/messages/count_tokens``: what makes the prompt."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None


class MessageCreateParams(MessageCountTokensParams):
    """The body of ``POST /v1/messages``; ``max_tokens`` is required, as Anthropic's is."""

    max_tokens: int = Field(ge=1, le=INT32_MAX)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    metadata: MetadataParam | None = None
    output_config: OutputConfigParam | None = None
    #: Extended thinking: only ``{"type": "disabled"}`` is served (the service refuses more).
    thinking: dict[str, Any] | None = None


# ---- response -----------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


class TextBlock(TypedDict):
    type: Literal["text"]
    text: str


class ToolUseBlock(TypedDict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextBlock | ToolUseBlock


class Usage(TypedDict):
    input_tokens: int
    output_tokens: int


class Message(TypedDict):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class MessageTokensCount(TypedDict):
    input_tokens: int


# ---- stream events ------------------------------------------------------------


class MessageStartEvent(TypedDict):
    type: Literal["message_start"]
    message: Message


class PingEvent(TypedDict):
    type: Literal["ping"]


class ContentBlockStartEvent(TypedDict):
    type: Literal["content_block_start"]
    index: int
    content_block: ContentBlock


class TextDelta(TypedDict):
    type: Literal["text_delta"]
    text: str


class InputJSONDelta(TypedDict):
    type: Literal["input_json_delta"]
    partial_json: str


class ContentBlockDeltaEvent(TypedDict):
    type: Literal["content_block_delta"]
    index: int
    delta: TextDelta | InputJSONDelta


class ContentBlockStopEvent(TypedDict):
    type: Literal["content_block_stop"]
    index: int


class MessageDelta(TypedDict):
    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageDeltaUsage(TypedDict):
    output_tokens: int
    input_tokens: NotRequired[int]


class MessageDeltaEvent(TypedDict):
    type: Literal["message_delta"]
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(TypedDict):
    type: Literal["message_stop"]


MessageStreamEvent = (
    MessageStartEvent
    | PingEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
)


# ---- errors -------------------------------------------------------------------


class ErrorObject(TypedDict):
    type: str
    message: str


class ErrorResponse(TypedDict):
    type: Literal["error"]
    error: ErrorObject
