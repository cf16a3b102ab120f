"""The one limits type: validated, frozen, and the same for settings, keys and principals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qwen_gateway.core.limits import KeyLimits, Limits


def test_no_limits_by_default() -> None:
    assert not Limits().any
    assert not Limits().counts_tokens
    assert Limits(max_concurrency=1).any and not Limits(max_concurrency=1).counts_tokens
    for field in ("tpm", "daily_tokens", "monthly_tokens"):
        assert Limits.model_validate({field: 1}).counts_tokens


@pytest.mark.parametrize("bad", [{"rpm": 0}, {"tpm": -1}, {"rpn": 5}, {"daily_tokens": "many"}])
def test_invalid_limits_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Limits.model_validate(bad)


def test_limits_are_frozen_values() -> None:
    limits = Limits(rpm=5)
    with pytest.raises(ValidationError):
        limits.rpm = 6  # type: ignore[misc]
    assert limits == Limits(rpm=5)
    assert hash(limits) == hash(Limits(rpm=5))  # usable in the limiter's subjects


def test_a_keys_rates_leave_out_its_default_output_length() -> None:
    key = KeyLimits(rpm=5, daily_tokens=100, default_max_tokens=64)
    assert key.rates == Limits(rpm=5, daily_tokens=100)
    assert type(key.rates) is Limits
    with pytest.raises(ValidationError):
        KeyLimits(default_max_tokens=0)
