"""Internal request and event types shared by the service and the engines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens. ``max_tokens=None`` means: up to the output limit, and at most
    ``default_max_tokens`` when that is set (the key's or deployment's default output limit,
    which never makes a request fail: it yields to what the context window leaves)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    default_max_tokens: int | None = None
    #: Log probabilities of the output tokens with this many alternatives each (chat
    #: ``top_logprobs``, completions ``logprobs``); None: not asked (and no cost).
    logprobs: int | None = None
    #: Log probabilities of the prompt tokens too, with this many alternatives (completions
    #: ``echo`` with ``logprobs``); None: not asked.
    prompt_logprobs: int | None = None

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


ToolChoiceMode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode = "auto"
    name: str | None = None  # for mode "named"


@dataclass(frozen=True, slots=True)
class OutputConstraint:
    """What the output must be; engines that can, enforce it while decoding.

    ``kind="json"``: a JSON object, valid against ``schema`` when one is given.
    ``kind="tool_calls"``: Qwen tool-call blocks calling one of ``tools`` (OpenAI function
    dicts with ``name`` and ``parameters``); several only when ``parallel``.
    """

    kind: Literal["json", "tool_calls"]
    schema: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] = ()
    parallel: bool = True


@dataclass(slots=True)
class UsageMeter:
    """Tokens counted so far for one request, updated by the engine as it goes.

    It outlives a stream that was cut off (client gone, upstream failure), so the tokens
    generated before the cut are still accounted; the :class:`Usage` event, when it comes,
    is the final word.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat turn to complete: messages are rendered with the model's chat template."""

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    #: Tools as the client sent them (key order kept: the template renders them verbatim).
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    constraint: OutputConstraint | None = None
    request_id: str = ""
    #: The client reads the output as it comes (engines may pick a single-shot call if not).
    stream: bool = False
    meter: UsageMeter = field(default_factory=UsageMeter, compare=False, repr=False)
    #: Who asks (the principal's id): engines share per-tenant resources by it.
    tenant: str = ""

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(str(t.get("function", {}).get("name", "")) for t in self.tools)


@dataclass(frozen=True, slots=True)
class TextRequest:
    """A raw prompt (legacy completions): special tokens in it stay special."""

    model: str
    prompt: str | tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1
    request_id: str = ""
    #: The client reads the output as it comes (engines may pick a single-shot call if not).
    stream: bool = False
    meter: UsageMeter = field(default_factory=UsageMeter, compare=False, repr=False)
    #: The prompt is returned before the output (``echo``).
    echo: bool = False


GenerationRequest = ChatRequest | TextRequest


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token's log probability under the model, with the most likely alternatives.

    ``token`` is the token's text, or ``bytes:\\xe2\\x80`` (its bytes escaped) when the token
    is not whole UTF-8 by itself; ``bytes`` are its UTF-8 bytes. ``logprob`` is None for the
    first prompt token, which nothing predicts.
    """

    token: str
    logprob: float | None
    bytes: tuple[int, ...]
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New output text for choice ``index``; ``logprobs`` (when asked) are those of the tokens
    whose text this delta completes, so that they travel with the text they belong to."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """The prompt's tokens with their log probabilities (completions ``echo``); sent once,
    before any output, when ``SamplingParams.prompt_logprobs`` asks for them."""

    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True, slots=True)
class ChoiceFinished:
    index: int
    reason: FinishReason
    #: The request's stop sequence that ended the output (reason "stop"), where the engine
    #: can tell; None otherwise.
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Sent once, last, by every engine stream."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One complete tool call of choice ``index``; ``call_index`` counts calls in the choice."""

    index: int
    call_index: int
    id: str
    name: str
    arguments: str  # a JSON object, serialised


@dataclass(frozen=True, slots=True)
class RelayedChunk:
    """An upstream's streamed chat chunk that the client can have as it is (a fast path).

    ``data`` is the chunk's JSON, already in the client's shape; ``events`` and ``usage`` say
    what it carries, for accounting. Relaying engines send these only for streamed chat
    requests without tools or output constraints, and still end with a :class:`Usage` event.
    """

    data: bytes
    events: tuple[TextDelta | ToolCallDelta | ChoiceFinished, ...]
    usage: Usage | None = None
    chunk_id: str = ""  # the upstream's completion id, for any chunk the gateway adds


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Texts (or token ids) to embed, one vector each, in order."""

    model: str
    inputs: tuple[str | tuple[int, ...], ...]
    #: Fewer dimensions than the model's (truncated, then renormalised); None: all of them.
    dimensions: int | None = None
    user: str | None = None
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """One vector per input, in order, each as little-endian float32 bytes (unit length);
    the only event of an embedding engine."""

    vectors: tuple[bytes, ...]
    prompt_tokens: int


EngineEvent = (
    TextDelta
    | ToolCallDelta
    | ChoiceFinished
    | Usage
    | RelayedChunk
    | EmbeddingResult
    | PromptLogprobs
)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What an engine serves."""

    id: str
    context_window: int
    max_output_tokens: int
    #: output tokens for a request that names no max_tokens (None: up to max_output_tokens)
    default_max_tokens: int | None = None
    owned_by: str = "qwen-gateway"
    created: int = 0
    supports_tools: bool = True
    #: Constrained JSON output (``response_format`` json_object / json_schema).
    supports_json_schema: bool = True
    #: True when the engine enforces OutputConstraint while decoding; otherwise the output
    #: is validated afterwards (engines.output) and a violation is an error.
    enforces_constraints: bool = False
    #: What the model does: generate text (chat, completions, Responses, Messages) or embed.
    task: Literal["generate", "embed"] = "generate"
    #: Per-token log probabilities of the output (chat ``logprobs``/``top_logprobs``,
    #: completions ``logprobs``), exact from the model or passed through from an upstream.
    supports_logprobs: bool = False
    #: Completions ``echo`` (the prompt returned first, with its logprobs when asked).
    supports_echo: bool = False
    #: Width of the vectors an embedding model returns (``task="embed"``).
    embedding_dimensions: int | None = None
    #: An embedding model may be asked for fewer ``dimensions`` (truncated, renormalised).
    supports_dimensions: bool = False
