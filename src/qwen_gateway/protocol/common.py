"""Wire types shared by several endpoints."""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


class WireModel(BaseModel):
    """Base for request bodies: unknown fields are ignored, as OpenAI clients send extras.

    Types are strict, as in OpenAI's schema: no ``0``/``"true"`` for a boolean, no ``1.5`` or
    ``"3"`` for an integer (a number field takes an integer), and numbers are finite.
    """

    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, strict=True, allow_inf_nan=False
    )


class StreamOptions(WireModel):
    include_usage: bool = False


StopParam = str | list[str] | None


class SamplingFields(WireModel):
    """Sampling fields accepted by both chat and legacy completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopParam = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    #: the engines seed choice ``i`` with ``seed + i``: core.normalize keeps that in range too
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    user: str | None = None
    #: token id (a decimal string) -> bias; checked, but no engine applies one (a 400 if set)
    logit_bias: dict[str, int] | None = None
    # Extensions understood by vLLM and the in-process engine.
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=2.0)


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


class ModelCapabilities(TypedDict):
    """What requests for a model may ask (an extension of OpenAI's model object)."""

    tools: bool
    json_schema: bool
    logprobs: bool
    echo: bool
    embeddings: bool
    responses_storage: bool


class Model(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_window: NotRequired[int]
    max_output_tokens: NotRequired[int]
    default_max_tokens: NotRequired[int | None]  # output tokens when a request names none
    capabilities: NotRequired[ModelCapabilities]


class ListModelsResponse(TypedDict):
    object: Literal["list"]
    data: list[Model]
