"""The gateway stays light: ``import qwen_gateway``, every module outside the in-process engine,
and the API app serving an upstream (``engine: openai``) deployment never import the in-process
engine's libraries. Each check runs in a fresh interpreter, where nothing else imported them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

#: the in-process engine's libraries (and training-only scikit-learn): none may load unless asked
HEAVY = frozenset(
    {"torch", "transformers", "safetensors", "tokenizers", "xgrammar", "huggingface_hub", "sklearn"}
)


def loaded_by(code: str) -> set[str]:
    """The top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter
    that sees the same sources as this one."""
    report = (
        "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    path = os.pathsep.join(p for p in sys.path if p)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + report],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_package_loads_nothing_heavy() -> None:
    assert loaded_by("import qwen_gateway") & HEAVY == set()


def test_no_module_outside_the_in_process_engine_loads_its_libraries() -> None:
    code = """
        import pkgutil
        import qwen_gateway

        names = [m.name for m in pkgutil.walk_packages(qwen_gateway.__path__, "qwen_gateway.")]
        outside = [n for n in names if not n.startswith("qwen_gateway.engines.transformers")]
        assert "qwen_gateway.api.app" in outside and "qwen_gateway.cli.main" in outside
        for name in outside:
            __import__(name)
    """
    assert loaded_by(code) & HEAVY == set()


def test_the_app_serving_an_upstream_deployment_loads_nothing_heavy() -> None:
    """Built, started, and answering a plain and a streamed chat completion relayed to an
    OpenAI-compatible upstream, with a key required."""
    code = """
        import asyncio
        import tempfile

        from qwen_gateway.config import load_settings
        from qwen_gateway.container import Container
        from support.faulty_upstream import FaultyUpstream
        from support.fixtures import open_in_process

        async def main(base_url: str, data: str) -> None:
            tree = {
                "data_dir": data,
                "server": {"api_key": "sk-imports"},
                "deployments": [{"name": "up", "engine": "openai", "replicas": [base_url],
                                 "upstream": {"model": "ok"}}],
            }
            async with open_in_process(Container(load_settings(tree, env={}))) as g:
                auth = {"Authorization": "Bearer sk-imports"}
                ask = {"model": "up", "messages": [{"role": "user", "content": "Hi"}]}
                for stream in (False, True):
                    body = {**ask, "stream": stream}
                    r = await g.http.post("/v1/chat/completions", json=body, headers=auth)
                    assert r.status_code == 200, r.text
                    assert ("data: [DONE]" in r.text) is stream
                r = await g.http.get("/v1/models", headers=auth)
                assert r.status_code == 200, r.text

        with FaultyUpstream().running() as upstream, tempfile.TemporaryDirectory() as data:
            asyncio.run(main(upstream.base_url, data))
    """
    assert loaded_by(code) & HEAVY == set()


def test_the_check_sees_the_in_process_engine_load_torch() -> None:
    """The checks above can fail: the in-process engine's modules do load torch."""
    assert "torch" in loaded_by("import qwen_gateway.engines.transformers.model")
