"""The plug-in contract: a frozen config model that refuses unknown keys, and a model card
shown while the engine is built."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qwen_gateway.engines.openai_upstream import UpstreamConfig
from qwen_gateway.engines.plugin import EngineConfig, EngineContext
from qwen_gateway.engines.scripted import ScriptedConfig
from qwen_gateway.engines.transformers.engine import TransformersConfig


class Minimal(EngineConfig):
    size: int = 1


def test_an_engine_config_refuses_unknown_keys_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Minimal.model_validate({"sise": 2})
    config = Minimal(size=2)
    with pytest.raises(ValidationError):
        config.size = 3  # type: ignore[misc]


def test_the_card_before_the_engine_is_built() -> None:
    ctx = EngineContext("served")
    default = Minimal().expected_info(ctx)
    assert (default.id, default.context_window) == ("served", 131072)
    local = TransformersConfig(context_window=4096, max_output_tokens=512).expected_info(ctx)
    assert (local.context_window, local.max_output_tokens, local.enforces_constraints) == (
        4096, 512, True
    )  # fmt: skip
    relayed = UpstreamConfig().expected_info(ctx)
    assert (relayed.owned_by, relayed.context_window) == ("upstream", 131072)
    assert (
        ScriptedConfig(replies=["x"], context_window=64).expected_info(ctx).max_output_tokens == 64
    )
