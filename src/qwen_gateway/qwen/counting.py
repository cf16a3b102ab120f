"""The prompt a request gives the model, in Qwen tokens: the one count every part of the
gateway uses (the prompt-level engines, the upstream relay's usage and output limit, the
token limits' admission), so that they can never disagree.

A chat request is rendered with the chat template and its pieces encoded (control-token text
in messages stays text; long pieces such as the tools block come from the tokenizer's
per-piece cache). A raw text prompt keeps its special tokens; a prompt of token ids is
itself.
"""

from __future__ import annotations

from qwen_gateway.core.types import ChatRequest, GenerationRequest
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.qwen.template import ChatTemplate
from qwen_gateway.qwen.tokenizer import QwenTokenizer

__all__ = ["count_prompt_tokens", "prompt_ids"]


def prompt_ids(
    tokenizer: QwenTokenizer, template: ChatTemplate, request: GenerationRequest
) -> list[int]:
    """The prompt's token ids; ids given by the client are checked against the vocabulary
    (:class:`InvalidRequest` naming ``prompt``)."""
    if isinstance(request, ChatRequest):
        return tokenizer.encode_pieces(template.render(request.messages, request.tools))
    if isinstance(request.prompt, str):
        return tokenizer.encode_raw(request.prompt)
    bad = next((t for t in request.prompt if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token id {bad} is outside the vocabulary (0..{tokenizer.vocab_size - 1}).",
            param="prompt",
            code="invalid_value",
        )
    return list(request.prompt)


def count_prompt_tokens(
    tokenizer: QwenTokenizer, template: ChatTemplate, request: GenerationRequest
) -> int:
    """The prompt's length in tokens (ids given by the client are counted, not checked: the
    engine that runs them refuses ids outside its vocabulary)."""
    if isinstance(request, ChatRequest) or isinstance(request.prompt, str):
        return len(prompt_ids(tokenizer, template, request))
    return len(request.prompt)
