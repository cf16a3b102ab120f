"""Engine plug-ins: found through the ``qwen_gateway.engines`` entry point group (built-ins by
the same code), their options validated against the kind's config model, errors naming the
setting at fault."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from qwen_gateway.api.app import create_app
from qwen_gateway.config import ConfigError, load_settings
from qwen_gateway.container import Container, build_router
from qwen_gateway.engines.openai_upstream import UpstreamConfig
from qwen_gateway.engines.registry import PendingEngine, find_plugin
from qwen_gateway.engines.scripted import ScriptedConfig
from support.fixtures import open_in_process

#: An engine package as a third party would write it: its own config model and factory.
ECHO_MODULE = """
from qwen_gateway.core.types import ChoiceFinished, ModelInfo, TextDelta, Usage
from qwen_gateway.engines.base import READY
from qwen_gateway.engines.plugin import EngineConfig, EnginePlugin


class EchoConfig(EngineConfig):
    prefix: str
    context_window: int = 4096


class EchoEngine:
    def __init__(self, name, config):
        self.info = ModelInfo(id=name, context_window=config.context_window,
                              max_output_tokens=256)
        self.prefix = config.prefix
        self.closed = False

    async def stream(self, request):
        text = self.prefix + (request.messages[-1].content or "")
        request.meter.prompt_tokens, request.meter.completion_tokens = 1, 1
        yield TextDelta(0, text)
        yield ChoiceFinished(0, "stop")
        yield Usage(1, 1)

    async def health(self):
        return READY

    async def aclose(self):
        self.closed = True


async def create(config, ctx):
    if config.prefix == "boom":
        raise RuntimeError("the echo engine failed to start")
    return EchoEngine(ctx.served_name, config)


PLUGIN = EnginePlugin("echo", EchoConfig, create)
NOT_A_PLUGIN = object()
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An out-of-tree package installed on sys.path, with its entry points: ``echo`` (the
    plug-in), ``bogus`` (not a plug-in) and ``scripted`` (a built-in's name)."""
    site = tmp_path / "site"
    info = site / "acme_engine-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "acme_engine.py").write_text(ECHO_MODULE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-engine\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [qwen_gateway.engines]
            echo = acme_engine:PLUGIN
            bogus = acme_engine:NOT_A_PLUGIN
            scripted = acme_engine:PLUGIN
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))
    return tmp_path


def _settings(tmp_path: Path, **deployment: Any) -> Any:
    tree = {
        "data_dir": str(tmp_path),
        "auth": {"enabled": False},
        "deployments": [{"name": "d", **deployment}],
    }
    return load_settings(tree, env={})


async def test_an_out_of_tree_engine_serves_requests_through_the_api(installed: Path) -> None:
    settings = _settings(installed, engine="echo", options={"prefix": "echo: "})
    container = Container(settings)
    pending = container.engines["d"]
    assert isinstance(pending, PendingEngine)  # built in the background, after start
    async with open_in_process(container) as g:
        chat = await g.client.chat.completions.create(
            model="d", messages=[{"role": "user", "content": "hello"}]
        )
        assert chat.choices[0].message.content == "echo: hello"
        engine = container.engines["d"]
        assert type(engine).__name__ == "EchoEngine"
        card = (await g.http.get("/v1/models/d")).json()
        assert card["id"] == "d"
    assert engine.closed  # type: ignore[attr-defined]


async def test_an_engine_that_fails_to_build_fails_ready_and_the_others_are_closed(
    installed: Path,
) -> None:
    tree = {
        "data_dir": str(installed),
        "auth": {"enabled": False},
        "deployments": [
            {"name": "ok", "engine": "echo", "options": {"prefix": ""}},
            {"name": "bad", "engine": "echo", "options": {"prefix": "boom"}},
        ],
    }
    container = Container(load_settings(tree, env={}))
    app = create_app(container)
    async with app.router.lifespan_context(app):
        await container.wait_loaded()
        assert isinstance(container.load_error, RuntimeError)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            ready = await http.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "failed"
            ask = {"messages": [{"role": "user", "content": "hi"}]}
            bad = await http.post("/v1/chat/completions", json={"model": "bad", **ask})
            assert bad.status_code == 503, bad.text
            assert bad.json()["error"]["code"] == "engine_unavailable"
            ok = await http.post("/v1/chat/completions", json={"model": "ok", **ask})
            assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "hi"
        built = container.engines["ok"]
        assert isinstance(container.engines["bad"], PendingEngine)
    assert built.closed  # type: ignore[attr-defined]


def test_built_in_kinds_are_plugins_found_the_same_way(installed: Path) -> None:
    assert find_plugin("echo").kind == "echo"
    scripted = find_plugin("scripted")  # an installed entry point cannot replace a built-in
    assert scripted.config_model is ScriptedConfig
    openai = find_plugin("openai")
    assert (openai.config_model, openai.section, openai.url_field) == (
        UpstreamConfig, "upstream", "base_url"
    )  # fmt: skip


def test_an_entry_point_that_is_not_a_plugin_is_a_config_error(installed: Path) -> None:
    with pytest.raises(ConfigError, match=r"'deployments.0.engine' \('bogus'\).*not an Engine"):
        build_router(_settings(installed, engine="bogus"))


@pytest.mark.parametrize(
    ("deployment", "key"),
    [
        ({"engine": "echo", "options": {"prefix": "x", "context_window": "big"}},
         "'deployments.0.options.context_window' (value not shown)"),
        ({"engine": "echo", "options": {}}, "'deployments.0.options.prefix'"),
        ({"engine": "scripted", "options": {"replies": ["x"], "context_window": 8}},
         "'deployments.0.options.context_window' (8)"),
        ({"engine": "transformers", "options": {"devcie": "cpu"}},
         "'deployments.0.options.devcie'"),
        ({"engine": "openai", "replicas": ["http://a/v1"], "options": {"backoff": -1}},
         "'deployments.0.options.backoff' (-1)"),
    ],
)  # fmt: skip
def test_a_bad_engine_option_is_a_config_error_naming_its_key(
    installed: Path, deployment: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_router(_settings(installed, **deployment))
    assert key in str(info.value)


def test_the_single_model_form_names_the_model_section(tmp_path: Path) -> None:
    settings = load_settings(
        {"data_dir": str(tmp_path), "model": {"engine": "scripted", "served_name": "m"}}, env={}
    )
    with pytest.raises(ConfigError, match=r"'model.options.replies' \(value not shown\): Field"):
        build_router(settings)


def test_replica_urls_are_applied_by_the_plugin(tmp_path: Path) -> None:
    urls = ["http://a:8000/v1", "http://b:8000/v1"]
    settings = _settings(
        tmp_path, engine="openai", replicas=urls, context_window=4096,
        upstream={"model": "up", "api_key": "sk-up"},
    )  # fmt: skip
    router = build_router(settings)
    configs = [r.engine.config for r in router.deployments[0].replicas]  # type: ignore[attr-defined]
    assert [c.base_url for c in configs] == urls
    assert {(c.model, c.context_window) for c in configs} == {("up", 4096)}
    assert configs[0].api_key.get_secret_value() == "sk-up"
    assert router.info("d").context_window == 4096  # the card before the engine is built
    vllm = build_router(_settings(tmp_path, engine="vllm", replicas=urls))
    assert [r.engine.config.remote_url for r in vllm.deployments[0].replicas] == urls  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"'deployments\.0\.replicas'"):
        build_router(_settings(tmp_path, engine="scripted", replicas=urls))


def test_the_upstream_capability_settings_reach_the_engine(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, engine="openai", replicas=["http://a:8000/v1"],
        upstream={"logprobs": False, "echo": True},
    )  # fmt: skip
    config = build_router(settings).deployments[0].replicas[0].engine.config  # type: ignore[attr-defined]
    assert (config.logprobs, config.echo) == (False, True)
    default = build_router(_settings(tmp_path, engine="openai", replicas=["http://a:8000/v1"]))
    config = default.deployments[0].replicas[0].engine.config  # type: ignore[attr-defined]
    assert (config.logprobs, config.echo) == (True, False)


@pytest.mark.parametrize("engine", ["vllm", "scripted"])
def test_embed_on_an_engine_that_cannot_embed_is_a_config_error(
    tmp_path: Path, engine: str
) -> None:
    with pytest.raises(ConfigError, match=r"'deployments\.0\.task' \('embed'\)"):
        build_router(_settings(tmp_path, engine=engine, task="embed",
                               options={"replies": ["x"]} if engine == "scripted" else {}))  # fmt: skip
