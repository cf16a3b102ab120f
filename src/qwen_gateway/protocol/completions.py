"""Legacy /v1/completions wire types."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from pydantic import Field

from qwen_gateway.protocol.common import INT32_MAX, CompletionUsage, SamplingFields


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(...)
    #: 0 only with ``echo`` (the prompt's logprobs alone, as evaluation harnesses ask)
    max_tokens: int | None = Field(default=16, ge=0, le=INT32_MAX)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=0, le=20)


class CompletionLogprobs(TypedDict):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(TypedDict):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class Completion(TypedDict):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: NotRequired[CompletionUsage | None]
    system_fingerprint: NotRequired[str]
