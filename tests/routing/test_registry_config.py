"""Registry configuration: what a start-up error says for each kind of mistake, and that the
shipped examples are valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qwen_gateway.config import ConfigError, load_settings
from qwen_gateway.container import build_router, deployment_specs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ONE = [{"name": "a"}]

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("duplicate name", {"deployments": [{"name": "a"}, {"name": "a"}]},
     "'deployments.1.name' ('a'): the name is already used by 'deployments.0.name'"),
    ("alias clashes with a name", {"deployments": [{"name": "a", "aliases": ["b"]}, {"name": "b"}]},
     "'deployments.1.name' ('b'): the name is already used by 'deployments.0.aliases.0'"),
    ("unknown fallback", {"deployments": [{"name": "a", "fallbacks": ["nope"]}]},
     "'deployments.0.fallbacks.0' ('nope'): no other deployment or alias has this name"),
    ("fallback to itself", {"deployments": [{"name": "a", "aliases": ["x"], "fallbacks": ["x"]}]},
     "'deployments.0.fallbacks.0' ('x')"),
    ("URL replicas on an in-process engine",
     {"deployments": [{"name": "a", "replicas": ["http://h:1/v1"]}]},
     "'deployments.0.replicas' (['http://h:1/v1']): a list of URLs needs engine 'openai'"),
    ("a replica that is not a URL",
     {"deployments": [{"name": "a", "engine": "openai", "replicas": ["h:1"]}]},
     "'deployments.0.replicas.0' ('h:1'): not an http(s) URL"),
    ("no replicas", {"deployments": [{"name": "a", "replicas": 0}]},
     "'deployments.0.replicas' (0): at least one replica is needed"),
    ("bad name", {"deployments": [{"name": "a b"}]}, "'deployments.0.name' ('a b')"),
    ("served_name in a deployment", {"deployments": [{"name": "a", "served_name": "b"}]},
     "'deployments.0.served_name' ('b'): a deployment's `name` is the name clients use"),
    ("unknown key", {"deployments": [{"name": "a", "wieght": 3}]},
     "'deployments.0.wieght' (value not shown): Extra inputs are not permitted"),
    ("bad concurrency", {"deployments": [{"name": "a", "max_concurrency": 0}]},
     "'deployments.0.max_concurrency' (0)"),
    ("split arm unknown", {"deployments": ONE, "routing": {"splits": {"s": {"arms": {"z": 1}}}}},
     "'routing.splits.s.arms.z' ('z'): no deployment or alias has this name"),
    ("split weight zero", {"deployments": ONE, "routing": {"splits": {"s": {"arms": {"a": 0}}}}},
     "'routing.splits.s.arms.a' (0.0): weights must be positive"),
    ("split without arms", {"deployments": ONE, "routing": {"splits": {"s": {"arms": {}}}}},
     "'routing.splits.s.arms' ({})"),
    ("split named like a deployment",
     {"deployments": ONE, "routing": {"splits": {"a": {"arms": {"a": 1}}}}},
     "'routing.splits.a' ('a'): the name is already used by 'deployments.0.name'"),
    ("intent route unknown",
     {"deployments": ONE, "routing": {"intent": {"routes": {"general": "a", "code": "c"}}}},
     "'routing.intent.routes.code' ('c'): no deployment, alias or split has this name"),
    ("intent default without a route",
     {"deployments": ONE, "routing": {"intent": {"routes": {"code": "a"}}}},
     "'routing.intent.default' ('general'): the default category needs a route"),
    ("bad strategy", {"deployments": ONE, "routing": {"strategy": "random"}},
     "'routing.strategy' ('random')"),
    ("bad threshold", {"deployments": ONE, "routing": {"intent": {"threshold": 2}}},
     "'routing.intent.threshold' (2)"),
    ("bad alias", {"deployments": [{"name": "a", "aliases": ["b\r\nx"]}]},
     "'deployments.0.aliases.0' ('b\\r\\nx'): names are"),
    ("a replica twice",
     {"deployments": [{"name": "a", "engine": "openai", "replicas": ["http://h/v1"] * 2}]},
     "'deployments.0.replicas.1' ('http://h/v1'): listed twice"),
    ("NaN weight", {"deployments": ONE, "routing": {"splits": {"s": {"arms": {"a": "nan"}}}}},
     "'routing.splits.s.arms.a' (nan): weights must be positive numbers"),
    ("bad rule", {"deployments": ONE, "routing": {"intent": {
        "routes": {"general": "a"}, "rules": {"code": ["(unclosed"]}}}},
     "'routing.intent.rules.code.0' ('(unclosed'): not a regular expression"),
    ("missing model file", {"deployments": ONE, "routing": {"intent": {
        "routes": {"general": "a"}, "model_file": "/nonexistent/intent.pkl"}}},
     "'routing.intent.model_file' ('/nonexistent/intent.pkl'): no such file"),
    ("routing without deployments", {"routing": {"intent": {"routes": {"general": "x"}}}},
     "'routing.intent.routes.general' ('x')"),
]  # fmt: skip


@pytest.mark.parametrize(("tree", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_config_error_names_the_key_and_the_value(tree: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tree, env={})
    assert message in str(info.value)


def test_serve_refuses_a_bad_registry_with_the_key_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: a\n    fallbacks: [b]\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_gateway.cli.main", "serve", "--config", str(bad)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "deployments.0.fallbacks.0" in proc.stderr and "'b'" in proc.stderr


@pytest.mark.parametrize("name", ["routing.yaml", "routing-vllm.yaml"])
def test_the_shipped_examples_are_valid(name: str, tmp_path: Path) -> None:
    settings = load_settings({"data_dir": str(tmp_path)}, config_file=EXAMPLES / name, env={})
    specs = deployment_specs(settings)
    assert {"qwen-general", "qwen-coder", "qwen-math"} <= {d.name for d in specs}
    assert set(settings.routing.intent.routes) == {"code", "math", "general"}
    if name == "routing-vllm.yaml":  # building relay engines starts nothing
        router = build_router(settings)
        assert "auto" in router.public_names() and "qwen" in router.public_names()
        assert len(router.deployments[0].replicas) == 2


def test_without_a_registry_the_model_section_is_the_one_deployment(tmp_path: Path) -> None:
    settings = load_settings(
        {"data_dir": str(tmp_path), "model": {"engine": "openai", "served_name": "m"}}, env={}
    )
    (spec,) = deployment_specs(settings)
    assert (spec.name, spec.engine, spec.replicas) == ("m", "openai", 1)


def test_an_unknown_engine_kind_is_a_config_error(tmp_path: Path) -> None:
    settings = load_settings(
        {"data_dir": str(tmp_path), "deployments": [{"name": "a", "engine": "nope"}]}, env={}
    )
    with pytest.raises(ConfigError) as info:
        build_router(settings)
    assert "'deployments.0.engine' ('nope'): Unknown engine kind" in str(info.value)
