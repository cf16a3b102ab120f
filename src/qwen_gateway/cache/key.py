"""The exact cache's key: a hash of the canonical JSON of the normalised request.

Two requests share a key when the same deployment would be asked the same thing with the same
sampling, within the same scope. What goes in:

- ``scope``: ``tenant:<principal id>`` by default (a hit never crosses callers), or
  ``shared`` when the operator enables a shared scope;
- ``target``: what serves the request, as the router resolves it before routing (an alias is
  its deployment, a sticky split the arm the caller is sent to, the intent model its own
  name, since its choice is a function of the messages);
- the request kind (chat or text), the messages (role, content, tool calls, tool call id,
  name) or the prompt (text or token ids), tools (as sent: key order is kept, the template
  renders them verbatim), tool_choice, the output constraint (response_format), n;
- every sampling parameter: max_tokens and the caller's default output tokens, temperature,
  top_p, top_k, the three penalties, seed, stop.

Left out: whether the client streams (a hit is replayed in either shape), the request id, the
tenant field (the scope says who) and the usage meter.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from qwen_gateway.core.jsonbytes import dumps
from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    GenerationRequest,
    SamplingParams,
)

#: Bump when the key's contents change, so old entries are never read with a new meaning.
KEY_VERSION = 1


def scope_of(principal_id: str, shared: bool) -> str:
    """The scope a caller's entries live in: its own, or the one shared by every caller."""
    return "shared" if shared else f"tenant:{principal_id}"


def request_key(request: GenerationRequest, target: str, scope: str) -> str:
    """The cache key (hex, 64 characters) of ``request`` served by ``target`` in ``scope``."""
    body = dumps(canonical(request, target, scope))  # exact for integers beyond 64 bits
    return hashlib.blake2b(body, digest_size=32).hexdigest()


def canonical(request: GenerationRequest, target: str, scope: str) -> list[Any]:
    """The request as a JSON-able list, in a fixed order: what the key hashes."""
    head: list[Any] = [KEY_VERSION, scope, target, request.n, _sampling(request.sampling)]
    if isinstance(request, ChatRequest):
        constraint = request.constraint
        return [
            *head,
            "chat",
            [_message(m) for m in request.messages],
            list(request.tools),
            [request.tool_choice.mode, request.tool_choice.name],
            None
            if constraint is None
            else [constraint.kind, constraint.schema, list(constraint.tools), constraint.parallel],
        ]
    prompt = request.prompt if isinstance(request.prompt, str) else list(request.prompt)
    return [*head, "text", prompt]


def _sampling(s: SamplingParams) -> list[Any]:
    return [
        s.max_tokens,
        s.default_max_tokens,
        s.temperature,
        s.top_p,
        s.top_k,
        s.presence_penalty,
        s.frequency_penalty,
        s.repetition_penalty,
        s.seed,
        list(s.stop),
    ]


def _message(m: ChatMessage) -> list[Any]:
    calls = [[c.id, c.name, c.arguments] for c in m.tool_calls]
    return [m.role, m.content, calls, m.tool_call_id, m.name]


def last_user_message(request: GenerationRequest) -> str | None:
    """The text of a chat request's last user message (what a near-duplicate lookup compares);
    None for text requests and chats without one."""
    if not isinstance(request, ChatRequest):
        return None
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return None


class NearDuplicates(Protocol):
    """The hook for a near-duplicate lookup (``cache/similar.py``): by the scope and the last
    user message, the key of an entry stored for a near-identical one. The stage asks it only
    after an exact miss, only for chat requests without tools, and tells it every entry it
    stores."""

    async def lookup(self, scope: str, text: str) -> str | None: ...

    async def remember(self, scope: str, text: str, key: str) -> None: ...

    async def forget(self, key: str) -> None:
        """The store no longer holds ``key`` (expired or evicted)."""
        ...
