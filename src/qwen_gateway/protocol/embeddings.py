"""/v1/embeddings wire types, named as OpenAI's API reference names them."""

from __future__ import annotations

from typing import Literal, TypedDict

from pydantic import Field

from qwen_gateway.protocol.common import WireModel

#: The most inputs one request may hold (OpenAI's limit).
MAX_INPUTS = 2048


class CreateEmbeddingRequest(WireModel):
    model: str = Field(min_length=1)
    #: a string, strings, token ids, or lists of token ids (each non-empty)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class Embedding(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(TypedDict):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
