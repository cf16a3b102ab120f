"""Output budgets: what a request may generate within the window and the output limits."""

from __future__ import annotations

import pytest

from qwen_gateway.errors import ContextLengthExceeded
from qwen_gateway.qwen.limits import output_budget


def test_a_default_output_limit_caps_requests_without_max_tokens_and_never_fails_them() -> None:
    assert output_budget(30, None, 256, 8192) == 226  # what the window leaves
    assert output_budget(30, None, 4096, 8192, default=2048) == 2048
    assert output_budget(30, None, 256, 8192, default=2048) == 226  # yields to the window
    assert output_budget(30, 9, 4096, 8192, default=2048) == 9  # the client's own value wins


def test_an_explicit_max_tokens_past_the_window_is_refused() -> None:
    with pytest.raises(ContextLengthExceeded):
        output_budget(30, 300, 256, 8192, default=5)
