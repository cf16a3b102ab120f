"""Context window and output limits, enforced with clear errors."""

from __future__ import annotations

from qwen_gateway.errors import ContextLengthExceeded


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
