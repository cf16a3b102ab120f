"""The normalise stage: the wire body becomes the core request; a request without max_tokens
gets the caller's default output, else the model's, capped by the model's output limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import build_router
from qwen_gateway.core.normalize import RequestLimits
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.policy.principal import Principal
from qwen_gateway.service.normalise import Normalise
from routing.helpers import scripted

MESSAGES = [{"role": "user", "content": "hi"}]


def _normalise(tmp_path: Path, default_max_tokens: int | None = None) -> Normalise:
    deployment: dict[str, object] = {"name": "m"}
    if default_max_tokens is not None:
        deployment["default_max_tokens"] = default_max_tokens
    settings = load_settings({"data_dir": str(tmp_path), "deployments": [deployment]}, env={})
    router = build_router(settings, {"m": scripted("m", context_window=4096)})
    return Normalise(router, RequestLimits(max_output_tokens=8192, max_n=4))


def _record(default_max_tokens: int | None = None) -> RequestRecord:
    record = RequestRecord("req_9")
    record.principal = Principal("key:1", default_max_tokens=default_max_tokens)
    return record


async def test_chat_body_becomes_the_core_request(tmp_path: Path) -> None:
    record = _record()
    wire, request = _normalise(tmp_path).chat(
        {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 7}, record
    )
    assert wire.stream and record.stream
    assert (request.model, request.request_id, request.sampling.max_tokens) == ("m", "req_9", 7)
    assert request.sampling.default_max_tokens is None


async def test_the_callers_default_output_applies_capped_by_the_model(tmp_path: Path) -> None:
    _, request = _normalise(tmp_path).chat({"model": "m", "messages": MESSAGES}, _record(10**6))
    assert request.sampling.max_tokens is None
    assert request.sampling.default_max_tokens == 4096  # the scripted model's output limit


async def test_the_models_default_output_applies_when_the_caller_has_none(tmp_path: Path) -> None:
    _, request = _normalise(tmp_path, 33).chat({"model": "m", "messages": MESSAGES}, _record())
    assert request.sampling.default_max_tokens == 33
    _, mine = _normalise(tmp_path, 33).chat({"model": "m", "messages": MESSAGES}, _record(12))
    assert mine.sampling.default_max_tokens == 12


async def test_a_bad_body_is_a_client_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _normalise(tmp_path).chat({"model": "m", "messages": MESSAGES, "n": 99}, _record())
    assert caught.value.param == "n"


async def test_legacy_completions_keep_openais_default_of_16_tokens(tmp_path: Path) -> None:
    _, request = _normalise(tmp_path, 33).text({"model": "m", "prompt": "x"}, _record(12))
    assert request.sampling.max_tokens == 16
