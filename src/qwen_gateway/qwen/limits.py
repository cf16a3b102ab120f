"""Context window and output limits, enforced with clear errors."""

from __future__ import annotations

import json

from qwen_gateway.core.types import ChatRequest, GenerationRequest
from qwen_gateway.errors import ContextLengthExceeded, InvalidRequest

#: No real text packs more characters than this into one token on average (English runs at
#: about 4, Chinese below 2): a prompt of more than ``context_window`` times as many
#: characters cannot fit, and is refused before it is tokenised.
PROMPT_CHARS_PER_TOKEN = 8


def output_budget(
    prompt_tokens: int,
    requested: int | None,
    context_window: int,
    max_output: int,
    default: int | None = None,
) -> int:
    """How many tokens may be generated, or raise ``context_length_exceeded``.

    ``requested=None`` (clients such as Open WebUI send no ``max_tokens``) means: as many as
    the output limit, the default output limit (``default``) and the remaining context allow.
    """
    room = context_window - prompt_tokens
    if requested is None:
        if room < 1:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context_window} tokens. However, your "
                f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the "
                "messages.",
                param="messages",
            )
        return min(room, max_output, default or max_output)
    if prompt_tokens + requested > context_window:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_window} tokens. However, you "
            f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the messages, "
            f"{requested} in the completion). Please reduce the length of the messages or "
            "completion.",
            param="messages",
        )
    return requested


def prompt_chars(request: GenerationRequest) -> int:
    """The characters of text the prompt is made of (a token id counts as one)."""
    if not isinstance(request, ChatRequest):
        return len(request.prompt)
    size = 0
    try:
        for m in request.messages:
            size += len(m.content or "")
            for call in m.tool_calls:
                args = call.arguments
                size += len(call.name) + (len(args) if isinstance(args, str) else _json(args))
        return size + sum(_json(t) for t in request.tools)
    except RecursionError:
        raise InvalidRequest(
            "The tools or tool calls of your request are nested too deeply.",
            param="messages",
            code="invalid_value",
        ) from None


def _json(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def check_prompt_size(request: GenerationRequest, context_window: int) -> int:
    """The prompt's characters, or ``context_length_exceeded`` when they are far more than
    the window could hold (tokenising them would be wasted work)."""
    chars = prompt_chars(request)
    limit = context_window * PROMPT_CHARS_PER_TOKEN
    if chars > limit:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_window} tokens. However, your "
            f"messages hold {chars} characters, far more than that many tokens can hold (at "
            f"most {limit}). Please reduce the length of the messages.",
            param="messages" if isinstance(request, ChatRequest) else "prompt",
        )
    return chars
