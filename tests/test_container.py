"""The composition root: ``build`` gives started services and closes them on exit; the first
start with authentication on creates an admin key through the admin service (audited)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from qwen_gateway.config import ConfigError, load_settings
from qwen_gateway.container import Container, assemble, build
from qwen_gateway.core.textclassifier import Example
from qwen_gateway.safety.classifier import NONE, RiskClassifier
from qwen_gateway.service.route import Route
from routing.helpers import scripted


async def test_build_starts_the_services_and_bootstraps_one_admin_key(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, env={})
    async with build(settings, {"m": scripted("m")}) as services:
        await services.fleet.wait_loaded()
        assert await services.fleet.ready()
        key = services.bootstrap_key
        assert key is not None
        path = services.bootstrap_key_file
        assert path.read_text() == key + "\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        (event,) = await services.store.admin.audit(10, "key.create")
        assert (event["actor"], event["details"]["role"]) == ("bootstrap", "admin")
        assert isinstance(services.pipeline.generate, Route)  # no optional stage configured
    async with build(settings, {"m": scripted("m")}) as again:
        assert again.bootstrap_key is None  # a key exists: none is made
        assert await again.store.admin.count_keys() == 1


async def test_without_authentication_no_key_is_made(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with build(settings, {"m": scripted("m")}) as services:
        assert services.bootstrap_key is None
        assert await services.store.admin.count_keys() == 0


async def test_the_container_facade_starts_and_closes_once(
    tmp_path: Path,
) -> None:
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    container = Container(settings, {"m": scripted("m")})
    await container.start()
    await container.aclose()
    await container.aclose()  # twice: nothing left to close
    assert container.services.pipeline.account.in_flight == 0


async def test_the_safety_policies_get_the_high_risk_classifier(tmp_path: Path) -> None:
    section = {"policies": [{"name": "risky", "actions": {"medical_advice": "review"}}]}
    tree = {"data_dir": str(tmp_path), "auth": {"enabled": False}, "safety": section}
    services = assemble(load_settings(tree, env={}), {"m": scripted("m")})
    assert services.safety is not None and services.safety.classifier is not None
    classifier = services.safety.classifier
    assert set(classifier.categories) == {"financial_advice", "medical_advice", "legal_advice"}
    assert classifier.category("我发烧了，布洛芬一次吃几片？") == "medical_advice"
    assert classifier.category("What does the pancreas do?") is None

    # a model retrained into the data directory is the one used, with its categories
    examples = [Example(f"Which lottery numbers should I pick, draw {i}?", "gambling_advice")
                for i in range(5)] + [Example(f"Lotteries began in year {i}.", NONE)
                                      for i in range(5)]  # fmt: skip
    RiskClassifier.train(examples).save(tmp_path / "risk-model.json")
    section["policies"] = [{"name": "risky", "actions": {"gambling_advice": "review"}}]
    services = assemble(load_settings(tree, env={}), {"m": scripted("m")})
    assert services.safety is not None and services.safety.classifier is not None
    assert services.safety.classifier.categories == ("gambling_advice",)

    tree["safety"] = {"classifier": {"model_file": str(tmp_path / "absent.json")}}
    with pytest.raises(ConfigError, match=r"safety\.classifier\.model_file"):
        assemble(load_settings(tree, env={}), {"m": scripted("m")})
    (tmp_path / "risk-model.json").write_text("{}", encoding="utf-8")
    tree["safety"] = {}
    with pytest.raises(ConfigError, match=r"safety\.classifier.*not a high-risk model"):
        assemble(load_settings(tree, env={}), {"m": scripted("m")})


def test_the_shipped_safety_example_compiles_with_the_classifier(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "safety.yaml"
    settings = load_settings({"data_dir": str(tmp_path)}, config_file=example, env={})
    services = assemble(settings, {settings.served_model_name: scripted("m")})
    assert services.safety is not None and services.safety.classifier is not None
    assert "financial_advice" in services.safety.classifier.categories


async def test_shutdown_lets_a_periodic_round_finish_instead_of_cancelling_it() -> None:
    """A maintenance round (a purge: database statements) in progress when the server stops
    is awaited, not cancelled mid-statement; no further round starts."""
    import asyncio
    from contextlib import AsyncExitStack

    from qwen_gateway.container import _every

    started, release = asyncio.Event(), asyncio.Event()
    rounds: list[str] = []

    async def round_() -> None:
        rounds.append("started")
        started.set()
        await release.wait()
        rounds.append("finished")

    async with AsyncExitStack() as stack:
        _every(stack, "test-round", 3600.0, round_)
        await started.wait()
        stack.callback(release.set)  # runs first on exit: the round can finish while awaited
    assert rounds == ["started", "finished"]
