"""The route stage: the caller's allowlist (an alias is its deployment), then the router,
which admits the request for the deployment it tries."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import build_router
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ChatMessage, ChatRequest, ModelInfo
from qwen_gateway.errors import ModelNotFound, PermissionDenied
from qwen_gateway.policy.principal import Principal
from qwen_gateway.routing.router import Router
from qwen_gateway.service.route import Route
from routing.helpers import scripted


def _router(tmp_path: Path) -> Router:
    settings = load_settings(
        {"data_dir": str(tmp_path), "deployments": [{"name": "m", "aliases": ["latest"]}]},
        env={},
    )
    return build_router(settings, {"m": scripted("m")})


def _record(models: frozenset[str] | None) -> RequestRecord:
    record = RequestRecord("r")
    record.principal = Principal("key:1", models=models)
    return record


def _request(model: str) -> ChatRequest:
    return ChatRequest(model, (ChatMessage("user", "hi"),))


@pytest.mark.parametrize(
    ("allowed", "asked"),
    [(None, "m"), (frozenset({"m"}), "m"), (frozenset({"m"}), "latest"),
     (frozenset({"latest"}), "latest")],
)  # fmt: skip
async def test_a_model_the_caller_may_use_is_routed(
    tmp_path: Path, allowed: frozenset[str] | None, asked: str
) -> None:
    record = _record(allowed)
    events = Route(_router(tmp_path))(_request(asked), record, None)
    await events.aclose()  # routed at the first anext only: nothing started
    assert record.model == asked


@pytest.mark.parametrize(("allowed", "asked"), [(frozenset({"x"}), "m"), (frozenset(), "latest")])
async def test_a_model_outside_the_allowlist_is_refused_before_routing(
    tmp_path: Path, allowed: frozenset[str], asked: str
) -> None:
    with pytest.raises(PermissionDenied):
        Route(_router(tmp_path))(_request(asked), _record(allowed), None)


async def test_an_unknown_model_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        Route(_router(tmp_path))(_request("nope"), _record(None), None)


class Recording:
    """An admit stage that notes the requests it was asked to admit."""

    def __init__(self) -> None:
        self.hooks: list[tuple[str, str | None]] = []

    def hook(self, principal: Principal, request: object, record: RequestRecord,
             asked: str | None) -> object:  # fmt: skip
        self.hooks.append((principal.id, asked))

        async def admit(deployment: str, info: ModelInfo) -> None:
            return None

        return admit


async def test_the_admit_stage_is_handed_to_the_router(tmp_path: Path) -> None:
    admit = Recording()
    events = Route(_router(tmp_path), admit)(_request("latest"), _record(None), None)  # type: ignore[arg-type]
    await events.aclose()
    assert admit.hooks == [("key:1", None)]  # an alias is no split: no shared limits asked
