"""Internal request and event types shared by the service and the engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens. ``max_tokens=None`` means: up to the output limit."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any] | str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat turn to complete: messages are rendered with the model's chat template."""

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    tools: tuple[dict[str, Any], ...] = ()
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class TextRequest:
    """A raw prompt (legacy completions): special tokens in it stay special."""

    model: str
    prompt: str | tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    request_id: str = ""


GenerationRequest = ChatRequest | TextRequest


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New output text for choice ``index``."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ChoiceFinished:
    index: int
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class Usage:
    """Sent once, last, by every engine stream."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


EngineEvent = TextDelta | ChoiceFinished | Usage


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What an engine serves."""

    id: str
    context_window: int
    max_output_tokens: int
    owned_by: str = "qwen-gateway"
    created: int = 0
    supports_tools: bool = True
