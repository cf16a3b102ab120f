"""Wire types shared by several endpoints."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    """Base for request bodies: unknown fields are ignored, as OpenAI clients send extras."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StreamOptions(WireModel):
    include_usage: bool = False


StopParam = str | list[str] | None


class SamplingFields(WireModel):
    """Sampling fields accepted by both chat and legacy completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopParam = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    user: str | None = None
    # Extensions understood by vLLM and the in-process engine.
    top_k: int | None = Field(default=None, ge=-1)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)


class CompletionUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDetail(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(TypedDict):
    error: ErrorDetail


class Model(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_window: NotRequired[int]
    max_output_tokens: NotRequired[int]
    default_max_tokens: NotRequired[int | None]  # output tokens when a request names none


class ListModelsResponse(TypedDict):
    object: Literal["list"]
    data: list[Model]
