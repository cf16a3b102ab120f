"""The registry's parts: deployments (a model on its replicas), weighted splits, the intent
model, and who is asking (for sticky splits and replica affinity)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from qwen_gateway.core.types import ChatRequest, EmbeddingRequest, GenerationRequest, ModelInfo
from qwen_gateway.errors import EngineUnavailable
from qwen_gateway.routing.balancer import Balancer, Replica
from qwen_gateway.routing.breaker import BreakerState
from qwen_gateway.routing.intent import INLINE_CHARS, Intent, IntentClassifier, conversation_text

Sticky = Literal["none", "user", "key"]
#: What :meth:`Deployment.missing_capability` answers when the request is for the other task
#: (an embedding for a chat model, text from an embedding model): the client named the wrong
#: model, so the 400 names ``model``.
TASK_CAPABILITIES = frozenset({"embeddings", "text generation"})


@dataclass(frozen=True, slots=True)
class RouteContext:
    """Who is asking, for sticky splits and replica affinity, and what it may use."""

    caller: str = "anonymous"
    user: str | None = None
    #: The public names the caller is allowed (None: every one). The deployments it may be
    #: served by are those these names reach without a fallback (see ``Router.reachable``).
    models: frozenset[str] | None = None


@dataclass(eq=False)
class Deployment:
    name: str
    balancer: Balancer
    fallbacks: tuple[str, ...] = ()
    supports_tools: bool = True
    supports_json_schema: bool = True
    supports_logprobs: bool = True
    supports_echo: bool = True
    max_concurrency: int | None = None
    default_max_tokens: int | None = None
    outstanding: int = 0

    @property
    def replicas(self) -> list[Replica]:
        return self.balancer.replicas

    @property
    def info(self) -> ModelInfo:
        info = self.replicas[0].engine.info
        default = self.default_max_tokens
        if default is not None:
            default = min(default, info.max_output_tokens)
        return replace(
            info,
            id=self.name,
            default_max_tokens=default,
            # what the engine can do, as far as the operator's ``capabilities:`` allow
            supports_tools=info.supports_tools and self.supports_tools,
            supports_json_schema=info.supports_json_schema and self.supports_json_schema,
            supports_logprobs=info.supports_logprobs and self.supports_logprobs,
            supports_echo=info.supports_echo and self.supports_echo,
        )

    def missing_capability(self, request: GenerationRequest | EmbeddingRequest) -> str | None:
        """What the request asks for (named as its parameter) that this deployment cannot
        do, if anything."""
        task = self.replicas[0].engine.info.task
        if isinstance(request, EmbeddingRequest):
            return "embeddings" if task != "embed" else None
        if task == "embed":
            return "text generation"
        info = self.info
        if request.sampling.logprobs is not None and not info.supports_logprobs:
            return "logprobs"
        if not isinstance(request, ChatRequest):
            # the gateway echoes the prompt's text itself; its logprobs need the engine
            if request.echo and not self.supports_echo:
                return "echo"
            if request.sampling.prompt_logprobs is not None and not info.supports_echo:
                return "echo"
            return None
        wants_tools = bool(request.tools) and request.tool_choice.mode != "none"
        if wants_tools and not info.supports_tools:
            return "tools"
        constraint = request.constraint
        if constraint is not None and constraint.kind == "json" and not info.supports_json_schema:
            return "response_format"
        return None


@dataclass(frozen=True, slots=True)
class Split:
    """Traffic for ``name`` shared across deployments (or aliases) by weight."""

    name: str
    arms: tuple[tuple[str, float], ...]
    sticky: Sticky = "none"

    def pick(self, ctx: RouteContext, rng: random.Random) -> str:
        total = sum(w for _, w in self.arms)
        key = None
        if self.sticky == "key":
            key = ctx.caller
        elif self.sticky == "user":
            key = ctx.user or ctx.caller
        if key is None:
            point = rng.random() * total
        else:
            digest = hashlib.blake2b(f"{self.name}\x00{key}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") / 2**64 * total
        for arm, weight in self.arms:
            if point < weight:
                return arm
            point -= weight
        return self.arms[-1][0]


@dataclass(eq=False)
class IntentRoute:
    """The virtual model ``model``: classify, then send to ``routes[category]``."""

    model: str
    routes: Mapping[str, str]
    default: str = "general"
    #: Classifies on the event loop (a worker thread's hop costs more than the learned model's
    #: ~0.1 ms, and far more behind a busy engine thread's GIL); long texts in a worker thread.
    classifier: IntentClassifier | None = None

    async def classify(self, request: GenerationRequest | EmbeddingRequest) -> Intent:
        if isinstance(request, EmbeddingRequest):  # the intent model serves generation only
            return Intent(self.default, 1.0, "embeddings")
        if self.classifier is None:
            raise EngineUnavailable("The intent classifier is still loading.",
                                    headers={"Retry-After": "2"})  # fmt: skip
        if isinstance(request, ChatRequest):
            text = conversation_text(request.messages)
        else:
            text = request.prompt if isinstance(request.prompt, str) else ""
        if not text.strip():
            return Intent(self.default, 1.0, "empty")
        if len(text) > INLINE_CHARS:
            return await asyncio.to_thread(self.classifier.classify, text)
        return self.classifier.classify(text)

    def target(self, category: str) -> str:
        return self.routes.get(category) or self.routes[self.default]


@dataclass(frozen=True, slots=True)
class ReplicaState:
    deployment: str
    replica: str
    breaker: BreakerState
    healthy: bool
    outstanding: int
