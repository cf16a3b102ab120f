"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# No timing assertions in tests: Hypothesis must not fail a slow example on a busy machine.
settings.register_profile("qwen-gateway", deadline=None)
settings.load_profile("qwen-gateway")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2 checkpoint with the real Qwen2.5 tokenizer, built once."""
    from qwen_gateway.engines.transformers.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


pytest_plugins = ["support.fixtures", "support.stores", "support.browser"]
