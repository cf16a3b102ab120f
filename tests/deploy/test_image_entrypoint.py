"""The slim image's entry point, run here as a process with the image's own environment.

This test does not build the image (test_image_build.py does); what it runs is
``qwen-gateway serve`` (its ENTRYPOINT and CMD) with the ENV of deploy/Containerfile's final
stage, plus the deployment variables ``MODEL_NAME`` and ``MAX_CONTEXT_LENGTH``. Only the
listening address is moved to loopback and a free port. The openai SDK gets answers through
it from a fake upstream, the image's HEALTHCHECK command passes against it, and SIGTERM ends it
with exit code 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from qwen_gateway.config import load_settings
from support.containerfile import final_env, parse
from support.faulty_upstream import FaultyUpstream
from support.server import free_port, running_command

pytestmark = pytest.mark.e2e

CONTAINERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Containerfile"
KEY = "sk-image-entrypoint-test"


def _image() -> tuple[list[str], dict[str, str], list[str]]:
    """(entry point + command, ENV, healthcheck command) of the final stage."""
    text = CONTAINERFILE.read_text()
    _, stages = parse(text)
    final = stages[-1]
    entry = json.loads(final.all("ENTRYPOINT")[-1].args) + json.loads(final.all("CMD")[-1].args)
    check = final.all("HEALTHCHECK")[-1].args
    health = json.loads(check[check.index("CMD") + len("CMD") :].strip())
    env = final_env(text)
    env.pop("PATH")
    return entry, env, health


def test_the_image_configuration_serves_an_upstream_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    entry, env, health = _image()
    assert entry == ["qwen-gateway", "serve"]
    port = free_port()
    env.update(
        {
            "QWEN_GATEWAY_SERVER__HOST": "127.0.0.1",
            "QWEN_GATEWAY_SERVER__PORT": str(port),
            "QWEN_GATEWAY_DATA_DIR": str(tmp_path / "data"),
            "HOME": str(tmp_path / "data"),
            "MODEL_NAME": "echo",  # the fake upstream echoes the last user message
            "MAX_CONTEXT_LENGTH": "4096",
            "QWEN_GATEWAY_API_KEY": KEY,
        }
    )
    with FaultyUpstream().running() as upstream:
        env["QWEN_GATEWAY_MODEL__UPSTREAM__BASE_URL"] = upstream.base_url
        assert load_settings(env=env).model.engine == "openai"  # the image's default engine
        with running_command(entry[2:], port, tmp_path / "gateway.log", env=env, auth=True) as s:
            with OpenAI(base_url=s.base_url + "/v1", api_key=KEY) as client:
                [model] = [m.id for m in client.models.list()]
                assert model == "echo"
                answer = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "ship it"}]
                )
                assert (answer.choices[0].message.content or "").strip() == "ship it"
                with client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "one two"}], stream=True
                ) as stream:
                    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                assert text.strip() == "one two"
            # the image's command, with the image's settings (here: the port moved)
            assert health == ["qwen-gateway", "healthcheck"]
            probe = [sys.executable, "-m", "qwen_gateway.cli.main", *health[1:]]
            done = subprocess.run(
                probe, check=False, timeout=60, env={**os.environ, **env}, capture_output=True
            )
            assert done.returncode == 0, done.stderr.decode()
            process = s.process
        # running_command sent SIGTERM on leaving; the gateway drains and exits 0
        assert process.returncode == 0, s.log_path.read_text()
    assert not (tmp_path / "data" / "tiny-qwen2.5").exists()  # nothing in-process was built
