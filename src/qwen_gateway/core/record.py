"""What one request did: filled in along the pipeline, read by the access log and metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None  # as the client named it
    deployment: str | None = None  # the deployment that answered
    route: str | None = None  # how it was chosen (x-qwen-gateway-route)
    arm: str | None = None  # the split arm it was sent to
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    finish_reason: str | None = None
    cancelled: bool = False
    principal: Any = None  # policy.Principal, once authenticated
    permit: Any = None  # policy.ratelimit.Permit while the request holds one
    cache: str | None = None  # the response cache's verdict: "hit", "miss" or "bypass"
    #: the request's ``Cache-Control`` header, as the client sent it (the cache reads
    #: ``no-cache`` and ``no-store`` in it)
    cache_control: str | None = None
    #: content-safety categories that matched ("input:<category>", "output:<category>"),
    #: for metrics and the audit trail: never the matched text
    safety: list[str] | None = None
    review_id: str | None = None  # the review item this answer was queued as, if any
    review: Any = None  # a review the prompt asked for (the input policy tells the output's)

    def mark_first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started
