"""The one limits type: requests per minute, tokens per minute, concurrency and token budgets.

The same frozen model serves the settings (key tiers, JWT tiers, per-model limits), the
caller's principal, the admin API's request body and the stored key; :class:`KeyLimits` adds
what only a key has.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["KeyLimits", "Limits"]


class Limits(BaseModel):
    """Limits for a caller, a tier or a model (all its callers together); None: no limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    daily_tokens: int | None = Field(default=None, ge=1)
    monthly_tokens: int | None = Field(default=None, ge=1)

    @property
    def any(self) -> bool:
        return any(
            v is not None
            for v in (self.rpm, self.tpm, self.max_concurrency, self.daily_tokens,
                      self.monthly_tokens)
        )  # fmt: skip

    @property
    def counts_tokens(self) -> bool:
        return any(v is not None for v in (self.tpm, self.daily_tokens, self.monthly_tokens))


class KeyLimits(Limits):
    """An API key's limits, its output tokens for requests that name no ``max_tokens``
    (None: the deployment's default), and its tier (content-safety policies select keys by
    tier, as they select JWTs by their tier claim)."""

    default_max_tokens: int | None = Field(default=None, ge=1)
    tier: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

    @property
    def rates(self) -> Limits:
        """The limits without the key's default output length."""
        return Limits(
            rpm=self.rpm,
            tpm=self.tpm,
            max_concurrency=self.max_concurrency,
            daily_tokens=self.daily_tokens,
            monthly_tokens=self.monthly_tokens,
        )
