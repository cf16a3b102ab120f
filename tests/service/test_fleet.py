"""Fleet: the engines loaded in the background, and what /health and /ready say of them."""

from __future__ import annotations

from pathlib import Path

from qwen_gateway.config import load_settings
from qwen_gateway.container import build_router
from qwen_gateway.engines.base import EngineHealth
from qwen_gateway.routing.intent import IntentClassifier, RuleClassifier
from qwen_gateway.routing.router import Router
from qwen_gateway.service.fleet import Fleet
from routing.helpers import scripted
from support.flaky import FlakyEngine


class DownEngine(FlakyEngine):
    """An engine whose scheduler is down (what the in-process engine says while restarting)."""

    async def health(self) -> EngineHealth:
        return EngineHealth(ready=False, down=True)


def two_deployments(tmp_path: Path, a: FlakyEngine, b: FlakyEngine) -> Router:
    tree = {"data_dir": str(tmp_path), "deployments": [{"name": "a"}, {"name": "b"}]}
    return build_router(load_settings(tree, env={}), {"a": [a], "b": [b]})


class Database:
    def __init__(self) -> None:
        self.up = True

    async def reachable(self) -> bool:
        return self.up


def rules() -> IntentClassifier:
    return RuleClassifier({})


async def test_ready_once_loaded_with_the_database_up_and_a_replica_of_each_deployment(
    tmp_path: Path,
) -> None:
    a, b = FlakyEngine(scripted("a")), FlakyEngine(scripted("b"))
    db = Database()
    fleet = Fleet(two_deployments(tmp_path, a, b), db.reachable, rules, 3600.0)
    assert fleet.loading and not await fleet.ready()  # not started yet
    fleet.start()
    await fleet.wait_loaded()
    try:
        assert not fleet.loading and fleet.load_error is None
        assert await fleet.ready() and fleet.database_up
        b.healthy = False  # deployment b has no replica up
        assert not await fleet.ready()
        b.healthy = True
        db.up = False
        assert not await fleet.ready() and not fleet.database_up
        db.up = True
        assert await fleet.ready()
    finally:
        await fleet.aclose()


async def test_healthy_is_false_while_an_engine_is_down(tmp_path: Path) -> None:
    a, b = FlakyEngine(scripted("a")), DownEngine(scripted("b"))
    fleet = Fleet(two_deployments(tmp_path, a, b), Database().reachable, rules, 3600.0)
    fleet.start()
    await fleet.wait_loaded()
    try:
        assert not await fleet.healthy()
        assert await Fleet(two_deployments(tmp_path, a, a), Database().reachable, rules, 1.0)\
            .healthy()  # fmt: skip
    finally:
        await fleet.aclose()
