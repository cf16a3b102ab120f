"""/v1/responses wire types, named as OpenAI's Responses API reference names them.

The request body is :class:`ResponseCreateParams`; input items and tools are kept as plain
dicts here and checked one by one in ``core/responses.py``, so that each 400 can name the
exact item (``input.[2].call_id``). What comes back (:class:`Response`, its output items and
the stream events) are TypedDicts, as for chat completions.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from pydantic import ConfigDict, Field

from qwen_gateway.protocol.common import INT32_MAX, WireModel


class ResponseTextFormat(WireModel):
    """``text.format``: ``text``, ``json_object`` or ``json_schema`` (name, schema, strict)."""

    type: str
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseTextConfig(WireModel):
    format: ResponseTextFormat | None = None
    verbosity: str | None = None


class ResponseCreateParams(WireModel):
    """The body of ``POST /v1/responses``. Unknown fields are refused (as OpenAI does), so no
    parameter is ever dropped silently; those below that this server cannot honour are
    refused by name in ``core/responses.py``."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, strict=True, allow_inf_nan=False
    )

    model: str = Field(min_length=1)
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseTextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool | None = None
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=128)
    # accepted, and refused by name unless they ask for nothing this server lacks
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: str | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    conversation: Any = None
    prompt: Any = None
    # hints with no effect on the answer here: accepted and ignored
    stream_options: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = Field(default=None, max_length=256)


# ---- what comes back ------------------------------------------------------


class OutputTextContent(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class InputTextContent(TypedDict):
    type: Literal["input_text"]
    text: str


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(TypedDict):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: ItemStatus
    content: list[OutputTextContent]


class InputMessage(TypedDict):
    id: str
    type: Literal["message"]
    role: Literal["user", "system", "developer"]
    status: ItemStatus
    content: list[InputTextContent]


class FunctionToolCall(TypedDict):
    id: str
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class FunctionToolCallOutput(TypedDict):
    id: str
    type: Literal["function_call_output"]
    call_id: str
    output: str
    status: ItemStatus


OutputItem = OutputMessage | FunctionToolCall
#: An item as the input_items endpoint lists it.
ItemResource = InputMessage | OutputMessage | FunctionToolCall | FunctionToolCallOutput


class InputTokensDetails(TypedDict):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(TypedDict):
    code: str
    message: str


class IncompleteDetails(TypedDict):
    reason: Literal["max_output_tokens", "content_filter"]


ResponseStatus = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]


class Response(TypedDict):
    id: str
    object: Literal["response"]
    created_at: int
    completed_at: NotRequired[int | None]
    status: ResponseStatus
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float | None
    top_p: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    truncation: Literal["disabled"]
    usage: NotRequired[ResponseUsage]
    user: NotRequired[str | None]
    metadata: dict[str, str]
    background: bool


class ResponseItemList(TypedDict):
    object: Literal["list"]
    data: list[ItemResource]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ResponseDeleted(TypedDict):
    id: str
    object: Literal["response.deleted"]
    deleted: bool


#: A stream event: ``type`` and ``sequence_number`` always, the rest as its type says.
ResponseStreamEvent = dict[str, Any]
