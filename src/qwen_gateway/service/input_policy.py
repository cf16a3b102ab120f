"""The input policy stage (slot ``input_policy``): the prompt, before the cache and the engine.

Each message is scanned on its own (a phrase never spans two messages); ``block`` → 400
``content_filter`` naming the category (never the matched text) and nothing reaches the
engine; ``redact`` masks the span before the engine sees it; ``flag`` records; ``review``
queues the request with its answer (the output policy does, told through the record). Tool
definitions, tool calls and JSON schemas are scanned but never rewritten (a redaction there
refuses the request), and a prompt of token ids is refused while an input policy applies (it
cannot be read as text). The high-risk classifier reads the system messages and the last user
message, in overlapping windows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChatMessage,
    EngineEvent,
    GenerationRequest,
    TextRequest,
)
from qwen_gateway.errors import ContentFiltered, InvalidRequest
from qwen_gateway.safety.policy import Plan
from qwen_gateway.safety.stream import filter_text
from qwen_gateway.service.pipeline import Generate, Slot
from qwen_gateway.service.safety import (
    INPUT_WINDOWS,
    Finding,
    PromptReview,
    Reporter,
    SafetyRuntime,
    classify,
    principal_of,
)

log = logging.getLogger("qwen_gateway.safety")


class InputPolicy:
    """Slot ``input_policy``: the prompt, before the cache and the engine."""

    slot: Slot = "input_policy"

    def __init__(
        self,
        runtime: SafetyRuntime,
        canonical: Callable[[str], str],
        reporter: Reporter,
    ) -> None:
        self._runtime = runtime
        self._canonical = canonical
        self._reporter = reporter

    def wrap(self, inner: Generate) -> Generate:
        def guarded(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            return inner(self.check(request, record), record, user)

        return guarded

    def check(self, request: GenerationRequest, record: RequestRecord) -> GenerationRequest:
        """The request as the engine may see it (redacted), or ContentFiltered."""
        runtime = self._runtime
        principal = principal_of(record)
        plan = runtime.policies.plan(
            "input", principal.key_id, principal.tier, self._canonical(request.model)
        )
        if plan is None:
            return request
        if isinstance(request, TextRequest) and not isinstance(request.prompt, str):
            raise InvalidRequest(  # ids cannot be read as the policy reads text
                "A prompt of token ids cannot be checked by the content policy: send text.",
                param="prompt",
                code="token_prompt_not_allowed",
            )
        findings: list[Finding] = []
        if plan.matcher is not None:
            request = self._scan(request, plan, findings)
        if plan.risk and runtime.classifier is not None:
            category = classify(runtime.classifier, _asked_texts(request), INPUT_WINDOWS)
            if category is not None and category in plan.risk:
                findings.append(Finding("input", category, plan.risk[category]))
        for finding in findings:
            self._reporter.report(finding, record)
        for finding in findings:
            if finding.action == "block":
                raise ContentFiltered(
                    f"The request was refused by the content policy (category: {finding.category})."
                )
        for finding in findings:
            if finding.action == "review":
                record.review = PromptReview(finding.category, plan.review)
                break
        return request

    def _scan(
        self, request: GenerationRequest, plan: Plan, findings: list[Finding]
    ) -> GenerationRequest:
        matcher = plan.matcher
        assert matcher is not None
        mask = self._runtime.policies.mask

        def one(text: str) -> str:
            verdict = filter_text(matcher, plan.actions, text, mask)
            for hit in verdict.hits:
                findings.append(Finding("input", hit.category, plan.actions[hit.category]))
            return verdict.deliver if verdict.blocked is None else text

        def fixed(text: str) -> None:
            """Text that cannot be rewritten (tool definitions and calls, schemas): a
            redaction refuses the request as a block does."""
            for hit in filter_text(matcher, plan.actions, text, mask).hits:
                action = plan.actions[hit.category]
                findings.append(
                    Finding("input", hit.category, "block" if action == "redact" else action)
                )

        if isinstance(request, TextRequest):
            assert isinstance(request.prompt, str)
            prompt = one(request.prompt)
            return replace(request, prompt=prompt) if prompt != request.prompt else request
        for tool in request.tools:
            fixed(json.dumps(tool, ensure_ascii=False))
        if request.constraint is not None and request.constraint.schema is not None:
            fixed(json.dumps(request.constraint.schema, ensure_ascii=False))
        messages: list[ChatMessage] = []
        changed = False
        for m in request.messages:
            content = one(m.content) if m.content else m.content
            for call in m.tool_calls:
                args = call.arguments
                fixed(f"{call.name} {args if isinstance(args, str) else json.dumps(args)}")
            if content != m.content:
                changed = True
                m = replace(m, content=content)
            messages.append(m)
        return replace(request, messages=tuple(messages)) if changed else request


def _asked_texts(request: GenerationRequest) -> list[str]:
    """What the classifier reads of a prompt: its system messages and its last user message."""
    if isinstance(request, TextRequest):
        return [request.prompt] if isinstance(request.prompt, str) else []
    system = [m.content for m in request.messages if m.role == "system" and m.content]
    for m in reversed(request.messages):
        if m.role == "user" and m.content:
            return [*system, m.content]
    return system
