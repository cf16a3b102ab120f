"""The authenticated caller and the limits that apply to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qwen_gateway.core.limits import Limits

__all__ = ["ANONYMOUS", "Limits", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """``id`` names the caller in limits, usage and audit: ``key:<id>``, ``jwt:<subject>``,
    ``static`` (the configured static key) or ``anonymous`` (auth disabled)."""

    id: str
    role: Literal["inference", "admin"] = "inference"
    models: frozenset[str] | None = None  # None: every model
    limits: Limits = field(default_factory=Limits)
    key_id: int | None = None
    #: output tokens for a request that names no max_tokens (None: the deployment's default)
    default_max_tokens: int | None = None
    #: the caller's tier (a key's ``tier``, a JWT's tier claim): picks content-safety policies
    tier: str | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Principal("anonymous", role="admin")
