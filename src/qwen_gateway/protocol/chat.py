"""/v1/chat/completions wire types, named as OpenAI names them."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from pydantic import Field

from qwen_gateway.protocol.common import INT32_MAX, CompletionUsage, SamplingFields, WireModel


class FunctionCall(WireModel):
    name: str
    arguments: str | dict[str, Any]


class ChatCompletionMessageToolCall(WireModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessage(WireModel):
    """One input message. Role and content shape are checked in core.normalize."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(WireModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatCompletionTool(WireModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatCompletionMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    tools: list[ChatCompletionTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


# ---- responses -------------------------------------------------------------


class ResponseFunctionCall(TypedDict):
    name: str
    arguments: str


class ResponseToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: ResponseFunctionCall


class ChatCompletionResponseMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    tool_calls: NotRequired[list[ResponseToolCall]]


class ChatCompletionTopLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[ChatCompletionTopLogprob]


class ChoiceLogprobs(TypedDict):
    content: list[ChatCompletionTokenLogprob] | None
    refusal: None


class ChatCompletionChoice(TypedDict):
    index: int
    message: ChatCompletionResponseMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
    system_fingerprint: NotRequired[str]


class ChoiceDelta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str
    tool_calls: list[dict[str, Any]]


class ChatCompletionChunkChoice(TypedDict):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: NotRequired[CompletionUsage | None]
